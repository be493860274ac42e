// zero.c - data-parallel optimizer updates; see zero.h for the stages.
#include "zero.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int zero_init(Zero *z, Comm *comm, int stage, const ParamRef *params, int n_params, const AdamW *state, Error *err) {
    memset(z, 0, sizeof *z);
    if (stage < 0 || stage > 3) return error_set(err, "ZeRO stage must be 0, 1, 2 or 3 (got %d)", stage);
    z->comm = comm;
    z->stage = stage;
    z->rank = comm ? comm_rank(comm) : 0;
    z->world = comm ? comm_size(comm) : 1;
    if (stage >= 1 && comm == NULL) return error_set(err, "ZeRO stage %d needs a communicator", stage);
    z->n_params = n_params;
    z->beta1 = state->beta1;
    z->beta2 = state->beta2;
    z->eps = state->eps;
    z->weight_decay = state->weight_decay;
    z->step = state->step;
    z->offsets = malloc(sizeof(size_t) * (size_t)(n_params > 0 ? n_params : 1));
    if (z->offsets == NULL) return error_set(err, "ZeRO: out of memory");
    for (int i = 0; i < n_params; i++) {
        z->offsets[i] = z->total;
        z->total += params[i].numel;
    }
    z->shard = (z->total + (size_t)z->world - 1) / (size_t)z->world;
    if (z->shard == 0) z->shard = 1;
    if (stage == 0) return 0;
    z->exp_avg = calloc(z->shard, sizeof(float));
    z->exp_avg_sq = calloc(z->shard, sizeof(float));
    if (!z->exp_avg || !z->exp_avg_sq) {
        zero_free(z);
        return error_set(err, "ZeRO: out of memory for a shard of %zu elements", z->shard);
    }
    // copy the moments of the parts of each tensor that fall into this rank's shard
    size_t lo = (size_t)z->rank * z->shard, hi = lo + z->shard;
    for (int i = 0; i < n_params; i++) {
        size_t begin = z->offsets[i], end = begin + params[i].numel;
        size_t a = begin > lo ? begin : lo, b = end < hi ? end : hi;
        if (a >= b) continue;
        memcpy(z->exp_avg + (a - lo), state->exp_avg[i] + (a - begin), (b - a) * sizeof(float));
        memcpy(z->exp_avg_sq + (a - lo), state->exp_avg_sq[i] + (a - begin), (b - a) * sizeof(float));
    }
    return 0;
}

void zero_free(Zero *z) {
    free(z->offsets);
    free(z->exp_avg);
    free(z->exp_avg_sq);
    memset(z, 0, sizeof *z);
}

// Stage 0: sums every gradient across ranks, small tensors packed together
// into buckets so that a LoRA model's hundreds of small tensors cost a few
// all-reduces, not hundreds.
static int allreduce_grads_bucketed(Zero *z, ParamRef *params, int n_params, Error *err) {
    size_t capacity = z->total < (size_t)ZERO_BUCKET ? z->total : (size_t)ZERO_BUCKET;
    float *bucket = malloc((capacity > 0 ? capacity : 1) * sizeof(float));
    if (bucket == NULL) return error_set(err, "ZeRO: out of memory for a gradient bucket");
    int first = 0;  // first tensor packed into the bucket
    size_t filled = 0;
    int rc = 0;
    for (int i = 0; i <= n_params && rc == 0; i++) {
        int flush = i == n_params || filled + params[i].numel > capacity;
        if (flush && filled > 0) {
            rc = comm_allreduce_sum_f32(z->comm, bucket, filled, err);
            size_t at = 0;
            for (int k = first; k < i && rc == 0; k++) {
                memcpy(params[k].grad, bucket + at, params[k].numel * sizeof(float));
                at += params[k].numel;
            }
            filled = 0;
        }
        if (flush) first = i;
        if (i == n_params || rc != 0) break;
        if (params[i].numel > capacity) {  // bigger than a bucket: in place
            rc = comm_allreduce_sum_f32(z->comm, params[i].grad, params[i].numel, err);
            first = i + 1;
            continue;
        }
        memcpy(bucket + filled, params[i].grad, params[i].numel * sizeof(float));
        filled += params[i].numel;
    }
    free(bucket);
    return rc;
}

// Copies between the model's tensors and the flat vector.
static void pack(const Zero *z, float *flat, const ParamRef *params, int use_grad) {
    for (int i = 0; i < z->n_params; i++)
        memcpy(flat + z->offsets[i], use_grad ? params[i].grad : params[i].value, params[i].numel * sizeof(float));
    size_t padded = z->shard * (size_t)z->world;
    if (padded > z->total) memset(flat + z->total, 0, (padded - z->total) * sizeof(float));
}

