// The LLaVA forward and backward passes.
//
//   pixels -> vision tower (CLIP, first vision_layers_run layers only) ->
//   select (drop class row) -> projector -> rows scattered over the image
//   tokens' embeddings -> LLaMA layers -> RMSNorm -> lm_head -> shifted
//   cross-entropy.
//
// Each part runs in one of two modes: "keep" (activations go on the tape for
// the backward) or not (scratch, freed as soon as the next layer has its
// input). A part with nothing trainable at or before it runs without keep,
// so a frozen vision tower holds no activations at all.
//
// Activation checkpointing (options.gradient_checkpointing; HF's
// gradient_checkpointing with use_reentrant=False, which LLaMA-Factory turns
// on by default): a decoder layer of a kept part keeps only its input. Its
// forward runs on scratch and writes its output straight into the next
// layer's kept input; the backward recomputes the layer's forward on the tape
// just before the layer's backward and releases it right after. LoRA dropout
// masks come from the model's stream, whose state before each layer is saved
// so that the recompute draws the same masks: gradients are the same as
// without checkpointing, bit for bit.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llava_internal.h"

// Buffers of one layer; in no-keep mode they are freed when the layer ends.
typedef struct {
    float *ptr[40];
    size_t n[40];
    int count;
} Scratch;

typedef struct {
    LlavaModel *m;
    int keep;    // activations of this part are kept for backward
    int vision;  // they count as vision-tower memory
    int training;
    float *out;  // when set, the layer writes its output here (a checkpoint) instead of a new buffer
    Scratch scratch;
} Pass;

static float *buf(Pass *p, size_t n) {
    if (p->keep) return tape_keep(&p->m->tape, n, p->vision);
    if (p->scratch.count == 40) {  // a layer never needs this many; refuse rather than leak
        p->m->tape.failed = 1;
        return NULL;
    }
    float *x = tape_scratch(&p->m->tape, n);
    if (x) {
        p->scratch.ptr[p->scratch.count] = x;
        p->scratch.n[p->scratch.count++] = n;
    }
    return x;
}

static void end_layer(Pass *p, const float *survivor) {
    for (int i = 0; i < p->scratch.count; i++) {
        if (p->scratch.ptr[i] == survivor) continue;
        tape_release_scratch(&p->m->tape, p->scratch.ptr[i], p->scratch.n[i]);
    }
    p->scratch.count = 0;
}

static void lin(Pass *p, const Linear *l, float *y, const float *x, int N, LinearCache *c) {
    linear_module_forward(l, y, x, N, p->keep ? c : NULL, &p->m->tape, p->vision, &p->m->dropout_rng, p->training);
}

// ---------------------------------------------------------------- vision

typedef struct {
    float *x_in, *mean1, *rstd1, *h1, *q, *k, *v, *att, *lse, *x_mid, *mean2, *rstd2, *h2, *f1, *a1, *x_out;
    LinearCache cq, ck, cv, co, c1, c2;
} VisionActs;

// x_in [N = n*T, C] -> x_out
static int vision_layer_forward(Pass *p, const VisionLayer *layer, VisionActs *a, const float *x_in, int n, int T) {
    const VisionConfig *vc = &p->m->config.vision;
    int N = n * T, C = vc->hidden_size, H = vc->num_attention_heads, D = C / H, F = vc->intermediate_size;
    a->x_in = (float *)x_in;
    a->mean1 = buf(p, N), a->rstd1 = buf(p, N), a->h1 = buf(p, (size_t)N * C);
    a->q = buf(p, (size_t)N * C), a->k = buf(p, (size_t)N * C), a->v = buf(p, (size_t)N * C);
    a->att = buf(p, (size_t)N * C), a->lse = buf(p, (size_t)n * H * T), a->x_mid = buf(p, (size_t)N * C);
    a->mean2 = buf(p, N), a->rstd2 = buf(p, N), a->h2 = buf(p, (size_t)N * C);
    a->f1 = buf(p, (size_t)N * F), a->a1 = buf(p, (size_t)N * F);
    a->x_out = p->out ? p->out : buf(p, (size_t)N * C);
    if (p->m->tape.failed) return -1;
    layernorm_forward(a->h1, a->mean1, a->rstd1, x_in, layer->ln1_w->data, layer->ln1_b->data, N, C, (float)vc->layer_norm_eps);
    lin(p, &layer->q, a->q, a->h1, N, &a->cq);
    lin(p, &layer->k, a->k, a->h1, N, &a->ck);
    lin(p, &layer->v, a->v, a->h1, N, &a->cv);
    attention_forward(a->att, a->lse, a->q, a->k, a->v, NULL, n, T, H, H, D, 0, 1.0f / sqrtf((float)D));
    lin(p, &layer->o, a->x_mid, a->att, N, &a->co);
    kernel_add(a->x_mid, x_in, (size_t)N * C);
    layernorm_forward(a->h2, a->mean2, a->rstd2, a->x_mid, layer->ln2_w->data, layer->ln2_b->data, N, C, (float)vc->layer_norm_eps);
    lin(p, &layer->fc1, a->f1, a->h2, N, &a->c1);
    activation_forward(a->a1, a->f1, (size_t)N * F, p->m->vision_act);
    lin(p, &layer->fc2, a->x_out, a->a1, N, &a->c2);
    kernel_add(a->x_out, a->x_mid, (size_t)N * C);
    return p->m->tape.failed ? -1 : 0;
}

