// params.h - the seam between a model and the optimizer / checkpoints.
//
// A model hands the trainer an array of ParamRef, one per trainable tensor:
// fp32 master values and fp32 gradients it owns. The optimizer updates value
// from grad; checkpoints save value (and optimizer state) under name.
#ifndef VLFT_PARAMS_H
#define VLFT_PARAMS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *name;  // name as saved: HF name for full weights, PEFT name for LoRA
    float *value;      // fp32 master copy, numel elements
    float *grad;       // fp32 gradient, accumulated over micro-batches
    size_t numel;
    int ndim;
    int64_t shape[4];
    int decay;         // 1: weight decay applies (not to biases or norm weights)
} ParamRef;

#endif
