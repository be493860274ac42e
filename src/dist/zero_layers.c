// zero_layers.c - ZeRO's work around the model's layers: stage 3's
// parameter gathers, and the gradient buckets reduced while the backward
// goes on (see "Rounds" in zero.h).
//
// Within a round the hooks walk the layer table with two cursors:
// next_forward climbs 0 -> n_layers, next_backward descends n_layers-1 ->
// -1. A hook for layer l first "skips" every layer between the cursor and
// l: it takes its part in that layer's collectives (gather, reduction of
// the tensors it completes) without running anything, so that every rank
// issues the same collectives in the same order whatever its batch holds.
// zero_round_end skips whatever the pass never reached.
#include <stdlib.h>
#include <string.h>

#include "zero.h"

void zero_count_transient(Zero *z, size_t bytes) {
    z->transient += bytes;
    if (z->transient > z->transient_peak) z->transient_peak = z->transient;
}

void zero_uncount_transient(Zero *z, size_t bytes) { z->transient -= bytes < z->transient ? bytes : z->transient; }

int zero_gather_tensors(Zero *z, const int *ids, int n, const float *mine, float *const *dst, int to_root,
                        Error *err) {
    int world = z->world, rank = z->rank;
    int receives = !to_root || rank == 0;
    for (int k = 0; k < n;) {
        // a run of tensors whose parts fill at most a bucket over all ranks (at least one tensor)
        int end = k;
        size_t length = 0;  // elements each rank contributes
        while (end < n && (end == k || (length + z->part[ids[end]]) * (size_t)world <= z->bucket))
            length += z->part[ids[end++]];
        size_t bytes = (length + (receives ? (size_t)world * length : 0)) * sizeof(float);
        float *send = malloc(length * sizeof(float) + 1);
        float *recv = receives ? malloc((size_t)world * length * sizeof(float) + 1) : NULL;
        if (!send || (receives && !recv)) {
            free(send);
            free(recv);
            return error_set(err, "ZeRO: out of memory gathering %zu values", (size_t)world * length);
        }
        zero_count_transient(z, bytes);
        size_t at = 0;
        for (int j = k; j < end; j++) {
            int i = ids[j];
            size_t len = zero_part_length(z, i, rank);
            const float *src = mine ? mine + z->part_offset[i] : dst[i] + (size_t)rank * z->part[i];
            memcpy(send + at, src, len * sizeof(float));
            memset(send + at + len, 0, (z->part[i] - len) * sizeof(float));
            at += z->part[i];
        }
        int rc = to_root ? comm_gather_f32(z->comm, send, recv, length, 0, err)
                         : comm_allgather_f32(z->comm, send, recv, length, err);
        for (int r = 0; r < world && rc == 0 && receives; r++) {
            at = 0;
            for (int j = k; j < end; j++) {
                int i = ids[j];
                memcpy(dst[i] + (size_t)r * z->part[i], recv + (size_t)r * length + at,
                       zero_part_length(z, i, r) * sizeof(float));
                at += z->part[i];
            }
        }
        free(send);
        free(recv);
        zero_uncount_transient(z, bytes);
        if (rc != 0) return -1;
        k = end;
    }
    return 0;
}

// ------------------------------------------------------------ buckets

static size_t bucket_bytes(const Zero *z, const ZeroBucket *b) {
    if (z->stage == 0) return b->length * sizeof(float);
    return ((size_t)z->world * b->length + (z->stage >= 2 ? b->length : 0)) * sizeof(float);
}

// The reduced sums of a finished bucket to where the update reads them.
static void bucket_unpack(Zero *z, ZeroBucket *b) {
    size_t at = 0;
    for (int k = 0; k < b->n_tensors; k++) {
        int i = b->tensors[k];
        if (z->stage == 0) {  // the model's gradients, summed over ranks
            memcpy(z->params[i].grad, b->send + at, z->params[i].numel * sizeof(float));
            at += z->params[i].numel;
            continue;
        }
        const float *sum = z->stage == 1 ? b->send + (size_t)z->rank * b->length + at : b->recv + at;
        float *out = z->grad_shard + z->part_offset[i];
        if (z->stage == 3 && z->rounds > 0) {  // later micro-batches of the update add up
            for (size_t j = 0; j < z->part[i]; j++) out[j] += sum[j];
        } else {
            memcpy(out, sum, z->part[i] * sizeof(float));
        }
        at += z->part[i];
    }
}