// dx_out [N,C] -> dx_in (may be NULL when not needed).
static void vision_layer_backward(LlavaModel *m, const VisionLayer *layer, const VisionActs *a, float *dx_in,
                                  const float *dx_out, int n, int T) {
    const VisionConfig *vc = &m->config.vision;
    int N = n * T, C = vc->hidden_size, H = vc->num_attention_heads, D = C / H, F = vc->intermediate_size;
    Tape *t = &m->tape;
    float *da = tape_scratch(t, (size_t)N * F);
    float *dh = tape_scratch(t, (size_t)N * C);
    float *dmid = tape_scratch(t, (size_t)N * C);
    float *dq = tape_scratch(t, (size_t)N * C), *dk = tape_scratch(t, (size_t)N * C), *dv = tape_scratch(t, (size_t)N * C);
    float *datt = tape_scratch(t, (size_t)N * C);
    if (!t->failed) {
        linear_module_backward(&layer->fc2, da, 0, dx_out, a->a1, N, &a->c2, t);
        activation_backward(da, da, a->f1, (size_t)N * F, m->vision_act);
        linear_module_backward(&layer->fc1, dh, 0, da, a->h2, N, &a->c1, t);
        layernorm_backward(dmid, layer->ln2_w->grad, layer->ln2_b->grad, dh, a->x_mid, a->mean2, a->rstd2, layer->ln2_w->data, N, C);
        kernel_add(dmid, dx_out, (size_t)N * C);
        linear_module_backward(&layer->o, datt, 0, dmid, a->att, N, &a->co, t);
        attention_backward(dq, dk, dv, datt, a->att, a->lse, a->q, a->k, a->v, NULL, n, T, H, H, D, 0, 1.0f / sqrtf((float)D));
        // dh1 (gradient at LayerNorm 1's output) is needed for dx_in or LN1's own weights.
        float *dh1 = (dx_in || layer->ln1_w->grad || layer->ln1_b->grad) ? dh : NULL;
        linear_module_backward(&layer->q, dh1, 0, dq, a->h1, N, &a->cq, t);
        linear_module_backward(&layer->k, dh1, 1, dk, a->h1, N, &a->ck, t);
        linear_module_backward(&layer->v, dh1, 1, dv, a->h1, N, &a->cv, t);
        if (dh1) {
            layernorm_backward(dx_in, layer->ln1_w->grad, layer->ln1_b->grad, dh1, a->x_in, a->mean1, a->rstd1,
                               layer->ln1_w->data, N, C);
            if (dx_in) kernel_add(dx_in, dmid, (size_t)N * C);
        }
    }
    tape_release_scratch(t, da, (size_t)N * F);
    tape_release_scratch(t, dh, (size_t)N * C);
    tape_release_scratch(t, dmid, (size_t)N * C);
    tape_release_scratch(t, dq, (size_t)N * C);
    tape_release_scratch(t, dk, (size_t)N * C);
    tape_release_scratch(t, dv, (size_t)N * C);
    tape_release_scratch(t, datt, (size_t)N * C);
}

typedef struct {
    float *patches, *patch_embeds, *embeds, *mean0, *rstd0, *x0;
    VisionActs *layers;
    Rng *layer_rng;   // checkpointing: dropout stream before each layer (NULL = not checkpointed)
    float *features;  // [n*P', C]
} VisionState;

// Checkpointed forward of vision layer i: only x_in (kept by the caller) and
// the output (kept here) survive.
static int vision_layer_forward_checkpointed(LlavaModel *m, VisionState *s, int i, const float *x_in, int n, int T) {
    s->layer_rng[i] = m->dropout_rng;
    Pass sp = {.m = m, .keep = 0, .vision = 1, .training = 1,
               .out = tape_keep(&m->tape, (size_t)n * T * m->config.vision.hidden_size, 1)};
    if (sp.out == NULL) return -1;
    int rc = vision_layer_forward(&sp, &m->vision_layers[i], &s->layers[i], x_in, n, T);
    end_layer(&sp, NULL);
    return rc;
}

// Recomputes vision layer i's activations on the tape from its kept input
// with the dropout masks of the first forward.
static int vision_layer_recompute(LlavaModel *m, VisionState *s, int i, int n, int T) {
    Rng after = m->dropout_rng;
    m->dropout_rng = s->layer_rng[i];
    const float *x_in = s->layers[i].x_in;
    memset(&s->layers[i], 0, sizeof s->layers[i]);
    Pass rp = {.m = m, .keep = 1, .vision = 1, .training = 1};
    int rc = vision_layer_forward(&rp, &m->vision_layers[i], &s->layers[i], x_in, n, T);
    m->dropout_rng = after;
    return rc;
}

static int vision_forward(Pass *p, VisionState *s, const float *pixels, int n) {
    LlavaModel *m = p->m;
    const VisionConfig *vc = &m->config.vision;
    int S = vc->image_size, ps = vc->patch_size, G = S / ps, P = G * G, T = P + 1, C = vc->hidden_size;
    int K = vc->num_channels * ps * ps;
    int full = strcmp(m->config.vision_feature_select_strategy, "full") == 0;
    s->patches = buf(p, (size_t)n * P * K);
    s->patch_embeds = buf(p, (size_t)n * P * C);
    s->embeds = buf(p, (size_t)n * T * C);
    s->mean0 = buf(p, (size_t)n * T), s->rstd0 = buf(p, (size_t)n * T);
    s->x0 = buf(p, (size_t)n * T * C);
    if (m->tape.failed) return -1;
    if (llava_hook(m, LLAVA_BEFORE_FORWARD, LLAVA_VISION_EMBED, 0) != 0) return -1;
    patches_from_pixels(s->patches, pixels, n, vc->num_channels, S, ps);
    weight_linear_forward(m->patch_embedding, NULL, s->patch_embeds, s->patches, n * P, K, C);
    vision_embed_forward(s->embeds, s->patch_embeds, m->class_embedding->data, m->position_embedding->data, n, P, C);
    layernorm_forward(s->x0, s->mean0, s->rstd0, s->embeds, m->pre_ln_w->data, m->pre_ln_b->data, n * T, C,
                      (float)vc->layer_norm_eps);
    if (llava_hook(m, LLAVA_AFTER_FORWARD, LLAVA_VISION_EMBED, 0) != 0) return -1;
    float *x = s->x0;
    if (!p->keep) end_layer(p, x);
    for (int i = 0; i < m->vision_layers_run; i++) {
        if (llava_hook(m, LLAVA_BEFORE_FORWARD, LLAVA_VISION_LAYER, i) != 0) return -1;
        if (s->layer_rng) {
            if (vision_layer_forward_checkpointed(m, s, i, x, n, T) != 0) return -1;
        } else if (vision_layer_forward(p, &m->vision_layers[i], &s->layers[i], x, n, T) != 0) return -1;
        if (llava_hook(m, LLAVA_AFTER_FORWARD, LLAVA_VISION_LAYER, i) != 0) return -1;
        float *next = s->layers[i].x_out;
        if (!p->keep) {
            end_layer(p, next);
            tape_release_scratch(&m->tape, x, (size_t)n * T * C);
        }
        x = next;
    }
    int Pf = full ? T : P;
    // Features always survive the tower (the projector reads them).
    s->features = p->keep ? tape_keep(&m->tape, (size_t)n * Pf * C, 1) : tape_scratch(&m->tape, (size_t)n * Pf * C);
    if (s->features == NULL) return -1;
    if (full) kernel_copy(s->features, x, (size_t)n * T * C);
    else drop_first_row(s->features, x, n, P, C);
    if (!p->keep) tape_release_scratch(&m->tape, x, (size_t)n * T * C);
    return 0;
}

