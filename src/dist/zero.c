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
    z->bucket = ZERO_BUCKET;
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
    size_t capacity = z->total < z->bucket ? z->total : z->bucket;
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

// Copies flat elements [begin, begin + len) between the tensors (tensor i
// starts at flat index offsets[i]) and buf. Past the last tensor the flat
// vector is padding: zeros when reading, dropped when writing.
static void flat_copy(const Zero *z, float *const *tensors, const ParamRef *params, size_t begin, size_t len, float *buf,
                      int to_tensors) {
    size_t end = begin + len;
    // the first tensor that ends after begin (offsets ascend)
    int lo = 0, hi = z->n_params;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (z->offsets[mid] + params[mid].numel <= begin) lo = mid + 1;
        else hi = mid;
    }
    size_t at = begin;
    for (int i = lo; i < z->n_params && at < end; i++) {
        size_t t_begin = z->offsets[i], t_end = t_begin + params[i].numel;
        size_t b = t_end < end ? t_end : end;
        if (b <= at) continue;
        if (to_tensors) memcpy(tensors[i] + (at - t_begin), buf + (at - begin), (b - at) * sizeof(float));
        else memcpy(buf + (at - begin), tensors[i] + (at - t_begin), (b - at) * sizeof(float));
        at = b;
    }
    if (!to_tensors && at < end) memset(buf + (at - begin), 0, (end - at) * sizeof(float));
}

// The work is done in pieces of at most `piece` elements of every rank's
// shard at a time, so the staging buffer is world * piece floats, not a
// copy of every trainable value.
static size_t piece_size(const Zero *z) {
    size_t piece = z->bucket / (size_t)z->world;
    if (piece > z->shard) piece = z->shard;
    return piece > 0 ? piece : 1;
}

// All-gathers piece [at, at + len) of every rank's shard of `mine` (this
// rank's) into the tensors.
static int allgather_into_tensors(Zero *z, const float *mine, float *const *tensors, const ParamRef *params,
                                  float *staging, Error *err) {
    size_t piece = piece_size(z);
    for (size_t at = 0; at < z->shard; at += piece) {
        size_t len = z->shard - at < piece ? z->shard - at : piece;
        if (comm_allgather_f32(z->comm, mine + at, staging, len, err) != 0) return -1;
        for (int r = 0; r < z->world; r++)
            flat_copy(z, tensors, params, (size_t)r * z->shard + at, len, staging + (size_t)r * len, 1);
    }
    return 0;
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
    // only for the update: this rank's reduced gradient shard, the staging
    // buffer of one piece per rank, the tensors' value and grad pointers
    size_t piece = piece_size(z);
    float *shard = malloc(z->shard * sizeof(float));
    float *staging = malloc((size_t)z->world * piece * sizeof(float));
    float **values = malloc(sizeof(float *) * (size_t)(n_params > 0 ? n_params : 1));
    float **grads = malloc(sizeof(float *) * (size_t)(n_params > 0 ? n_params : 1));
    int rc = 0;
    if (!shard || !staging || !values || !grads) rc = error_set(err, "ZeRO: out of memory for the update's buffers");
    for (int i = 0; i < n_params && rc == 0; i++) {
        values[i] = params[i].value;
        grads[i] = params[i].grad;
    }
    // gradients: piece by piece, each rank's part of the piece side by side
    for (size_t at = 0; at < z->shard && rc == 0; at += piece) {
        size_t len = z->shard - at < piece ? z->shard - at : piece;
        for (int r = 0; r < z->world; r++)
            flat_copy(z, grads, params, (size_t)r * z->shard + at, len, staging + (size_t)r * len, 0);
        if (z->stage == 1) {
            rc = comm_allreduce_sum_f32(z->comm, staging, (size_t)z->world * len, err);
            if (rc == 0) memcpy(shard + at, staging + (size_t)z->rank * len, len * sizeof(float));
        } else {
            rc = comm_reduce_scatter_sum_f32(z->comm, staging, shard + at, len, err);
        }
    }
    // the global norm from every shard's squared sum (padding adds zeros)
    double sum_sq = rc == 0 ? sum_of_squares(shard, z->shard) : 0;
    if (rc == 0) rc = comm_allreduce_sum_f64(z->comm, &sum_sq, 1, err);
    if (rc == 0) {
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
            adamw_update_span(params[i].value + (a - begin), shard + (a - lo), z->exp_avg + (a - lo),
                              z->exp_avg_sq + (a - lo), b - a, params[i].decay, &s);
        }
        // every rank's new values to every rank; shard now holds this rank's values
        flat_copy(z, values, params, lo, z->shard, shard, 0);
        rc = allgather_into_tensors(z, shard, values, params, staging, err);
    }
    free(shard);
    free(staging);
    free(values);
    free(grads);
    return rc;
}

int zero_gather_state(Zero *z, AdamW *full, const ParamRef *params, int n_params, Error *err) {
    if (z->stage == 0) return 0;
    float *staging = malloc((size_t)z->world * piece_size(z) * sizeof(float));
    if (staging == NULL) return error_set(err, "ZeRO: out of memory gathering the optimizer state");
    int rc = allgather_into_tensors(z, z->exp_avg, full->exp_avg, params, staging, err);
    if (rc == 0) rc = allgather_into_tensors(z, z->exp_avg_sq, full->exp_avg_sq, params, staging, err);
    full->step = z->step;
    free(staging);
    (void)n_params;
    return rc;
}

size_t zero_state_bytes(const Zero *z) {
    if (z->stage == 0) return 2 * z->total * sizeof(float);
    return 2 * z->shard * sizeof(float);
}