static void bucket_free(Zero *z, ZeroBucket *b) {
    zero_uncount_transient(z, bucket_bytes(z, b));
    free(b->tensors);
    free(b->send);
    free(b->recv);
    memset(b, 0, sizeof *b);
}

// Waits for the oldest bucket in flight and unpacks it.
static int finish_oldest(Zero *z, Error *err) {
    ZeroBucket *b = &z->in_flight[0];
    int rc = comm_wait(z->comm, b->request, err);
    b->request = NULL;
    if (rc == 0) bucket_unpack(z, b);
    bucket_free(z, b);
    memmove(&z->in_flight[0], &z->in_flight[1], sizeof(ZeroBucket) * (size_t)(z->n_in_flight - 1));
    z->n_in_flight--;
    memset(&z->in_flight[z->n_in_flight], 0, sizeof(ZeroBucket));
    return rc;
}

// Gives the reductions in flight a chance to advance (OpenMPI moves them
// only inside MPI calls) and unpacks the ones that have finished.
static int progress(Zero *z, Error *err) {
    while (z->n_in_flight > 0) {
        int done = 0;
        if (comm_test(z->comm, z->in_flight[0].request, &done, err) != 0) return -1;
        if (!done) return 0;
        if (finish_oldest(z, err) != 0) return -1;
    }
    return 0;
}

// Starts the reduction of the open bucket.
static int launch(Zero *z, Error *err) {
    if (z->n_open == 0) return 0;
    if (z->n_in_flight == ZERO_MAX_IN_FLIGHT && finish_oldest(z, err) != 0) return -1;
    ZeroBucket *b = &z->in_flight[z->n_in_flight];
    memset(b, 0, sizeof *b);
    b->tensors = malloc(sizeof(int) * (size_t)z->n_open);
    if (b->tensors == NULL) return error_set(err, "ZeRO: out of memory for a gradient bucket");
    memcpy(b->tensors, z->open, sizeof(int) * (size_t)z->n_open);
    b->n_tensors = z->n_open;
    int world = z->world;
    for (int k = 0; k < b->n_tensors; k++)
        b->length += z->stage == 0 ? z->params[b->tensors[k]].numel : z->part[b->tensors[k]];
    size_t send_n = z->stage == 0 ? b->length : (size_t)world * b->length;
    b->send = malloc(send_n * sizeof(float) + 1);
    if (z->stage >= 2) b->recv = malloc(b->length * sizeof(float) + 1);
    if (b->send == NULL || (z->stage >= 2 && b->recv == NULL)) {
        free(b->tensors);
        free(b->send);
        free(b->recv);
        memset(b, 0, sizeof *b);
        return error_set(err, "ZeRO: out of memory for a gradient bucket of %zu values", send_n);
    }
    zero_count_transient(z, bucket_bytes(z, b));
    // stage 0: the gradients one after another; else rank r's parts of
    // every tensor side by side at r * length (a tensor not computed in this
    // pass, stage 3, is zeros)
    size_t at = 0;
    for (int k = 0; k < b->n_tensors; k++) {
        int i = b->tensors[k];
        const float *grad = z->params[i].grad;
        if (z->stage == 0) {
            memcpy(b->send + at, grad, z->params[i].numel * sizeof(float));
            at += z->params[i].numel;
            continue;
        }
        for (int r = 0; r < world; r++) {
            float *dst = b->send + (size_t)r * b->length + at;
            size_t len = grad ? zero_part_length(z, i, r) : 0;
            if (len) memcpy(dst, grad + (size_t)r * z->part[i], len * sizeof(float));
            memset(dst + len, 0, (z->part[i] - len) * sizeof(float));
        }
        at += z->part[i];
        if (z->stage == 3 && grad) {  // the full gradient is not needed any more
            zero_uncount_transient(z, z->params[i].numel * sizeof(float));
            z->storage.free(z->storage.ctx, i, 0, 1);
        }
    }
    int rc = z->stage <= 1 ? comm_iallreduce_sum_f32(z->comm, b->send, send_n, &b->request, err)
                           : comm_ireduce_scatter_sum_f32(z->comm, b->send, b->recv, b->length, &b->request, err);
    z->n_in_flight++;
    z->n_open = 0;
    z->open_elements = 0;
    return rc;
}

