// zero.h - data-parallel training's gradient reduction and optimizer
// update, with the state sharded as DeepSpeed's ZeRO stages shard it.
//
// Layout. Every trainable tensor i (numel n_i) is cut into world parts of
// part[i] = ceil(n_i / world) elements; rank r owns elements
// [r * part[i], (r + 1) * part[i]) of every tensor (the last part padded
// with zeros). A rank's shard vectors (moments, reduced gradient, stage-3
// values) hold its parts of all tensors one after another, tensor i's at
// part_offset[i]; shard = their total.
//
//   stage 0  gradients all-reduced in buckets; every rank keeps the full
//            AdamW state and updates everything.
//   stage 1  gradients all-reduced in buckets, each rank keeps its parts;
//            moments of its parts only; it updates its parts of the
//            model's values, which are then all-gathered into every rank's.
//   stage 2  as 1, but reduce-scattered: a rank receives only the sums of
//            its parts (half the traffic of an all-reduce).
//   stage 3  as 2, and no rank keeps full values or gradients: the fp32
//            values of its parts live here (master); a layer's full values
//            are all-gathered just before its forward and again before its
//            backward and freed after each (through the model's
//            ParamStorage); its gradients exist from its backward until
//            they are reduce-scattered into the rank's gradient shard,
//            right after that backward.
//
// Rounds. One micro-batch's forward and backward on this rank is a round:
// zero_round_begin, the model's forward_backward (which calls the layer
// hooks of zero_hooks), zero_round_end. A tensor's gradient is complete
// after the backward of the first layer (in forward order) that reads it;
// the hook then packs it into the open bucket, and a full bucket's
// reduction starts at once (non-blocking) while the backward goes on;
// zero_round_end waits for them all. Stage 3 reduces in every round (the
// shard adds the rounds' sums up); stages 0-2 only in a round begun with
// reduce = 1 (this rank's last micro-batch before the update; the earlier
// ones accumulate in the model's gradients, as DDP's no_sync does), so the
// sums are the same numbers as one reduction after the backward.
// Collectives must be called in the same order on every rank, so a layer
// this rank's pass skips (the vision tower of a batch without images) still
// takes its part, in layer order, with zero gradients; and before each
// update every rank must have run the same number of rounds (stage 3) or
// one reducing round (stages 0-2): zero_catch_up adds empty rounds.
//
// Gradients arrive scaled by 1 / (grad_accum * world) (the trainer passes
// that grad_scale to forward_backward), so the SUM over ranks is DDP's mean
// gradient; the clipping norm is the norm of that sum, computed from the
// shards' squared sums (one f64 all-reduce).
#ifndef VLFT_ZERO_H
#define VLFT_ZERO_H

#include <stddef.h>

#include "../base/error.h"
#include "../train/optimizer.h"
#include "../train/params.h"
#include "comm.h"

enum { ZERO_BUCKET = 1 << 22 };      // default elements per collective call (16 MiB)
enum { ZERO_MAX_IN_FLIGHT = 4 };     // buckets reduced at once; a fifth waits for the oldest

// A bucket whose reduction is in flight.
typedef struct {
    CommRequest *request;
    int *tensors;   // the tensors it holds
    int n_tensors;
    size_t length;  // stage 0: elements of send; else elements per rank (sum of the tensors' parts)
    float *send;    // packed gradients (stage 0: one after another; else rank r's parts at r * length)
    float *recv;    // stages 2-3: this rank's summed parts
} ZeroBucket;

