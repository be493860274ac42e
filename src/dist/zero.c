// zero.c - the sharded layout, the optimizer update and the gathers of
// whole state; see zero.h. The per-layer rounds are in zero_layers.c.
#include "zero.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

size_t zero_part_length(const Zero *z, int i, int r) {
    size_t begin = (size_t)r * z->part[i], n = z->params[i].numel;
    if (begin >= n) return 0;
    return n - begin < z->part[i] ? n - begin : z->part[i];
}

// The layer table the rounds walk: the model's, checked, or one layer
// reading every tensor for a model that has none.
static int layers_init(Zero *z, const LayerTable *layers, Error *err) {
    int n_layers = layers ? layers->n_layers : 1;
    int n_members = layers ? layers->first[n_layers] : z->n_params;
    z->layers.n_layers = n_layers;
    z->layers.first = malloc(sizeof(int) * (size_t)(n_layers + 1));
    z->layers.members = malloc(sizeof(int) * (size_t)(n_members > 0 ? n_members : 1));
    z->last_layer = malloc(sizeof(int) * (size_t)(z->n_params > 0 ? z->n_params : 1));
    z->resident = calloc((size_t)(z->n_params > 0 ? z->n_params : 1), sizeof(int));
    z->open = malloc(sizeof(int) * (size_t)(z->n_params > 0 ? z->n_params : 1));
    z->ids = malloc(sizeof(int) * (size_t)(z->n_params > 0 ? z->n_params : 1));
    z->dst = malloc(sizeof(float *) * (size_t)(z->n_params > 0 ? z->n_params : 1));
    if (!z->layers.first || !z->layers.members || !z->last_layer || !z->resident || !z->open || !z->ids || !z->dst)
        return error_set(err, "ZeRO: out of memory for the layer table");
    if (layers) {
        memcpy(z->layers.first, layers->first, sizeof(int) * (size_t)(n_layers + 1));
        memcpy(z->layers.members, layers->members, sizeof(int) * (size_t)n_members);
    } else {
        z->layers.first[0] = 0;
        z->layers.first[1] = z->n_params;
        for (int i = 0; i < z->n_params; i++) z->layers.members[i] = i;
    }
    for (int i = 0; i < z->n_params; i++) z->last_layer[i] = -1;
    // walking the layers backwards, the last one seen is the first that reads a tensor
    for (int l = n_layers - 1; l >= 0; l--)
        for (int k = z->layers.first[l]; k < z->layers.first[l + 1]; k++) {
            int i = z->layers.members[k];
            if (i < 0 || i >= z->n_params)
                return error_set(err, "ZeRO: layer %d lists tensor %d of %d", l, i, z->n_params);
            z->last_layer[i] = l;
        }
    for (int i = 0; i < z->n_params; i++)
        if (z->last_layer[i] < 0) return error_set(err, "ZeRO: no layer of the model reads %s", z->params[i].name);
    return 0;
}

