// Cached decoding through the language model (see generate.h). The layer
// math is text_layer_forward's (llava_forward.c) for the new rows only: the
// earlier positions enter through their cached K and V.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "generate.h"
#include "llava_internal.h"

struct LlavaKVCache {
    int n_layers;
    int row;        // floats per position: Hkv * D
    int length;     // positions held
    int capacity;   // positions allocated
    float **k, **v; // per layer [capacity, row]
};

int llava_kv_cache_new(const LlavaModel *m, LlavaKVCache **out, Error *err) {
    const TextConfig *tc = &m->config.text;
    LlavaKVCache *c = calloc(1, sizeof *c);
    if (c) {
        c->n_layers = tc->num_hidden_layers;
        c->row = tc->num_key_value_heads * tc->head_dim;
        c->k = calloc((size_t)c->n_layers, sizeof(float *));
        c->v = calloc((size_t)c->n_layers, sizeof(float *));
    }
    if (!c || !c->k || !c->v) {
        llava_kv_cache_free(c);
        return error_set(err, "out of memory creating the KV cache");
    }
    *out = c;
    return 0;
}

void llava_kv_cache_free(LlavaKVCache *c) {
    if (!c) return;
    for (int i = 0; c->k && c->v && i < c->n_layers; i++) {
        free(c->k[i]);
        free(c->v[i]);
    }
    free(c->k);
    free(c->v);
    free(c);
}

void llava_kv_cache_reset(LlavaKVCache *c) { c->length = 0; }

int llava_kv_cache_length(const LlavaKVCache *c) { return c->length; }

void llava_kv_cache_truncate(LlavaKVCache *c, int length) {
    if (length >= 0 && length < c->length) c->length = length;
}

// Room for `need` positions; grows by doubling so a long answer reallocates
// a few times only.
static int cache_reserve(LlavaKVCache *c, int need) {
    if (need <= c->capacity) return 0;
    int capacity = c->capacity ? c->capacity : 256;
    while (capacity < need) capacity *= 2;
    for (int i = 0; i < c->n_layers; i++) {
        float *k = realloc(c->k[i], sizeof(float) * (size_t)capacity * c->row);
        if (k) c->k[i] = k;
        float *v = realloc(c->v[i], sizeof(float) * (size_t)capacity * c->row);
        if (v) c->v[i] = v;
        if (!k || !v) return -1;
    }
    c->capacity = capacity;
    return 0;
}

// Scratch for n rows through one text layer.
typedef struct {
    float *rstd, *h, *q, *k, *v, *att, *mid, *gate, *up, *act, *next;
} StepBuffers;

static void buffers_free(StepBuffers *s) {
    float **all[] = {&s->rstd, &s->h, &s->q, &s->k, &s->v, &s->att, &s->mid, &s->gate, &s->up, &s->act, &s->next};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        kernel_free(*all[i]);
        *all[i] = NULL;
    }
}

static int buffers_alloc(StepBuffers *s, const TextConfig *tc, int n) {
    size_t C = (size_t)tc->hidden_size, F = (size_t)tc->intermediate_size;
    size_t QD = (size_t)tc->num_attention_heads * tc->head_dim, KD = (size_t)tc->num_key_value_heads * tc->head_dim;
    s->rstd = kernel_alloc((size_t)n), s->h = kernel_alloc(n * C);
    s->q = kernel_alloc(n * QD), s->k = kernel_alloc(n * KD), s->v = kernel_alloc(n * KD), s->att = kernel_alloc(n * QD);
    s->mid = kernel_alloc(n * C), s->gate = kernel_alloc(n * F), s->up = kernel_alloc(n * F), s->act = kernel_alloc(n * F);
    s->next = kernel_alloc(n * C);
    if (s->rstd && s->h && s->q && s->k && s->v && s->att && s->mid && s->gate && s->up && s->act && s->next) return 0;
    buffers_free(s);
    return -1;
}

static void lin(LlavaModel *m, const Linear *l, float *y, const float *x, int n) {
    linear_module_forward(l, y, x, n, NULL, &m->tape, 0, &m->dropout_rng, 0);
}

// x [n, C] at positions pos0.. -> out [n, C]; K, V of the rows go into layer i's cache.
static void layer_step(LlavaModel *m, LlavaKVCache *c, int i, StepBuffers *s, float *out, const float *x, int n,
                       int pos0) {
    const TextConfig *tc = &m->config.text;
    const TextLayer *layer = &m->text_layers[i];
    int C = tc->hidden_size, Hq = tc->num_attention_heads, Hkv = tc->num_key_value_heads, D = tc->head_dim;
    int F = tc->intermediate_size;
    float eps = (float)tc->rms_norm_eps, theta = (float)tc->rope_theta;
    rmsnorm_forward(s->h, s->rstd, x, layer->norm1->data, n, C, eps);
    lin(m, &layer->q, s->q, s->h, n);
    lin(m, &layer->k, s->k, s->h, n);
    lin(m, &layer->v, s->v, s->h, n);
    rope_forward_at(s->q, n, Hq, D, theta, pos0);
    rope_forward_at(s->k, n, Hkv, D, theta, pos0);
    kernel_copy(c->k[i] + (size_t)pos0 * c->row, s->k, (size_t)n * c->row);
    kernel_copy(c->v[i] + (size_t)pos0 * c->row, s->v, (size_t)n * c->row);
    attention_cached_forward(s->att, s->q, c->k[i], c->v[i], n, pos0, Hq, Hkv, D, 1.0f / sqrtf((float)D));
    lin(m, &layer->o, s->mid, s->att, n);
    kernel_add(s->mid, x, (size_t)n * C);
    rmsnorm_forward(s->h, s->rstd, s->mid, layer->norm2->data, n, C, eps);
    lin(m, &layer->gate, s->gate, s->h, n);
    lin(m, &layer->up, s->up, s->h, n);
    swiglu_forward(s->act, s->gate, s->up, (size_t)n * F);
    lin(m, &layer->down, out, s->act, n);
    kernel_add(out, s->mid, (size_t)n * C);
}

int llava_decode(LlavaModel *m, LlavaKVCache *c, const int32_t *ids, int n, int n_images, const float *pixel_values,
                 float *logits, Error *err) {
    const TextConfig *tc = &m->config.text;
    int C = tc->hidden_size, pos0 = c->length;
    if (n <= 0) return error_set(err, "decode: no tokens");
    if (cache_reserve(c, pos0 + n) != 0) return error_set(err, "out of memory growing the KV cache to %d positions", pos0 + n);
    float *x = kernel_alloc((size_t)n * C);
    StepBuffers s = {0};
    if (!x || buffers_alloc(&s, tc, n) != 0) {
        kernel_free(x);
        return error_set(err, "out of memory decoding %d tokens", n);
    }
    int rc = llava_embed_inputs(m, ids, n, n_images, pixel_values, x, err);
    if (rc == 0) {
        m->tape.failed = 0;
        for (int i = 0; i < tc->num_hidden_layers; i++) {
            layer_step(m, c, i, &s, s.next, x, n, pos0);
            float *swap = x;
            x = s.next;
            s.next = swap;
        }
        // Only the last row's logits are needed.
        const float *last = x + (size_t)(n - 1) * C;
        rmsnorm_forward(s.h, s.rstd, last, m->final_norm->data, 1, C, (float)tc->rms_norm_eps);
        lin(m, &m->lm_head, logits, s.h, 1);
        if (m->tape.failed) rc = error_set(err, "out of memory in a LoRA layer while decoding");
        else c->length = pos0 + n;
    }
    kernel_free(x);
    buffers_free(&s);
    return rc;
}
