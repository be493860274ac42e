// params.h - the seam between a model and the optimizer / checkpoints.
//
// A model hands the trainer an array of ParamRef, one per trainable tensor:
// fp32 master values and fp32 gradients it owns. The optimizer updates value
// from grad; checkpoints save value (and optimizer state) under name.
//
// A model that runs in layers may also describe them (LayerTable), call
// hooks around each layer (LayerHooks) and let the trainer decide when a
// tensor's full values and gradient are resident (ParamStorage): that is
// what ZeRO-3 (src/dist/zero.h) gathers parameters layer by layer with, and
// how gradient reductions overlap the backward pass.
#ifndef VLFT_PARAMS_H
#define VLFT_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "../base/error.h"

typedef struct {
    const char *name;  // name as saved: HF name for full weights, PEFT name for LoRA
    float *value;      // fp32 master copy, numel elements (NULL while released, see ParamStorage)
    float *grad;       // fp32 gradient, accumulated over micro-batches (NULL while released)
    size_t numel;
    int ndim;
    int64_t shape[4];
    int decay;         // 1: weight decay applies (not to biases or norm weights)
} ParamRef;

// The model's layers in forward order (the backward visits them in reverse)
// and the trainable tensors each one reads: layer l reads params
// members[first[l]] .. members[first[l + 1] - 1]. A tensor two layers read
// (tied embeddings) is listed in both; every tensor is in at least one.
typedef struct {
    int n_layers;
    int *first;    // [n_layers + 1]
    int *members;  // [first[n_layers]] indices into the ParamRef array
} LayerTable;

// Called by the model around every layer of a training (or evaluation)
// pass, with the layer's number in the LayerTable: before its forward reads
// the parameters, after that forward, before its backward and after its
// backward (its own contributions to its tensors' gradients are then
// complete). A layer the pass does not need (the vision tower for a batch
// without images) gets no calls. A hook returning -1 (err set) ends the pass.
// Each layer's forward hooks come once per pass: a forward recomputed inside
// the backward (activation checkpointing) belongs between before_backward
// and after_backward, where the layer's parameters are present too.
typedef struct {
    void *user;
    int (*before_forward)(void *user, int layer, Error *err);
    int (*after_forward)(void *user, int layer, Error *err);
    int (*before_backward)(void *user, int layer, Error *err);
    int (*after_backward)(void *user, int layer, Error *err);
} LayerHooks;

// Residency of a tensor's full fp32 buffers. alloc gives params[i] fresh
// value and/or grad buffers (the grad zeroed; the caller fills the values),
// free releases them and leaves the pointers NULL. The model owns the
// memory either way and frees what is resident when it is freed.
typedef struct {
    void *ctx;
    int (*alloc)(void *ctx, int param, int value, int grad, Error *err);
    void (*free)(void *ctx, int param, int value, int grad);
} ParamStorage;

#endif