// The gradients of the tensors this layer completes (their first reader)
// go into the open bucket; a full bucket starts its reduction. Stage 3
// starts it at the end of every layer, so that the layer's full gradients
// can go at once.
static int complete(Zero *z, int layer, Error *err) {
    for (int k = z->layers.first[layer]; k < z->layers.first[layer + 1]; k++) {
        int i = z->layers.members[k];
        if (z->last_layer[i] != layer) continue;
        z->open[z->n_open++] = i;
        z->open_elements += z->params[i].numel;
        if (z->open_elements >= z->bucket && launch(z, err) != 0) return -1;
    }
    return z->stage == 3 ? launch(z, err) : 0;
}

// ------------------------------------------------------------ stage 3 residency

// Gathers the layer's values that no other gathered layer holds, and with
// grads, gives its tensors zeroed gradient buffers.
static int acquire(Zero *z, int layer, int grads, Error *err) {
    int n = 0;
    for (int k = z->layers.first[layer]; k < z->layers.first[layer + 1]; k++) {
        int i = z->layers.members[k];
        if (z->resident[i]++ > 0) continue;
        if (z->storage.alloc(z->storage.ctx, i, 1, 0, err) != 0) return -1;
        zero_count_transient(z, z->params[i].numel * sizeof(float));
        z->ids[n++] = i;
        z->dst[i] = z->params[i].value;  // (indexed by tensor, as zero_gather_tensors reads it)
    }
    if (n > 0 && zero_gather_tensors(z, z->ids, n, z->master, z->dst, 0, err) != 0) return -1;
    if (!grads) return 0;
    for (int k = z->layers.first[layer]; k < z->layers.first[layer + 1]; k++) {
        int i = z->layers.members[k];
        if (z->params[i].grad) continue;
        if (z->storage.alloc(z->storage.ctx, i, 0, 1, err) != 0) return -1;
        zero_count_transient(z, z->params[i].numel * sizeof(float));
    }
    return 0;
}

static void release(Zero *z, int layer) {
    for (int k = z->layers.first[layer]; k < z->layers.first[layer + 1]; k++) {
        int i = z->layers.members[k];
        if (z->resident[i] <= 0 || --z->resident[i] > 0) continue;
        zero_uncount_transient(z, z->params[i].numel * sizeof(float));
        z->storage.free(z->storage.ctx, i, 1, 0);
    }
}

// ------------------------------------------------------------ the cursors

// Stage 3: the forwards of layers next_forward .. layer-1, which this pass
// skips, still take their part in the gathers.
static int forward_to(Zero *z, int layer, Error *err) {
    if (layer < z->next_forward)
        return error_set(err, "ZeRO: layer %d ran its forward twice in one micro-batch", layer);
    for (int l = z->next_forward; l < layer; l++) {
        if (acquire(z, l, 0, err) != 0) return -1;
        release(z, l);
    }
    z->next_forward = layer;
    return 0;
}

// The backwards of layers next_backward .. layer+1, which this pass skips:
// their gathers (stage 3) and the reductions of the tensors they complete,
// with whatever gradient those hold (nothing new from this pass).
static int backward_to(Zero *z, int layer, Error *err) {
    if (layer > z->next_backward)
        return error_set(err, "ZeRO: layer %d ran its backward twice in one micro-batch", layer);
    for (int l = z->next_backward; l > layer; l--) {
        if (z->stage == 3 && acquire(z, l, 0, err) != 0) return -1;
        if (complete(z, l, err) != 0) return -1;
        if (z->stage == 3) release(z, l);
    }
    z->next_backward = layer;
    return 0;
}

// ------------------------------------------------------------ the hooks

