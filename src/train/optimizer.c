#include "optimizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../io/safetensors.h"

int adamw_init(AdamW *opt, const ParamRef *params, int n_params, double beta1, double beta2, double eps,
               double weight_decay, Error *err) {
    memset(opt, 0, sizeof *opt);
    opt->beta1 = beta1;
    opt->beta2 = beta2;
    opt->eps = eps;
    opt->weight_decay = weight_decay;
    opt->n_params = n_params;
    opt->exp_avg = calloc((size_t)(n_params > 0 ? n_params : 1), sizeof(float *));
    opt->exp_avg_sq = calloc((size_t)(n_params > 0 ? n_params : 1), sizeof(float *));
    if (!opt->exp_avg || !opt->exp_avg_sq) {
        adamw_free(opt);
        return error_set(err, "optimizer: out of memory");
    }
    for (int i = 0; i < n_params; i++) {
        opt->exp_avg[i] = calloc(params[i].numel ? params[i].numel : 1, sizeof(float));
        opt->exp_avg_sq[i] = calloc(params[i].numel ? params[i].numel : 1, sizeof(float));
        if (!opt->exp_avg[i] || !opt->exp_avg_sq[i]) {
            adamw_free(opt);
            return error_set(err, "optimizer: out of memory for the state of %s", params[i].name);
        }
    }
    return 0;
}

void adamw_free(AdamW *opt) {
    for (int i = 0; i < opt->n_params; i++) {
        if (opt->exp_avg) free(opt->exp_avg[i]);
        if (opt->exp_avg_sq) free(opt->exp_avg_sq[i]);
    }
    free(opt->exp_avg);
    free(opt->exp_avg_sq);
    memset(opt, 0, sizeof *opt);
}

// One span's update; restrict lets the compiler vectorise the loop.
// Element-wise and independent: the thread count changes nothing, and a
// span cut out of a tensor (a ZeRO shard) gets exactly the same bits.
void adamw_update_span(float *restrict p, const float *restrict g, float *restrict m, float *restrict v, size_t n,
                       int decay, const AdamWScalars *s) {
    float decay_keep = decay ? s->decay_keep : 1.0f;
    float beta1 = s->beta1, one_minus_beta1 = s->one_minus_beta1, beta2 = s->beta2,
          one_minus_beta2 = s->one_minus_beta2, step_size = s->step_size, bc2_sqrt = s->bc2_sqrt, eps = s->eps;
    long long numel = (long long)n;
#pragma omp parallel for schedule(static) if (numel > 32768)
    for (long long j = 0; j < numel; j++) {
        float decayed = p[j] * decay_keep;  // decay_keep is 1 for tensors without weight decay
        float m_new = m[j] * beta1 + g[j] * one_minus_beta1;
        float v_new = v[j] * beta2 + one_minus_beta2 * g[j] * g[j];
        m[j] = m_new;
        v[j] = v_new;
        float denom = sqrtf(v_new) / bc2_sqrt + eps;
        p[j] = decayed + -step_size * (m_new / denom);
    }
}

AdamWScalars adamw_scalars(double beta1, double beta2, double eps, double weight_decay, long step, double lr) {
    double bias_correction1 = 1.0 - pow(beta1, (double)step);
    double bias_correction2 = 1.0 - pow(beta2, (double)step);
    // scalars as PyTorch passes them to its fp32 kernels
    AdamWScalars s;
    s.decay_keep = weight_decay != 0 ? (float)(1.0 - lr * weight_decay) : 1.0f;
    s.beta1 = (float)beta1;
    s.one_minus_beta1 = (float)(1.0 - beta1);
    s.beta2 = (float)beta2;
    s.one_minus_beta2 = (float)(1.0 - beta2);
    s.step_size = (float)(lr / bias_correction1);
    s.bc2_sqrt = (float)sqrt(bias_correction2);
    s.eps = (float)eps;
    return s;
}

void adamw_step(AdamW *opt, ParamRef *params, int n_params, double lr) {
    opt->step++;
    AdamWScalars s = adamw_scalars(opt->beta1, opt->beta2, opt->eps, opt->weight_decay, opt->step, lr);
    for (int i = 0; i < n_params; i++)
        adamw_update_span(params[i].value, params[i].grad, opt->exp_avg[i], opt->exp_avg_sq[i], params[i].numel,
                          params[i].decay, &s);
}

// Sum of squares of x[0..n) in double, over fixed blocks of NORM_BLOCK
// elements added in block order: the same bits whatever the thread count,
// so a resumed run on another machine clips exactly as the first one did.
enum { NORM_BLOCK = 1 << 16 };