static void vision_backward(LlavaModel *m, VisionState *s, const float *dfeatures, int n) {
    const VisionConfig *vc = &m->config.vision;
    int S = vc->image_size, ps = vc->patch_size, G = S / ps, P = G * G, T = P + 1, C = vc->hidden_size;
    int K = vc->num_channels * ps * ps;
    int full = strcmp(m->config.vision_feature_select_strategy, "full") == 0;
    Tape *t = &m->tape;
    size_t nx = (size_t)n * T * C;
    float *dx = tape_scratch(t, nx), *dprev = tape_scratch(t, nx);
    if (t->failed) goto done;
    if (full) kernel_copy(dx, dfeatures, nx);
    else drop_first_row_backward(dx, dfeatures, n, P, C);
    int embeds_trainable = m->patch_embedding->trainable || m->class_embedding->trainable ||
                           m->position_embedding->trainable || m->pre_ln_w->trainable || m->pre_ln_b->trainable;
    for (int i = m->vision_layers_run - 1; i >= 0; i--) {
        int need_dx = i > 0 || embeds_trainable;
        int mark = tape_mark(t);
        llava_hook(m, LLAVA_BEFORE_BACKWARD, LLAVA_VISION_LAYER, i);  // (a failure sets t->failed)
        if (s->layer_rng && vision_layer_recompute(m, s, i, n, T) != 0) goto done;
        vision_layer_backward(m, &m->vision_layers[i], &s->layers[i], need_dx ? dprev : NULL, dx, n, T);
        llava_hook(m, LLAVA_AFTER_BACKWARD, LLAVA_VISION_LAYER, i);
        tape_release_to(t, mark);
        float *swap = dx;
        dx = dprev;
        dprev = swap;
    }
    llava_hook(m, LLAVA_BEFORE_BACKWARD, LLAVA_VISION_EMBED, 0);
    if (embeds_trainable && !t->failed) {
        float *dembeds = dprev;  // free buffer
        layernorm_backward(dembeds, m->pre_ln_w->grad, m->pre_ln_b->grad, dx, s->embeds, s->mean0, s->rstd0,
                           m->pre_ln_w->data, n * T, C);
        float *dpatch = tape_scratch(t, (size_t)n * P * C);
        if (dpatch) {
            vision_embed_backward(dpatch, m->class_embedding->grad, m->position_embedding->grad, dembeds, n, P, C);
            if (m->patch_embedding->grad)
                weight_linear_backward(m->patch_embedding, NULL, 0, NULL, dpatch, s->patches, n * P, K, C);
            tape_release_scratch(t, dpatch, (size_t)n * P * C);
        }
    }
    llava_hook(m, LLAVA_AFTER_BACKWARD, LLAVA_VISION_EMBED, 0);
done:
    tape_release_scratch(t, dx, nx);
    tape_release_scratch(t, dprev, nx);
}

// ------------------------------------------------------------- projector

typedef struct {
    float *in, *a1, *mean2, *rstd2, *n2, *g, *a3, *mean4, *rstd4, *out;
    LinearCache c1, c3;
} ProjectorActs;

// in [M, Cv] -> out [M, C]
static int projector_forward(Pass *p, ProjectorActs *a, const float *in, int M) {
    LlavaModel *m = p->m;
    int C = m->config.text.hidden_size;
    a->in = (float *)in;
    a->a1 = buf(p, (size_t)M * C), a->g = buf(p, (size_t)M * C);
    a->out = p->keep ? buf(p, (size_t)M * C) : tape_scratch(&m->tape, (size_t)M * C);
    if (m->projector == PROJECTOR_YIVL) {
        a->mean2 = buf(p, M), a->rstd2 = buf(p, M), a->n2 = buf(p, (size_t)M * C);
        a->a3 = buf(p, (size_t)M * C), a->mean4 = buf(p, M), a->rstd4 = buf(p, M);
    }
    if (m->tape.failed) return -1;
    lin(p, &m->proj1, a->a1, in, M, &a->c1);
    if (m->projector == PROJECTOR_YIVL) {
        // linear_1 -> LayerNorm -> act -> linear_3 -> LayerNorm (eps 1e-5, torch default)
        layernorm_forward(a->n2, a->mean2, a->rstd2, a->a1, m->proj_ln2_w->data, m->proj_ln2_b->data, M, C, 1e-5f);
        activation_forward(a->g, a->n2, (size_t)M * C, m->projector_act);
        lin(p, &m->proj3, a->a3, a->g, M, &a->c3);
        layernorm_forward(a->out, a->mean4, a->rstd4, a->a3, m->proj_ln4_w->data, m->proj_ln4_b->data, M, C, 1e-5f);
    } else {
        activation_forward(a->g, a->a1, (size_t)M * C, m->projector_act);
        lin(p, &m->proj3, a->out, a->g, M, &a->c3);
    }
    if (!p->keep) end_layer(p, NULL);
    return 0;
}