// Whether a hook call has work: inside a round, and (stage 3 aside) only
// in a reducing one. Stage 3 refuses a pass outside a round (its layers'
// parameters are not there) unless everything is gathered.
static int active(Zero *z, int layer, Error *err, int *rc) {
    *rc = 0;
    if (z->pinned) return 0;
    if (layer < 0 || layer >= z->layers.n_layers) {
        *rc = error_set(err, "ZeRO: the model called a hook for layer %d of %d", layer, z->layers.n_layers);
        return 0;
    }
    if (!z->in_round) {
        if (z->stage == 3)
            *rc = error_set(err, "ZeRO-3: the model ran layer %d outside a training micro-batch, where its "
                                 "parameters are not gathered", layer);
        return 0;
    }
    if (progress(z, err) != 0) {
        *rc = -1;
        return 0;
    }
    return z->stage == 3 || z->reducing;
}

static int before_forward(void *user, int layer, Error *err) {
    Zero *z = user;
    int rc;
    if (!active(z, layer, err, &rc) || z->stage != 3) return rc;
    if (forward_to(z, layer, err) != 0 || acquire(z, layer, 0, err) != 0) return -1;
    z->next_forward = layer + 1;
    return 0;
}

static int after_forward(void *user, int layer, Error *err) {
    Zero *z = user;
    int rc;
    if (!active(z, layer, err, &rc) || z->stage != 3) return rc;
    release(z, layer);
    return 0;
}

static int before_backward(void *user, int layer, Error *err) {
    Zero *z = user;
    int rc;
    if (!active(z, layer, err, &rc)) return rc;
    if (z->stage == 3 && forward_to(z, z->layers.n_layers, err) != 0) return -1;
    if (backward_to(z, layer, err) != 0) return -1;
    if (z->stage == 3 && acquire(z, layer, 1, err) != 0) return -1;
    z->next_backward = layer - 1;
    // the gather let earlier reductions finish: free their buffers before the layer's backward
    return progress(z, err);
}

static int after_backward(void *user, int layer, Error *err) {
    Zero *z = user;
    int rc;
    if (!active(z, layer, err, &rc)) return rc;
    if (complete(z, layer, err) != 0) return -1;
    if (z->stage == 3) release(z, layer);
    return progress(z, err);
}

LayerHooks zero_hooks(Zero *z) {
    return (LayerHooks){.user = z, .before_forward = before_forward, .after_forward = after_forward,
                        .before_backward = before_backward, .after_backward = after_backward};
}

// ------------------------------------------------------------ rounds

int zero_round_begin(Zero *z, int reduce, Error *err) {
    if (z->in_round) return error_set(err, "ZeRO: a micro-batch began inside another");
    if (z->pinned) return error_set(err, "ZeRO-3: a micro-batch began while every parameter is gathered");
    z->in_round = 1;
    // one process at stage 0 has nothing to reduce
    z->reducing = z->stage == 3 || (reduce && (z->world > 1 || z->stage >= 1));
    z->next_forward = 0;
    z->next_backward = z->layers.n_layers - 1;
    if (z->reducing && (z->stage == 1 || z->stage == 2) && z->grad_shard == NULL) {
        z->grad_shard = calloc(z->shard > 0 ? z->shard : 1, sizeof(float));
        if (z->grad_shard == NULL)
            return error_set(err, "ZeRO: out of memory for a gradient shard of %zu values", z->shard);
        zero_count_transient(z, z->shard * sizeof(float));
    }
    return 0;
}

int zero_round_end(Zero *z, Error *err) {
    if (!z->in_round) return error_set(err, "ZeRO: a micro-batch ended that never began");
    int rc = 0;
    if (z->reducing) {
        // whatever the pass never reached, in layer order, then every bucket
        if (z->stage == 3) rc = forward_to(z, z->layers.n_layers, err);
        if (rc == 0) rc = backward_to(z, -1, err);
        if (rc == 0) rc = launch(z, err);
        while (z->n_in_flight > 0) {
            int step = finish_oldest(z, err);
            if (rc == 0) rc = step;
        }
        if (rc == 0) z->reduced = 1;
    }
    z->rounds++;
    z->in_round = 0;
    return rc;
}

int zero_catch_up(Zero *z, int rounds, Error *err) {
    if (z->stage == 3) {
        while (z->rounds < rounds)
            if (zero_round_begin(z, 1, err) != 0 || zero_round_end(z, err) != 0) return -1;
        return 0;
    }
    if ((z->world > 1 || z->stage >= 1) && !z->reduced)
        if (zero_round_begin(z, 1, err) != 0 || zero_round_end(z, err) != 0) return -1;
    return 0;
}