double sum_of_squares(const float *x, size_t n) {
    long long n_blocks = (long long)((n + NORM_BLOCK - 1) / NORM_BLOCK);
    double total = 0;
    if (n_blocks <= 1) {
        for (size_t j = 0; j < n; j++) total += (double)x[j] * x[j];
        return total;
    }
    double *partial = malloc((size_t)n_blocks * sizeof *partial);
    if (partial == NULL) {  // no memory for the partial sums: one thread, same blocks
        for (long long b = 0; b < n_blocks; b++) {
            double s = 0;
            for (size_t j = (size_t)b * NORM_BLOCK; j < n && j < (size_t)(b + 1) * NORM_BLOCK; j++) s += (double)x[j] * x[j];
            total += s;
        }
        return total;
    }
#pragma omp parallel for schedule(static)
    for (long long b = 0; b < n_blocks; b++) {
        double s = 0;
        size_t end = (size_t)(b + 1) * NORM_BLOCK < n ? (size_t)(b + 1) * NORM_BLOCK : n;
        for (size_t j = (size_t)b * NORM_BLOCK; j < end; j++) s += (double)x[j] * x[j];
        partial[b] = s;
    }
    for (long long b = 0; b < n_blocks; b++) total += partial[b];
    free(partial);
    return total;
}

double clip_grad_norm(ParamRef *params, int n_params, double max_norm) {
    double sum_sq = 0;
    for (int i = 0; i < n_params; i++) sum_sq += sum_of_squares(params[i].grad, params[i].numel);
    double norm = sqrt(sum_sq);
    if (max_norm > 0) {
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1.0) {
            float c = (float)coef;
            for (int i = 0; i < n_params; i++) {
                float *g = params[i].grad;
                long long numel = (long long)params[i].numel;
#pragma omp parallel for schedule(static) if (numel > 32768)
                for (long long j = 0; j < numel; j++) g[j] *= c;
            }
        }
    }
    return norm;
}

static void state_name(char *dst, size_t size, const char *kind, const char *param) {
    snprintf(dst, size, "%s.%s", kind, param);
}

int adamw_save(const AdamW *opt, const ParamRef *params, int n_params, const char *path, Error *err) {
    TensorRef *refs = calloc((size_t)(2 * n_params + 1), sizeof *refs);
    char (*names)[512] = calloc((size_t)(2 * n_params + 1), sizeof *names);
    if (!refs || !names) {
        free(refs);
        free(names);
        return error_set(err, "%s: out of memory", path);
    }
    for (int i = 0; i < n_params; i++)
        for (int k = 0; k < 2; k++) {
            TensorRef *t = &refs[2 * i + k];
            state_name(names[2 * i + k], sizeof names[0], k == 0 ? "exp_avg" : "exp_avg_sq", params[i].name);
            t->name = names[2 * i + k];
            t->dtype = DTYPE_F32;
            t->ndim = 1;
            t->shape[0] = (int64_t)params[i].numel;
            t->data = k == 0 ? opt->exp_avg[i] : opt->exp_avg_sq[i];
        }
    char step_text[32];
    snprintf(step_text, sizeof step_text, "%ld", opt->step);
    const char *metadata[] = {"format", "vlft-adamw", "step", step_text, NULL};
    int rc = safetensors_write(path, refs, 2 * n_params, metadata, err);
    free(refs);
    free(names);
    return rc;
}

int adamw_load(AdamW *opt, const ParamRef *params, int n_params, const char *path, Error *err) {
    Safetensors st;
    if (safetensors_open_file(&st, path, err) != 0) return -1;
    int rc = 0;
    // metadata is {"format":"vlft-adamw","step":"N"}: find the step value
    const char *meta = st.metadata_json ? strstr(st.metadata_json, "\"step\":\"") : NULL;
    long step = -1;
    if (meta) step = strtol(meta + 8, NULL, 10);
    if (step < 0) {
        rc = error_set(err, "%s: optimizer state has no step count", path);
        goto done;
    }
    if (st.n_tensors != 2 * n_params) {
        rc = error_set(err, "%s: optimizer state holds %d tensors, the model has %d trainable (expected %d)", path,
                       st.n_tensors, n_params, 2 * n_params);
        goto done;
    }
    for (int i = 0; i < n_params && rc == 0; i++)
        for (int k = 0; k < 2; k++) {
            char name[512];
            state_name(name, sizeof name, k == 0 ? "exp_avg" : "exp_avg_sq", params[i].name);
            const TensorInfo *t = safetensors_get(&st, name);
            if (t == NULL) {
                rc = error_set(err, "%s: optimizer state lacks %s", path, name);
                break;
            }
            if (t->dtype != DTYPE_F32 || t->numel != params[i].numel) {
                rc = error_set(err, "%s: %s has %zu elements, the parameter %zu", path, name, t->numel, params[i].numel);
                break;
            }
            memcpy(k == 0 ? opt->exp_avg[i] : opt->exp_avg_sq[i], t->data, t->nbytes);
        }
    if (rc == 0) opt->step = step;
done:
    safetensors_close(&st);
    return rc;
}