// dout [M, C] -> din [M, Cv] (NULL when the tower does not train).
static void projector_backward(LlavaModel *m, const ProjectorActs *a, float *din, const float *dout, int M) {
    int C = m->config.text.hidden_size;
    Tape *t = &m->tape;
    float *d1 = tape_scratch(t, (size_t)M * C), *d2 = tape_scratch(t, (size_t)M * C);
    if (t->failed) goto done;
    if (m->projector == PROJECTOR_YIVL) {
        layernorm_backward(d1, m->proj_ln4_w->grad, m->proj_ln4_b->grad, dout, a->a3, a->mean4, a->rstd4,
                           m->proj_ln4_w->data, M, C);
        linear_module_backward(&m->proj3, d2, 0, d1, a->g, M, &a->c3, t);
        activation_backward(d2, d2, a->n2, (size_t)M * C, m->projector_act);
        layernorm_backward(d1, m->proj_ln2_w->grad, m->proj_ln2_b->grad, d2, a->a1, a->mean2, a->rstd2,
                           m->proj_ln2_w->data, M, C);
    } else {
        linear_module_backward(&m->proj3, d2, 0, dout, a->g, M, &a->c3, t);
        activation_backward(d1, d2, a->a1, (size_t)M * C, m->projector_act);
    }
    linear_module_backward(&m->proj1, din, 0, d1, a->in, M, &a->c1, t);
done:
    tape_release_scratch(t, d1, (size_t)M * C);
    tape_release_scratch(t, d2, (size_t)M * C);
}

// -------------------------------------------------------------- language

typedef struct {
    float *x_in, *rstd1, *h1, *q, *k, *v, *att, *lse, *x_mid, *rstd2, *h2, *gate, *up, *act, *x_out;
    // The per-row half (o_proj, residual, norm2, MLP) runs on R rows: all N,
    // or (rows != NULL) the listed ones, whose attention output is att_rows.
    const int32_t *rows;
    int R;
    float *att_rows;
    LinearCache cq, ck, cv, co, cg, cu, cd;
} TextActs;

// x_in [N = B*L, C] -> x_out [R, C].
// The attention half (norm1, q/k/v, RoPE, attention) runs on all N rows. The
// per-row half runs on all of them too (rows == NULL, R == N), or only on
// the R rows listed in rows, and x_out then holds just those rows in that
// order. The last layer's output matters only at rows that predict a label,
// so that layer's per-row half (o_proj and the MLP, most of its products)
// runs on those rows alone; the result at them is the same.
static int text_layer_forward(Pass *p, const TextLayer *layer, TextActs *a, const float *x_in, const int32_t *mask,
                              int B, int L, const int32_t *rows, int R) {
    const TextConfig *tc = &p->m->config.text;
    int N = B * L, C = tc->hidden_size, Hq = tc->num_attention_heads, Hkv = tc->num_key_value_heads, D = tc->head_dim;
    int F = tc->intermediate_size;
    float eps = (float)tc->rms_norm_eps;
    if (rows == NULL) R = N;
    a->x_in = (float *)x_in;
    a->rows = rows, a->R = R;
    a->rstd1 = buf(p, N), a->h1 = buf(p, (size_t)N * C);
    a->q = buf(p, (size_t)N * Hq * D), a->k = buf(p, (size_t)N * Hkv * D), a->v = buf(p, (size_t)N * Hkv * D);
    a->att = buf(p, (size_t)N * Hq * D), a->lse = buf(p, (size_t)B * Hq * L);
    a->att_rows = rows ? buf(p, (size_t)R * Hq * D) : NULL;
    a->x_mid = buf(p, (size_t)R * C), a->rstd2 = buf(p, R), a->h2 = buf(p, (size_t)R * C);
    a->gate = buf(p, (size_t)R * F), a->up = buf(p, (size_t)R * F), a->act = buf(p, (size_t)R * F);
    a->x_out = p->out ? p->out : buf(p, (size_t)R * C);
    if (p->m->tape.failed) return -1;
    rmsnorm_forward(a->h1, a->rstd1, x_in, layer->norm1->data, N, C, eps);
    lin(p, &layer->q, a->q, a->h1, N, &a->cq);
    lin(p, &layer->k, a->k, a->h1, N, &a->ck);
    lin(p, &layer->v, a->v, a->h1, N, &a->cv);
    rope_forward(a->q, B, L, Hq, D, (float)tc->rope_theta);
    rope_forward(a->k, B, L, Hkv, D, (float)tc->rope_theta);
    attention_forward(a->att, a->lse, a->q, a->k, a->v, mask, B, L, Hq, Hkv, D, 1, 1.0f / sqrtf((float)D));
    if (rows) {
        rows_gather(a->att_rows, a->att, rows, R, Hq * D);
        lin(p, &layer->o, a->x_mid, a->att_rows, R, &a->co);
        rows_gather(a->x_out, x_in, rows, R, C);  // x_out holds the residual rows until the MLP writes it
        kernel_add(a->x_mid, a->x_out, (size_t)R * C);
    } else {
        lin(p, &layer->o, a->x_mid, a->att, N, &a->co);
        kernel_add(a->x_mid, x_in, (size_t)N * C);
    }
    rmsnorm_forward(a->h2, a->rstd2, a->x_mid, layer->norm2->data, R, C, eps);
    lin(p, &layer->gate, a->gate, a->h2, R, &a->cg);
    lin(p, &layer->up, a->up, a->h2, R, &a->cu);
    swiglu_forward(a->act, a->gate, a->up, (size_t)R * F);
    lin(p, &layer->down, a->x_out, a->act, R, &a->cd);
    kernel_add(a->x_out, a->x_mid, (size_t)R * C);
    return p->m->tape.failed ? -1 : 0;
}

