// zero.h - the optimizer update of data-parallel training: gradients
// reduced across ranks, then AdamW, with the state sharded as DeepSpeed's
// ZeRO stages shard it.
//
// Every trainable element has a place in one flat vector: the tensors of
// params[] one after another (total elements), padded with zeros to
// world * shard. Rank r owns elements [r * shard, (r + 1) * shard).
//
//   stage 0  every rank keeps the full AdamW state; gradients are all-reduced
//            in buckets of `bucket` elements, every rank updates everything.
//   stage 1  all-reduce of the gradients; each rank keeps only its shard of
//            the two moments, updates the fp32 values of its shard, and the
//            shards are all-gathered back into the model's params.
//   stage 2  as 1, but the gradients are reduce-scattered: a rank receives
//            only the sum of its shard (half the traffic of an all-reduce).
//   stage 3  as 2 here (see below): the parameters are not yet gathered
//            layer by layer, because the model keeps full working copies.
// Stages 1-3 move the shards in pieces of bucket / world elements per rank;
// the reduced gradient shard and one piece per rank of staging exist only
// during an update.
// What is NOT sharded (the model owns these, see docs/distributed.md): the
// model's working fp32 values and gradient buffers of params[], which the
// forward/backward reads and writes in full on every rank.
//
// Gradients arrive already scaled by 1 / (grad_accum * world) (the trainer
// passes that grad_scale to forward_backward), so the SUM over ranks is the
// mean gradient of DDP; the clipping norm is the norm of that sum, computed
// from the shards' squared sums (one f64 all-reduce).
#ifndef VLFT_ZERO_H
#define VLFT_ZERO_H

#include <stddef.h>

#include "../base/error.h"
#include "../train/optimizer.h"
#include "../train/params.h"
#include "comm.h"

enum { ZERO_BUCKET = 1 << 22 };  // default elements per collective call (16 MiB)

typedef struct {
    Comm *comm;
    int stage, rank, world;
    int n_params;
    size_t total;     // trainable elements
    size_t shard;     // elements each rank owns (ceil(total / world))
    size_t *offsets;  // [n_params] first flat index of each tensor
    double beta1, beta2, eps, weight_decay;
    long step;
    size_t bucket;    // elements per collective call (ZERO_BUCKET; tests make it small)
    // stage >= 1: this rank's shard of the two moments. Its fp32 master
    // values are the model's own values there; the reduced gradient shard
    // and the flat staging vector exist only during an update.
    float *exp_avg, *exp_avg_sq;
} Zero;

// state: a full AdamW for params (hyper-parameters, step, moments), e.g.
// freshly initialised or loaded from a checkpoint; stage >= 1 copies this
// rank's shard out of it (the caller may then free its moments). The master
// shard is taken from params[].value, which must agree on every rank.
int zero_init(Zero *z, Comm *comm, int stage, const ParamRef *params, int n_params, const AdamW *state, Error *err);
void zero_free(Zero *z);

// One optimizer update from the gradients in params[].grad (not zeroed
// here): reduce, clip to max_norm (0: no clipping), AdamW with learning rate
// lr, and, for stage >= 1, all-gather the new values into params[].value.
// full: the AdamW state for stage 0 (unused otherwise). *grad_norm: the
// global norm before clipping. Collective: every rank calls it.
int zero_step(Zero *z, AdamW *full, ParamRef *params, int n_params, double max_norm, double lr, double *grad_norm,
              Error *err);

// Stage >= 1: fills full (allocated by adamw_init for params) with the
// whole state, every rank's shard all-gathered: what a checkpoint saves,
// independent of the number of ranks. Collective.
int zero_gather_state(Zero *z, AdamW *full, const ParamRef *params, int n_params, Error *err);

// Bytes of optimizer state (the AdamW moments) this rank holds between
// updates: all of them for stage 0, its shard for stages >= 1.
size_t zero_state_bytes(const Zero *z);

#endif