int zero_init(Zero *z, Comm *comm, int stage, ParamRef *params, int n_params, const AdamW *state,
              const LayerTable *layers, const ParamStorage *storage, Error *err) {
    memset(z, 0, sizeof *z);
    if (stage < 0 || stage > 3) return error_set(err, "ZeRO stage must be 0, 1, 2 or 3 (got %d)", stage);
    if (stage >= 1 && comm == NULL) return error_set(err, "ZeRO stage %d needs a communicator", stage);
    if (stage == 3 && (storage == NULL || storage->alloc == NULL || layers == NULL))
        return error_set(err, "ZeRO stage 3 needs a model that runs layer by layer (this one cannot release its "
                              "parameters between layers)");
    z->comm = comm;
    z->stage = stage;
    z->rank = comm ? comm_rank(comm) : 0;
    z->world = comm ? comm_size(comm) : 1;
    z->params = params;
    z->n_params = n_params;
    z->beta1 = state->beta1;
    z->beta2 = state->beta2;
    z->eps = state->eps;
    z->weight_decay = state->weight_decay;
    z->step = state->step;
    z->bucket = ZERO_BUCKET;
    if (storage) z->storage = *storage;
    size_t n = (size_t)(n_params > 0 ? n_params : 1);
    z->part = malloc(sizeof(size_t) * n);
    z->part_offset = malloc(sizeof(size_t) * n);
    z->all_tensors = malloc(sizeof(int) * n);
    if (!z->part || !z->part_offset || !z->all_tensors) {
        zero_free(z);
        return error_set(err, "ZeRO: out of memory");
    }
    for (int i = 0; i < n_params; i++) {
        z->all_tensors[i] = i;
        z->part[i] = (params[i].numel + (size_t)z->world - 1) / (size_t)z->world;
        z->part_offset[i] = z->shard;
        z->shard += z->part[i];
        z->total += params[i].numel;
    }
    if (layers_init(z, layers, err) != 0) {
        zero_free(z);
        return -1;
    }
    if (stage == 0) return 0;
    size_t s = z->shard > 0 ? z->shard : 1;
    z->exp_avg = calloc(s, sizeof(float));
    z->exp_avg_sq = calloc(s, sizeof(float));
    if (stage == 3) {
        z->master = calloc(s, sizeof(float));
        z->grad_shard = calloc(s, sizeof(float));
    }
    if (!z->exp_avg || !z->exp_avg_sq || (stage == 3 && (!z->master || !z->grad_shard))) {
        zero_free(z);
        return error_set(err, "ZeRO: out of memory for a shard of %zu elements", z->shard);
    }
    // this rank's parts of the moments (and, for stage 3, of the values:
    // from then on the model holds a tensor only while a layer uses it, so
    // its full buffers go at once, keeping the peak low)
    for (int i = 0; i < n_params; i++) {
        size_t begin = (size_t)z->rank * z->part[i], len = zero_part_length(z, i, z->rank);
        memcpy(z->exp_avg + z->part_offset[i], state->exp_avg[i] + begin, len * sizeof(float));
        memcpy(z->exp_avg_sq + z->part_offset[i], state->exp_avg_sq[i] + begin, len * sizeof(float));
        if (stage != 3) continue;
        memcpy(z->master + z->part_offset[i], params[i].value + begin, len * sizeof(float));
        z->storage.free(z->storage.ctx, i, 1, 1);
    }
    return 0;
}

void zero_free(Zero *z) {
    for (int b = 0; b < z->n_in_flight; b++) {
        free(z->in_flight[b].tensors);
        free(z->in_flight[b].send);
        free(z->in_flight[b].recv);
        free(z->in_flight[b].request);
    }
    free(z->part);
    free(z->part_offset);
    free(z->all_tensors);
    free(z->exp_avg);
    free(z->exp_avg_sq);
    free(z->grad_shard);
    free(z->master);
    free(z->layers.first);
    free(z->layers.members);
    free(z->last_layer);
    free(z->resident);
    free(z->open);
    free(z->ids);
    free(z->dst);
    memset(z, 0, sizeof *z);
}