// dx_out [R, C] (the rows text_layer_forward output) -> dx_in [N, C]
// (overwritten; NULL when not needed) and the layer's trainable gradients.
static void text_layer_backward(LlavaModel *m, const TextLayer *layer, const TextActs *a, float *dx_in,
                                const float *dx_out, const int32_t *mask, int B, int L) {
    const TextConfig *tc = &m->config.text;
    int N = B * L, C = tc->hidden_size, Hq = tc->num_attention_heads, Hkv = tc->num_key_value_heads, D = tc->head_dim;
    int F = tc->intermediate_size, R = a->R;
    Tape *t = &m->tape;
    float *dact = tape_scratch(t, (size_t)R * F), *dgate = tape_scratch(t, (size_t)R * F), *dup = tape_scratch(t, (size_t)R * F);
    float *dh = tape_scratch(t, (size_t)N * C), *dmid = tape_scratch(t, (size_t)R * C);
    float *datt = tape_scratch(t, (size_t)N * Hq * D), *dq = tape_scratch(t, (size_t)N * Hq * D);
    float *dk = tape_scratch(t, (size_t)N * Hkv * D), *dv = tape_scratch(t, (size_t)N * Hkv * D);
    float *datt_rows = a->rows ? tape_scratch(t, (size_t)R * Hq * D) : NULL;
    if (!t->failed) {
        linear_module_backward(&layer->down, dact, 0, dx_out, a->act, R, &a->cd, t);
        swiglu_backward(dgate, dup, dact, a->gate, a->up, (size_t)R * F);
        linear_module_backward(&layer->gate, dh, 0, dgate, a->h2, R, &a->cg, t);
        linear_module_backward(&layer->up, dh, 1, dup, a->h2, R, &a->cu, t);
        rmsnorm_backward(dmid, layer->norm2->grad, dh, a->x_mid, a->rstd2, layer->norm2->data, R, C);
        kernel_add(dmid, dx_out, (size_t)R * C);
        if (a->rows) {
            // Rows the per-row half skipped pass no gradient into the attention output.
            linear_module_backward(&layer->o, datt_rows, 0, dmid, a->att_rows, R, &a->co, t);
            kernel_zero(datt, (size_t)N * Hq * D);
            rows_scatter(datt, a->rows, datt_rows, R, Hq * D);
        } else linear_module_backward(&layer->o, datt, 0, dmid, a->att, N, &a->co, t);
        attention_backward(dq, dk, dv, datt, a->att, a->lse, a->q, a->k, a->v, mask, B, L, Hq, Hkv, D, 1,
                           1.0f / sqrtf((float)D));
        rope_backward(dq, B, L, Hq, D, (float)tc->rope_theta);
        rope_backward(dk, B, L, Hkv, D, (float)tc->rope_theta);
        float *dh1 = (dx_in || layer->norm1->grad) ? dh : NULL;
        linear_module_backward(&layer->q, dh1, 0, dq, a->h1, N, &a->cq, t);
        linear_module_backward(&layer->k, dh1, 1, dk, a->h1, N, &a->ck, t);
        linear_module_backward(&layer->v, dh1, 1, dv, a->h1, N, &a->cv, t);
        if (dh1) {
            rmsnorm_backward(dx_in, layer->norm1->grad, dh, a->x_in, a->rstd1, layer->norm1->data, N, C);
            if (dx_in && a->rows) rows_scatter_add(dx_in, a->rows, dmid, R, C);
            else if (dx_in) kernel_add(dx_in, dmid, (size_t)N * C);
        }
    }
    tape_release_scratch(t, datt_rows, datt_rows ? (size_t)R * Hq * D : 0);
    tape_release_scratch(t, dact, (size_t)R * F);
    tape_release_scratch(t, dgate, (size_t)R * F);
    tape_release_scratch(t, dup, (size_t)R * F);
    tape_release_scratch(t, dh, (size_t)N * C);
    tape_release_scratch(t, dmid, (size_t)R * C);
    tape_release_scratch(t, datt, (size_t)N * Hq * D);
    tape_release_scratch(t, dq, (size_t)N * Hq * D);
    tape_release_scratch(t, dk, (size_t)N * Hkv * D);
    tape_release_scratch(t, dv, (size_t)N * Hkv * D);
}

// Checkpointed forward of a text layer: only x_in (kept by the caller) and
// the output (kept here) survive; *rng_before saves the dropout stream.
static int text_layer_forward_checkpointed(LlavaModel *m, const TextLayer *layer, TextActs *a, Rng *rng_before,
                                           const float *x_in, const int32_t *mask, int B, int L, const int32_t *rows,
                                           int R) {
    *rng_before = m->dropout_rng;
    Pass sp = {.m = m, .keep = 0, .vision = 0, .training = 1,
               .out = tape_keep(&m->tape, (size_t)(rows ? R : B * L) * m->config.text.hidden_size, 0)};
    if (sp.out == NULL) return -1;
    int rc = text_layer_forward(&sp, layer, a, x_in, mask, B, L, rows, R);
    end_layer(&sp, NULL);
    return rc;
}

// Recomputes a text layer's activations on the tape from its kept input with
// the dropout masks of the first forward.
static int text_layer_recompute(LlavaModel *m, const TextLayer *layer, TextActs *a, const Rng *rng_before,
                                const int32_t *mask, int B, int L) {
    Rng after = m->dropout_rng;
    m->dropout_rng = *rng_before;
    const float *x_in = a->x_in;
    const int32_t *rows = a->rows;
    int R = a->R;
    memset(a, 0, sizeof *a);
    Pass rp = {.m = m, .keep = 1, .vision = 0, .training = 1};
    int rc = text_layer_forward(&rp, layer, a, x_in, mask, B, L, rows, R);
    m->dropout_rng = after;
    return rc;
}

// ------------------------------------------------------------ the model

