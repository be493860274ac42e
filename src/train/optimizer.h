// optimizer.h - AdamW as torch.optim.AdamW computes it, and global gradient
// norm clipping as torch.nn.utils.clip_grad_norm_.
//
// For each trainable tensor p with gradient g, at update t (1-based):
//   p   *= 1 - lr * weight_decay            (only where ParamRef.decay = 1)
//   m    = beta1 * m + (1 - beta1) * g
//   v    = beta2 * v + (1 - beta2) * g * g
//   p   -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// Element math is fp32 like PyTorch's CPU kernels; scalars are computed in
// double, as Python does, and then used as fp32.
//
// State (m, v per tensor and the step count) is saved as a safetensors file:
//   "exp_avg.<param name>", "exp_avg_sq.<param name>" (F32, the param's shape),
//   metadata {"step": "<t>", "format": "vlft-adamw"}.
#ifndef VLFT_OPTIMIZER_H
#define VLFT_OPTIMIZER_H

#include "../base/error.h"
#include "params.h"

typedef struct {
    double beta1, beta2, eps, weight_decay;
    long step;            // updates done so far
    int n_params;
    float **exp_avg;      // [n_params][numel]
    float **exp_avg_sq;   // [n_params][numel]
} AdamW;

int adamw_init(AdamW *opt, const ParamRef *params, int n_params, double beta1, double beta2, double eps,
               double weight_decay, Error *err);
void adamw_free(AdamW *opt);
// One update of every param from its grad with learning rate lr.
void adamw_step(AdamW *opt, ParamRef *params, int n_params, double lr);

// The fp32 scalars of update number `step` (1-based) at learning rate lr,
// computed in double as Python does and rounded as PyTorch passes them.
typedef struct {
    float decay_keep, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps;
} AdamWScalars;
AdamWScalars adamw_scalars(double beta1, double beta2, double eps, double weight_decay, long step, double lr);
// Updates n consecutive elements p (with grads g, moments m, v) as
// adamw_step does; decay: the elements' ParamRef.decay. Used per tensor by
// adamw_step and per shard by ZeRO (src/dist/zero.h).
void adamw_update_span(float *p, const float *g, float *m, float *v, size_t n, int decay, const AdamWScalars *s);

// Sum of squares of x[0..n) in double, in fixed blocks (same bits for any
// thread count).
double sum_of_squares(const float *x, size_t n);

// The global L2 norm over every grad; when max_norm > 0 and
// max_norm / (norm + 1e-6) < 1 the grads are scaled by that coefficient.
// Returns the norm before clipping (what transformers logs as grad_norm).
double clip_grad_norm(ParamRef *params, int n_params, double max_norm);

int adamw_save(const AdamW *opt, const ParamRef *params, int n_params, const char *path, Error *err);
// Loads state saved for the same params (names and shapes must agree).
int adamw_load(AdamW *opt, const ParamRef *params, int n_params, const char *path, Error *err);

#endif