static void unpack_values(const Zero *z, const float *flat, ParamRef *params) {
    for (int i = 0; i < z->n_params; i++) memcpy(params[i].value, flat + z->offsets[i], params[i].numel * sizeof(float));
}

int zero_step(Zero *z, AdamW *full, ParamRef *params, int n_params, double max_norm, double lr, double *grad_norm,
              Error *err) {
    if (z->stage == 0) {
        if (z->world > 1 && allreduce_grads_bucketed(z, params, n_params, err) != 0) return -1;
        *grad_norm = clip_grad_norm(params, n_params, max_norm);
        adamw_step(full, params, n_params, lr);
        z->step = full->step;
        return 0;
    }
    // staging, only for the update: the flat vector and this rank's shard
    size_t padded = z->shard * (size_t)z->world;
    float *flat = malloc(padded * sizeof(float));
    float *shard = malloc(z->shard * sizeof(float));
    if (flat == NULL || shard == NULL) {
        free(flat);
        free(shard);
        return error_set(err, "ZeRO: out of memory for the %zu-element staging vector", padded);
    }
    int rc = 0;
    pack(z, flat, params, 1);
    if (z->stage == 1) {
        rc = comm_allreduce_sum_f32(z->comm, flat, padded, err);
        if (rc == 0) memcpy(shard, flat + (size_t)z->rank * z->shard, z->shard * sizeof(float));
    } else {
        rc = comm_reduce_scatter_sum_f32(z->comm, flat, shard, z->shard, err);
    }
    // the global norm from every shard's squared sum (padding adds zeros)
    double sum_sq = rc == 0 ? sum_of_squares(shard, z->shard) : 0;
    if (rc == 0) rc = comm_allreduce_sum_f64(z->comm, &sum_sq, 1, err);
    if (rc != 0) {
        free(flat);
        free(shard);
        return -1;
    }
    double norm = sqrt(sum_sq);
    *grad_norm = norm;
    if (max_norm > 0) {  // as clip_grad_norm
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1.0) {
            float c = (float)coef;
            for (size_t j = 0; j < z->shard; j++) shard[j] *= c;
        }
    }
    z->step++;
    AdamWScalars s = adamw_scalars(z->beta1, z->beta2, z->eps, z->weight_decay, z->step, lr);
    size_t lo = (size_t)z->rank * z->shard, hi = lo + z->shard;
    // the master values of this shard are the model's own fp32 values there
    // (identical on every rank after each gather): updated in place
    for (int i = 0; i < n_params; i++) {
        size_t begin = z->offsets[i], end = begin + params[i].numel;
        size_t a = begin > lo ? begin : lo, b = end < hi ? end : hi;
        if (a >= b) continue;
        adamw_update_span(params[i].value + (a - begin), shard + (a - lo), z->exp_avg + (a - lo), z->exp_avg_sq + (a - lo),
                          b - a, params[i].decay, &s);
    }
    pack(z, flat, params, 0);
    memcpy(shard, flat + lo, z->shard * sizeof(float));
    rc = comm_allgather_f32(z->comm, shard, flat, z->shard, err);
    if (rc == 0) unpack_values(z, flat, params);
    free(flat);
    free(shard);
    return rc;
}

int zero_gather_state(Zero *z, AdamW *full, const ParamRef *params, int n_params, Error *err) {
    if (z->stage == 0) return 0;
    size_t padded = z->shard * (size_t)z->world;
    float *flat = malloc(padded * sizeof(float));
    if (flat == NULL) return error_set(err, "ZeRO: out of memory gathering the optimizer state");
    int rc = 0;
    for (int k = 0; k < 2 && rc == 0; k++) {
        rc = comm_allgather_f32(z->comm, k == 0 ? z->exp_avg : z->exp_avg_sq, flat, z->shard, err);
        for (int i = 0; i < n_params && rc == 0; i++)
            memcpy(k == 0 ? full->exp_avg[i] : full->exp_avg_sq[i], flat + z->offsets[i], params[i].numel * sizeof(float));
    }
    full->step = z->step;
    free(flat);
    return rc;
}

size_t zero_state_bytes(const Zero *z) {
    if (z->stage == 0) return 2 * z->total * sizeof(float);
    return 2 * z->shard * sizeof(float);
}
