// generate.h - text generation with a key/value cache, and the choice of the
// next token as transformers' generate makes it.
//
// llava_decode appends tokens to a sequence whose earlier positions live in
// the cache: the prompt once (prefill, images merged at their image tokens
// as the training forward does), then one token per step. Each layer keeps
// K (after RoPE) and V of every position, so a step costs one row through
// the layers and attention over the cached rows.
#ifndef VLFT_MODEL_GENERATE_H
#define VLFT_MODEL_GENERATE_H

#include <stdint.h>

#include "../base/error.h"
#include "../base/rng.h"
#include "llava.h"

typedef struct LlavaKVCache LlavaKVCache;

// An empty cache for model (grows as tokens are added).
int llava_kv_cache_new(const LlavaModel *model, LlavaKVCache **out, Error *err);
void llava_kv_cache_free(LlavaKVCache *cache);
// Forgets every position (a new conversation, or a re-encoded one).
void llava_kv_cache_reset(LlavaKVCache *cache);
// Positions held.
int llava_kv_cache_length(const LlavaKVCache *cache);
// Keeps the first `length` positions only (a new prompt that shares them:
// K and V at a position depend on the tokens up to it alone).
void llava_kv_cache_truncate(LlavaKVCache *cache, int length);

// Runs ids [n] at positions length..length+n-1 and adds them to the cache;
// logits [vocab] (caller's buffer) receives the last position's logits.
// ids may hold image tokens: n_images images' pixel_values [n_images, 3, S,
// S] then fill them, in order (each image's tokens all in this call).
int llava_decode(LlavaModel *model, LlavaKVCache *cache, const int32_t *ids, int n, int n_images,
                 const float *pixel_values, float *logits, Error *err);

// generation_config.json, absent keys as transformers' GenerationConfig.
typedef struct {
    int do_sample;              // default 0 (greedy)
    double temperature;         // 1.0
    double top_p;               // 1.0
    int top_k;                  // 50
    double repetition_penalty;  // 1.0
    int max_new_tokens;         // vlft's default 512 (transformers' max_length 20 counts the prompt)
    int eos_ids[16];            // generation_config's eos_token_id (one or a list); stop words are added by the caller
    int n_eos;
} GenerationConfig;

void generation_config_defaults(GenerationConfig *config);
// Reads DIR/generation_config.json when there is one (no file: defaults).
int generation_config_load(const char *model_dir, GenerationConfig *config, Error *err);
// Adds an id to the stop list (ignored when present or negative).
void generation_config_add_eos(GenerationConfig *config, int id);

// Picks the next token from logits [vocab] (overwritten: the processors
// work in place). Order as transformers: repetition_penalty over the ids
// seen (prompt and generated), then when sampling temperature, top_k,
// top_p, and a draw from the softmax with rng. Greedy: the first maximum.
int generation_next_token(const GenerationConfig *config, float *logits, int vocab, const int32_t *seen, int n_seen,
                          Rng *rng);

#endif