static int check_batch(const LlavaModel *m, const LlavaBatch *b, int *image_rows_out, Error *err) {
    const ModelConfig *c = &m->config;
    if (b->batch_size <= 0 || b->seq_len <= 0) return error_set(err, "batch: empty batch (B=%d, L=%d)", b->batch_size, b->seq_len);
    int N = b->batch_size * b->seq_len, image_rows = 0;
    for (int i = 0; i < N; i++) {
        int id = b->input_ids[i];
        if (c->has_vision && id == c->image_token_index) image_rows++;
        else if (id < 0 || id >= c->text.vocab_size)
            return error_set(err, "batch: token id %d at position %d is outside the vocabulary (%d)", id, i, c->text.vocab_size);
        if (b->labels && b->labels[i] != KERNEL_IGNORE_INDEX && (b->labels[i] < 0 || b->labels[i] >= c->text.vocab_size))
            return error_set(err, "batch: label %d at position %d is outside the vocabulary (%d)", b->labels[i], i,
                             c->text.vocab_size);
    }
    int per_image = 0;
    if (c->has_vision) {
        int G = c->vision.image_size / c->vision.patch_size;
        per_image = G * G + (strcmp(c->vision_feature_select_strategy, "full") == 0 ? 1 : 0);
    }
    if (image_rows != b->n_images * per_image)
        return error_set(err, "batch: %d image tokens for %d images (%d tokens each expected)", image_rows, b->n_images,
                         per_image);
    if (b->n_images > 0 && b->pixel_values == NULL) return error_set(err, "batch: images without pixel_values");
    *image_rows_out = image_rows;
    return 0;
}

void llava_batch_positions(const LlavaModel *m, const LlavaBatch *b, int32_t *image_index, uint8_t *is_image,
                           int32_t *targets) {
    const ModelConfig *c = &m->config;
    int B = b->batch_size, L = b->seq_len, N = B * L;
    for (int i = 0, k = 0; i < N; i++) {
        is_image[i] = c->has_vision && b->input_ids[i] == c->image_token_index;
        if (is_image[i]) image_index[k++] = i;
    }
    // Shifted labels: position t predicts labels[t + 1]; the last of each row predicts nothing.
    for (int bi = 0; bi < B; bi++)
        for (int ti = 0; ti < L; ti++)
            targets[bi * L + ti] = (ti + 1 < L && b->labels) ? b->labels[bi * L + ti + 1] : KERNEL_IGNORE_INDEX;
}

typedef enum { RUN_TRAIN, RUN_LOSS, RUN_LOGITS } RunMode;