int zero_step(Zero *z, AdamW *full, double max_norm, double lr, double *grad_norm, Error *err) {
    if (z->world > 1 || z->stage >= 1) {
        if (!z->reduced) return error_set(err, "ZeRO: an update without a gradient reduction (no reducing round)");
    }
    z->rounds = 0;
    z->reduced = 0;
    if (z->stage == 0) {
        *grad_norm = clip_grad_norm(z->params, z->n_params, max_norm);
        adamw_step(full, z->params, z->n_params, lr);
        z->step = full->step;
        return 0;
    }
    // the global norm from every rank's parts (padding adds zeros)
    double sum_sq = 0;
    for (int i = 0; i < z->n_params; i++) sum_sq += sum_of_squares(z->grad_shard + z->part_offset[i], z->part[i]);
    if (comm_allreduce_sum_f64(z->comm, &sum_sq, 1, err) != 0) return -1;
    double norm = sqrt(sum_sq);
    *grad_norm = norm;
    if (max_norm > 0) {  // as clip_grad_norm
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1.0) {
            float c = (float)coef;
            for (size_t j = 0; j < z->shard; j++) z->grad_shard[j] *= c;
        }
    }
    z->step++;
    AdamWScalars s = adamw_scalars(z->beta1, z->beta2, z->eps, z->weight_decay, z->step, lr);
    for (int i = 0; i < z->n_params; i++) {
        size_t len = zero_part_length(z, i, z->rank), at = z->part_offset[i];
        if (len == 0) continue;
        // stage 3: the master values here; stages 1-2: the model's own values of this rank's part
        float *values = z->stage == 3 ? z->master + at : z->params[i].value + (size_t)z->rank * z->part[i];
        adamw_update_span(values, z->grad_shard + at, z->exp_avg + at, z->exp_avg_sq + at, len, z->params[i].decay, &s);
    }
    if (z->stage == 3) return 0;  // the layers gather the new values when they next run
    free(z->grad_shard);
    z->grad_shard = NULL;
    zero_uncount_transient(z, z->shard * sizeof(float));
    for (int i = 0; i < z->n_params; i++) z->dst[i] = z->params[i].value;
    return zero_gather_tensors(z, z->all_tensors, z->n_params, NULL, z->dst, 0, err);
}

// (The gathers of whole state for checkpoints hold full copies by design:
// they are left out of transient_peak, which describes the training steps.)
int zero_gather_state(Zero *z, AdamW *full, Error *err) {
    if (z->stage == 0) return 0;
    size_t peak = z->transient_peak;
    int root = z->rank == 0;
    if (root && full == NULL) return error_set(err, "ZeRO: no optimizer state to gather into");
    int rc = zero_gather_tensors(z, z->all_tensors, z->n_params, z->exp_avg, root ? full->exp_avg : NULL, 1, err);
    if (rc == 0)
        rc = zero_gather_tensors(z, z->all_tensors, z->n_params, z->exp_avg_sq, root ? full->exp_avg_sq : NULL, 1, err);
    if (root) full->step = z->step;
    z->transient_peak = peak;
    return rc;
}

int zero_gather_all(Zero *z, Error *err) {
    if (z->stage != 3 || z->pinned) return 0;
    if (z->in_round) return error_set(err, "ZeRO: gathering every parameter in the middle of a micro-batch");
    size_t peak = z->transient_peak;
    int rc = 0;
    for (int i = 0; i < z->n_params && rc == 0 && z->rank == 0; i++) {
        rc = z->storage.alloc(z->storage.ctx, i, 1, 0, err);
        z->dst[i] = z->params[i].value;
    }
    if (rc == 0) rc = zero_gather_tensors(z, z->all_tensors, z->n_params, z->master, z->dst, 1, err);
    z->transient_peak = peak;
    z->pinned = 1;  // zero_release_all frees what was allocated, also after a failure
    return rc;
}

void zero_release_all(Zero *z) {
    if (z->stage != 3 || !z->pinned) return;
    for (int i = 0; i < z->n_params; i++) z->storage.free(z->storage.ctx, i, 1, 0);
    z->pinned = 0;
}

void zero_memory(const Zero *z, ZeroMemory *memory) {
    memset(memory, 0, sizeof *memory);
    memory->moments = zero_state_bytes(z);
    memory->values = (z->stage == 3 ? z->shard : z->total) * sizeof(float);
    memory->grads = (z->stage == 3 ? z->shard : z->total) * sizeof(float);
    memory->transient_peak = z->transient_peak;
}

size_t zero_state_bytes(const Zero *z) {
    if (z->stage == 0) return 2 * z->total * sizeof(float);
    return 2 * z->shard * sizeof(float);
}