typedef struct {
    Comm *comm;
    int stage, rank, world;
    ParamRef *params;  // the model's (value / grad pointers change under stage 3)
    int n_params;
    size_t total;        // trainable elements
    size_t shard;        // elements of this rank's shard vectors
    size_t *part;        // [n_params] elements of each tensor every rank owns
    size_t *part_offset; // [n_params] where tensor i's part starts in the shard vectors
    int *all_tensors;    // 0 .. n_params-1
    double beta1, beta2, eps, weight_decay;
    long step;
    size_t bucket;       // elements per collective call (ZERO_BUCKET; tests make it small)
    // stage >= 1: this rank's parts of the two moments
    float *exp_avg, *exp_avg_sq;
    // stage >= 1: this rank's parts of the reduced gradient (stages 1-2:
    // from the reducing round to the update; stage 3: always)
    float *grad_shard;
    // stage 3: this rank's parts of the fp32 values
    float *master;
    ParamStorage storage;  // stage 3: how the model's full buffers come and go

    // rounds (zero_layers.c)
    LayerTable layers;     // the model's, or one layer reading everything
    int *last_layer;       // [n_params] the layer whose backward completes tensor i's gradient
    int *resident;         // [n_params] stage 3: gathered layers holding tensor i's values
    int pinned;            // stage 3: every value gathered (zero_gather_all): the hooks leave them
    int in_round, reducing, rounds, reduced;
    int next_forward;      // first layer whose forward (gather) has not happened in this round
    int next_backward;     // last layer whose backward has not happened
    int *ids;              // [n_params] scratch: tensors to gather
    float **dst;           // [n_params] scratch: where they go
    int *open;             // tensors of the bucket being filled
    int n_open;
    size_t open_elements;
    ZeroBucket in_flight[ZERO_MAX_IN_FLIGHT];
    int n_in_flight;
    size_t transient, transient_peak;  // bytes of gathered values / gradients / buffers live now, at most
                                       // (zero_memory)
} Zero;

// params: the model's tensors; state: a full AdamW for them (e.g. freshly
// initialised or loaded from a checkpoint); stage >= 1 copies this rank's
// parts of the moments out of it (the caller may then free its moments).
// The values must agree on every rank. layers: the model's layers (NULL:
// one layer reading everything, reduced after the whole backward).
// storage: needed by stage 3, which takes this rank's parts of the values
// and frees the model's full values and gradients.
int zero_init(Zero *z, Comm *comm, int stage, ParamRef *params, int n_params, const AdamW *state,
              const LayerTable *layers, const ParamStorage *storage, Error *err);
void zero_free(Zero *z);

// The hooks the model calls around its layers (see params.h).
LayerHooks zero_hooks(Zero *z);
// A round (see above). reduce: stages 0-2 reduce the gradients in this one.
int zero_round_begin(Zero *z, int reduce, Error *err);
int zero_round_end(Zero *z, Error *err);
// Before zero_step: empty rounds up to `rounds` this update (stage 3), or
// one reducing round when none happened (stages 0-2 across ranks; stages
// 1-2 also alone, to fill the gradient shard). Collective.
int zero_catch_up(Zero *z, int rounds, Error *err);

// One optimizer update from the reduced gradients: clip to max_norm (0: no
// clipping), AdamW with learning rate lr; stages 1-2 all-gather the new
// values into the model's tensors. full: the AdamW state of stage 0
// (unused otherwise). *grad_norm: the global norm before clipping.
// Collective.
int zero_step(Zero *z, AdamW *full, double max_norm, double lr, double *grad_norm, Error *err);

// Stage >= 1: fills full (allocated by adamw_init for the params, on rank 0;
// NULL on the others) with the whole state, every rank's parts gathered on
// rank 0: what a checkpoint saves, independent of the number of ranks.
// Collective.
int zero_gather_state(Zero *z, AdamW *full, Error *err);

// Stage 3: every tensor's full values resident in rank 0's model (it alone
// saves checkpoints and weights and evaluates) until zero_release_all; the
// hooks leave things in place meanwhile. Collective. Other stages: nothing.
int zero_gather_all(Zero *z, Error *err);
void zero_release_all(Zero *z);

// Bytes this rank holds between updates.
typedef struct {
    size_t values;          // fp32 trainable values (stage 3: its parts)
    size_t grads;           // gradients (stage 3: its reduced parts)
    size_t moments;         // AdamW moments (stage >= 1: its parts)
    size_t transient_peak;  // most bytes of gathered layers, gradient buckets and shards, update buffers
                            // live at once so far (checkpoints' full gathers aside)
} ZeroMemory;
void zero_memory(const Zero *z, ZeroMemory *memory);
// The moments alone (zero_memory's .moments).
size_t zero_state_bytes(const Zero *z);

// --- shared by zero.c and zero_layers.c
// Elements of tensor i that are real (not padding) in rank r's part.
size_t zero_part_length(const Zero *z, int i, int r);
// All-gathers tensors ids[0..n): this rank's parts come from `mine` (a shard
// vector) or, when NULL, from dst itself; every rank's parts land in dst[i].
// to_root: gathered on rank 0 only (dst is not touched elsewhere).
int zero_gather_tensors(Zero *z, const int *ids, int n, const float *mine, float *const *dst, int to_root,
                        Error *err);
void zero_count_transient(Zero *z, size_t bytes);
void zero_uncount_transient(Zero *z, size_t bytes);

#endif