static int run(LlavaModel *m, const LlavaBatch *b, RunMode mode, float grad_scale, double *loss_out, int *count_out,
               float *logits_out, Error *err) {
    const ModelConfig *c = &m->config;
    const TextConfig *tc = &c->text;
    int image_rows = 0;
    if (check_batch(m, b, &image_rows, err) != 0) return -1;
#ifdef VLFT_CUDA
    if (m->cuda) return llava_cuda_run(m, b, (int)mode, grad_scale, image_rows, loss_out, count_out, logits_out, err);
#endif
    int B = b->batch_size, L = b->seq_len, N = B * L, C = tc->hidden_size, V = tc->vocab_size;
    int train = mode == RUN_TRAIN;
    int checkpoint = train && m->options.gradient_checkpointing;
    Tape *t = &m->tape;
    tape_clear(t);
    t->peak = 0;
    t->failed = 0;
    m->hook_failed = 0;
    int rc = -1;
    // Step bookkeeping lives in the arena too (gone at tape_clear): a step allocates nothing.
    int32_t *image_index = tape_step_bytes(t, sizeof(int32_t) * (size_t)(image_rows + 1));
    uint8_t *is_image = tape_step_bytes(t, (size_t)N);
    int32_t *targets = tape_step_bytes(t, sizeof(int32_t) * (size_t)N);
    int32_t *row_index = NULL;
    VisionState vs = {0};
    ProjectorActs pa = {0};
    TextActs *ta = tape_step_bytes(t, sizeof(TextActs) * ((size_t)tc->num_hidden_layers + 1));
    Rng *text_rng = checkpoint ? tape_step_bytes(t, sizeof(Rng) * ((size_t)tc->num_hidden_layers + 1)) : NULL;
    float *features = NULL, *x = NULL, *xf = NULL, *rstdf = NULL, *logits = NULL, *lse = NULL;
    int features_scratch = 0;
    size_t features_n = 0, vision_features_n = 0, kept_forward = 0, kept_vision_forward = 0;
    int vision_features_scratch = 0, forward_done = 0;
    if (!image_index || !is_image || !targets || !ta || (checkpoint && !text_rng)) goto oom;
    memset(ta, 0, sizeof(TextActs) * ((size_t)tc->num_hidden_layers + 1));
    llava_batch_positions(m, b, image_index, is_image, targets);

    int projector_keep = train && (m->projector_trainable || m->vision_trainable);
    if (b->n_images > 0) {
        Pass vp = {.m = m, .keep = train && m->vision_trainable, .vision = 1, .training = train};
        vs.layers = tape_step_bytes(t, sizeof(VisionActs) * ((size_t)m->vision_layers_run + 1));
        if (!vs.layers) goto oom;
        memset(vs.layers, 0, sizeof(VisionActs) * ((size_t)m->vision_layers_run + 1));
        if (checkpoint && vp.keep) {
            vs.layer_rng = tape_step_bytes(t, sizeof(Rng) * ((size_t)m->vision_layers_run + 1));
            if (!vs.layer_rng) goto oom;
        }
        if (vision_forward(&vp, &vs, b->pixel_values, b->n_images) != 0) goto oom;
        Pass pp = {.m = m, .keep = projector_keep, .vision = 0, .training = train};
        if (llava_hook(m, LLAVA_BEFORE_FORWARD, LLAVA_PROJECTOR, 0) != 0) goto oom;
        if (projector_forward(&pp, &pa, vs.features, image_rows) != 0) goto oom;
        if (llava_hook(m, LLAVA_AFTER_FORWARD, LLAVA_PROJECTOR, 0) != 0) goto oom;
        features = pa.out;
        features_n = (size_t)image_rows * C;
        features_scratch = !projector_keep;
        vision_features_n = (size_t)image_rows * c->vision.hidden_size;
        vision_features_scratch = !vp.keep;
        if (!vp.keep && !projector_keep) {
            // Neither tower nor projector trains: the tower's output can go now.
            tape_release_scratch(t, vs.features, vision_features_n);
            vs.features = NULL;
        }
    }
    Pass lp = {.m = m, .keep = train, .vision = 0, .training = train};
    x = buf(&lp, (size_t)N * C);
    if (!x) goto oom;
    if (!train) lp.scratch.count = 0;  // x is freed by hand below
    if (llava_hook(m, LLAVA_BEFORE_FORWARD, LLAVA_TEXT_EMBED, 0) != 0) goto oom;
    weight_embedding_forward(m->embed_tokens, x, b->input_ids, is_image, N, C);
    if (llava_hook(m, LLAVA_AFTER_FORWARD, LLAVA_TEXT_EMBED, 0) != 0) goto oom;
    if (image_rows) rows_scatter(x, image_index, features, image_rows, C);
    if (features_scratch) {
        tape_release_scratch(t, features, features_n);
        features = NULL;
    }
    // Only rows that predict a label need logits (prompt, image and padding
    // rows do not), unless the caller asked for them all. Those rows alone
    // go through the last layer's per-row half, the final norm and the
    // lm_head: most of that work, and the results at those rows are the same.
    int count = 0;
    for (int i = 0; i < N; i++) count += targets[i] != KERNEL_IGNORE_INDEX;
    int trim = !logits_out && count < N;
    int rows = trim ? count : N;  // rows of the last layer's output, the final norm and the logits
    int32_t *row_targets = targets;
    if (trim) {
        row_index = tape_step_bytes(t, sizeof(int32_t) * (size_t)(rows + 1));
        row_targets = tape_step_bytes(t, sizeof(int32_t) * (size_t)(rows + 1));
        if (!row_index || !row_targets) goto oom;
        for (int i = 0, k = 0; i < N; i++)
            if (targets[i] != KERNEL_IGNORE_INDEX) {
                row_index[k] = i;
                row_targets[k++] = targets[i];
            }
    }
    float *h = x;
    size_t h_n = (size_t)N * C;
    for (int i = 0; i < tc->num_hidden_layers; i++) {
        int last = i == tc->num_hidden_layers - 1;
        const int32_t *layer_rows = last ? row_index : NULL;
        if (llava_hook(m, LLAVA_BEFORE_FORWARD, LLAVA_TEXT_LAYER, i) != 0) goto oom;
        if (checkpoint) {
            if (text_layer_forward_checkpointed(m, &m->text_layers[i], &ta[i], &text_rng[i], h, b->attention_mask, B,
                                                L, layer_rows, rows) != 0)
                goto oom;
        } else if (text_layer_forward(&lp, &m->text_layers[i], &ta[i], h, b->attention_mask, B, L, layer_rows, rows) != 0)
            goto oom;
        if (llava_hook(m, LLAVA_AFTER_FORWARD, LLAVA_TEXT_LAYER, i) != 0) goto oom;
        float *next = ta[i].x_out;
        if (!train) {
            end_layer(&lp, next);
            tape_release_scratch(t, h, h_n);
        }
        h = next;
        h_n = (size_t)ta[i].R * C;
    }
    xf = buf(&lp, (size_t)rows * C), rstdf = buf(&lp, rows);
    if (!xf || !rstdf) goto oom;
    if (llava_hook(m, LLAVA_BEFORE_FORWARD, LLAVA_HEAD, 0) != 0) goto oom;
    rmsnorm_forward(xf, rstdf, h, m->final_norm->data, rows, C, (float)tc->rms_norm_eps);
    logits = logits_out ? logits_out : tape_scratch(t, (size_t)rows * V);
    lse = tape_scratch(t, rows);
    if (!logits || !lse) goto oom;
    LinearCache head_cache = {0};
    lin(&lp, &m->lm_head, logits, xf, rows, &head_cache);
    if (t->failed) goto oom;
    if (llava_hook(m, LLAVA_AFTER_FORWARD, LLAVA_HEAD, 0) != 0) goto oom;
    double total = cross_entropy_forward(lse, logits, row_targets, rows, V);
    double loss = count ? total / count : 0.0;
    if (loss_out) *loss_out = loss;
    if (count_out) *count_out = count;
    // What the backward starts from (with checkpointing: layer inputs, not layer activations).
    kept_forward = t->kept, kept_vision_forward = t->kept_vision, forward_done = 1;
    if (!train) {
        if (!logits_out) tape_release_scratch(t, logits, (size_t)rows * V);
        tape_release_scratch(t, lse, rows);
        end_layer(&lp, NULL);
        tape_release_scratch(t, h, h_n);
        rc = 0;
        goto done;
    }
    // ---- backward
    cross_entropy_backward(logits, lse, row_targets, rows, V, count ? grad_scale / (float)count : 0.0f);
    tape_release_scratch(t, lse, rows);
    lse = NULL;
    // dh, dprev: a layer's output and input gradients, [rows, C] after the last layer, then [N, C].
    float *dh = tape_scratch(t, (size_t)N * C), *dprev = tape_scratch(t, (size_t)N * C);
    if (!dh || !dprev) goto oom;
    float *dxf = dprev;
    if (llava_hook(m, LLAVA_BEFORE_BACKWARD, LLAVA_HEAD, 0) != 0) goto oom;
    linear_module_backward(&m->lm_head, dxf, 0, logits, xf, rows, &head_cache, t);
    tape_release_scratch(t, logits, (size_t)rows * V);
    logits = NULL;
    rmsnorm_backward(dh, m->final_norm->grad, dxf, h, rstdf, m->final_norm->data, rows, C);
    if (llava_hook(m, LLAVA_AFTER_BACKWARD, LLAVA_HEAD, 0) != 0) goto oom;
    int need_input_grad = m->embed_trainable || (image_rows && projector_keep);
    for (int i = tc->num_hidden_layers - 1; i >= 0; i--) {
        int need = i > 0 || need_input_grad;
        int mark = tape_mark(t);
        if (llava_hook(m, LLAVA_BEFORE_BACKWARD, LLAVA_TEXT_LAYER, i) != 0) goto oom;
        if (checkpoint && text_layer_recompute(m, &m->text_layers[i], &ta[i], &text_rng[i], b->attention_mask, B, L) != 0)
            goto oom;
        text_layer_backward(m, &m->text_layers[i], &ta[i], need ? dprev : NULL, dh, b->attention_mask, B, L);
        if (llava_hook(m, LLAVA_AFTER_BACKWARD, LLAVA_TEXT_LAYER, i) != 0) goto oom;
        tape_release_to(t, mark);
        float *swap = dh;
        dh = dprev;
        dprev = swap;
    }
    if (t->failed) goto oom;
    // dh: gradient of the merged embeddings.
    if (llava_hook(m, LLAVA_BEFORE_BACKWARD, LLAVA_TEXT_EMBED, 0) != 0) goto oom;
    if (m->embed_tokens->grad) embedding_backward(m->embed_tokens->grad, dh, b->input_ids, is_image, N, C);
    if (llava_hook(m, LLAVA_AFTER_BACKWARD, LLAVA_TEXT_EMBED, 0) != 0) goto oom;
    if (image_rows && projector_keep) {
        float *dfeat = tape_scratch(t, (size_t)image_rows * C);
        if (!dfeat) goto oom;
        rows_gather(dfeat, dh, image_index, image_rows, C);
        float *dvis = NULL;
        size_t nvis = (size_t)image_rows * c->vision.hidden_size;
        if (m->vision_trainable) dvis = tape_scratch(t, nvis);
        if (llava_hook(m, LLAVA_BEFORE_BACKWARD, LLAVA_PROJECTOR, 0) != 0) goto oom;
        projector_backward(m, &pa, dvis, dfeat, image_rows);
        if (llava_hook(m, LLAVA_AFTER_BACKWARD, LLAVA_PROJECTOR, 0) != 0) goto oom;
        tape_release_scratch(t, dfeat, (size_t)image_rows * C);
        if (m->vision_trainable && dvis) vision_backward(m, &vs, dvis, b->n_images);
        tape_release_scratch(t, dvis, dvis ? nvis : 0);
    }
    tape_release_scratch(t, dh, (size_t)N * C);
    tape_release_scratch(t, dprev, (size_t)N * C);
    if (t->failed) goto oom;
    rc = 0;
    goto done;
oom:
    if (!t->failed) t->failed = 1;
    if (m->hook_failed) error_set(err, "%s", m->hook_error.message);
    else error_set(err, "out of memory running the model (B=%d, L=%d)", B, L);
done:
    // A frozen tower's output under a trained projector was scratch held until now.
    if (vision_features_scratch && vs.features) tape_release_scratch(t, vs.features, vision_features_n);
    m->stats.activations_peak = t->peak;
    m->stats.activations_kept_vision = forward_done ? kept_vision_forward : t->kept_vision;
    m->stats.activations_kept_total = forward_done ? kept_forward : t->kept;
    tape_clear(t);  // everything above, the bookkeeping included; the arena is regrown to this step's plan
    m->stats.activations_arena = t->arena.capacity;
    m->stats.activations_arena_grows = t->arena.grows;
    return rc;
}

int llava_forward_backward(LlavaModel *m, const LlavaBatch *b, float grad_scale, double *loss, Error *err) {
    if (m->n_params == 0) return error_set(err, "the model has no trainable parameters (finetuning_type none?)");
    return run(m, b, RUN_TRAIN, grad_scale, loss, NULL, NULL, err);
}

int llava_forward_loss(LlavaModel *m, const LlavaBatch *b, double *loss, int *n_tokens, Error *err) {
    return run(m, b, RUN_LOSS, 0.0f, loss, n_tokens, NULL, err);
}

int llava_logits(LlavaModel *m, const LlavaBatch *b, float *logits, Error *err) {
    return run(m, b, RUN_LOGITS, 0.0f, NULL, NULL, logits, err);
}

// The language model's input rows for one sequence, as run() builds them:
// token embeddings, with each image's projected features written over its
// image tokens. Used by generation (llava_generate.c), which then runs its
// own cached text layers. x [L, C] is the caller's buffer.
int llava_embed_inputs(LlavaModel *m, const int32_t *ids, int L, int n_images, const float *pixel_values, float *x,
                       Error *err) {
    const ModelConfig *c = &m->config;
    int C = c->text.hidden_size;
    LlavaBatch b = {.batch_size = 1, .seq_len = L, .input_ids = ids, .n_images = n_images, .pixel_values = pixel_values};
    int image_rows = 0;
    if (check_batch(m, &b, &image_rows, err) != 0) return -1;
    Tape *t = &m->tape;
    tape_clear(t);
    t->failed = 0;
    t->live_scratch = 0;
    m->hook_failed = 0;
    int32_t *image_index = malloc(sizeof(int32_t) * (size_t)(image_rows + 1));
    uint8_t *is_image = calloc((size_t)L, 1);
    VisionState vs = {0};
    ProjectorActs pa = {0};
    int rc = -1;
    if (!image_index || !is_image) goto done;
    for (int i = 0, k = 0; i < L; i++)
        if (c->has_vision && ids[i] == c->image_token_index) {
            image_index[k++] = i;
            is_image[i] = 1;
        }
    weight_embedding_forward(m->embed_tokens, x, ids, is_image, L, C);
    if (n_images > 0) {
        vs.layers = calloc((size_t)m->vision_layers_run + 1, sizeof(VisionActs));
        if (!vs.layers) goto done;
        Pass vp = {.m = m, .keep = 0, .vision = 1, .training = 0};
        if (vision_forward(&vp, &vs, pixel_values, n_images) != 0) goto done;
        Pass pp = {.m = m, .keep = 0, .vision = 0, .training = 0};
        int projected = projector_forward(&pp, &pa, vs.features, image_rows);
        tape_release_scratch(t, vs.features, (size_t)image_rows * c->vision.hidden_size);
        if (projected != 0) goto done;
        rows_scatter(x, image_index, pa.out, image_rows, C);
        tape_release_scratch(t, pa.out, (size_t)image_rows * C);
    }
    rc = t->failed ? -1 : 0;
done:
    if (rc != 0) error_set(err, "out of memory embedding the prompt (L=%d, %d images)", L, n_images);
    tape_clear(t);
    free(image_index);
    free(is_image);
    free(vs.layers);
    return rc;
}
