// Generation pieces: the cached-decode kernels against the full ones, the
// next-token rules against transformers' definitions on hand-made logits,
// and the streaming decoder on byte-fallback tokens.
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/base/rng.h"
#include "../../src/kernels/kernels.h"
#include "../../src/model/generate.h"
#include "../../src/text/token_stream.h"
#include "../../src/text/tokenizer.h"

static void fill(float *x, size_t n, Rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = (float)rng_normal(rng);
}

Test(generate_kernels, rope_at_offset_equals_rope_rows) {
    enum { L = 7, H = 3, D = 8 };
    Rng rng;
    rng_seed(&rng, 1);
    float x[L * H * D], full[L * H * D];
    fill(x, L * H * D, &rng);
    memcpy(full, x, sizeof x);
    rope_forward(full, 1, L, H, D, 10000.0f);
    for (int pos = 0; pos < L; pos++) {
        float row[H * D];
        memcpy(row, x + pos * H * D, sizeof row);
        rope_forward_at(row, 1, H, D, 10000.0f, pos);
        for (int i = 0; i < H * D; i++) cr_assert_float_eq(row[i], full[pos * H * D + i], 1e-6, "pos %d", pos);
    }
}

// Prefill 5 rows, then 1 at a time: each row's output equals full causal
// attention over all L rows (grouped heads 4 / 2).
Test(generate_kernels, cached_attention_equals_full_causal_attention) {
    enum { L = 9, Hq = 4, Hkv = 2, D = 8 };
    Rng rng;
    rng_seed(&rng, 2);
    float q[L * Hq * D], k[L * Hkv * D], v[L * Hkv * D], full[L * Hq * D], lse[Hq * L], out[L * Hq * D];
    fill(q, sizeof q / sizeof q[0], &rng);
    fill(k, sizeof k / sizeof k[0], &rng);
    fill(v, sizeof v / sizeof v[0], &rng);
    float scale = 1.0f / sqrtf((float)D);
    attention_forward(full, lse, q, k, v, NULL, 1, L, Hq, Hkv, D, 1, scale);
    attention_cached_forward(out, q, k, v, 5, 0, Hq, Hkv, D, scale);
    for (int pos = 5; pos < L; pos++)
        attention_cached_forward(out + pos * Hq * D, q + pos * Hq * D, k, v, 1, pos, Hq, Hkv, D, scale);
    for (int i = 0; i < L * Hq * D; i++) cr_assert_float_eq(out[i], full[i], 1e-5, "element %d", i);
}

static GenerationConfig sampling(double temperature, int top_k, double top_p) {
    GenerationConfig g;
    generation_config_defaults(&g);
    g.do_sample = 1;
    g.temperature = temperature;
    g.top_k = top_k;
    g.top_p = top_p;
    return g;
}

Test(generate_sampling, greedy_and_repetition_penalty) {
    GenerationConfig g;
    generation_config_defaults(&g);
    cr_assert_eq(g.do_sample, 0);
    float logits[3] = {2.0f, -2.0f, 1.5f};
    cr_assert_eq(generation_next_token(&g, logits, 3, NULL, 0, NULL), 0);
    // transformers: seen scores s < 0 -> s * p, else s / p (once per id).
    g.repetition_penalty = 2.0;
    int32_t seen[] = {0, 1, 0};
    float penalised[3] = {2.0f, -2.0f, 1.5f};
    cr_assert_eq(generation_next_token(&g, penalised, 3, seen, 3, NULL), 2);
    cr_assert_float_eq(penalised[0], 1.0f, 1e-7);
    cr_assert_float_eq(penalised[1], -4.0f, 1e-7);
    cr_assert_float_eq(penalised[2], 1.5f, 1e-7);
}

// Frequencies of 40000 draws from p = (0.2, 0.3, 0.5) after each warper.
static void draw(const GenerationConfig *g, double counts[3], uint64_t seed) {
    Rng rng;
    rng_seed(&rng, seed);
    counts[0] = counts[1] = counts[2] = 0;
    for (int i = 0; i < 40000; i++) {
        float logits[3] = {logf(0.2f), logf(0.3f), logf(0.5f)};
        counts[generation_next_token(g, logits, 3, NULL, 0, &rng)] += 1.0 / 40000;
    }
}

Test(generate_sampling, warpers_follow_transformers) {
    double f[3];
    GenerationConfig plain = sampling(1.0, 0, 1.0);
    draw(&plain, f, 1);
    cr_assert(fabs(f[0] - 0.2) < 0.01 && fabs(f[1] - 0.3) < 0.01 && fabs(f[2] - 0.5) < 0.01, "%f %f %f", f[0], f[1], f[2]);
    // temperature 2: p ~ sqrt(p) renormalised
    GenerationConfig hot = sampling(2.0, 0, 1.0);
    draw(&hot, f, 2);
    double z = sqrt(0.2) + sqrt(0.3) + sqrt(0.5);
    cr_assert(fabs(f[0] - sqrt(0.2) / z) < 0.01 && fabs(f[2] - sqrt(0.5) / z) < 0.01, "%f %f %f", f[0], f[1], f[2]);
    // top_k 2 keeps 0.3 and 0.5
    GenerationConfig k2 = sampling(1.0, 2, 1.0);
    draw(&k2, f, 3);
    cr_assert(f[0] == 0.0 && fabs(f[1] - 0.375) < 0.01, "%f %f %f", f[0], f[1], f[2]);
    // top_p 0.6: ascending cumulative 0.2, 0.5, 1.0; drop those <= 0.4 -> token 0 only
    GenerationConfig p6 = sampling(1.0, 0, 0.6);
    draw(&p6, f, 4);
    cr_assert(f[0] == 0.0 && fabs(f[1] - 0.375) < 0.01, "%f %f %f", f[0], f[1], f[2]);
    // top_p 0.3: only the most likely survives
    GenerationConfig p3 = sampling(1.0, 0, 0.3);
    draw(&p3, f, 5);
    cr_assert(f[0] == 0.0 && f[1] == 0.0 && f[2] > 0.999, "%f %f %f", f[0], f[1], f[2]);
}

static Tokenizer *yi_like(void) {
    const char *root = getenv("VLFT_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/tokenizers/yi_like/tokenizer.json", root ? root : ".");
    Tokenizer *t = NULL;
    Error err;
    cr_assert_eq(tokenizer_load_json_file(&t, path, &err), 0, "%s", err.message);
    return t;
}

static char *push(TokenStream *s, const char *token) {
    int id = tokenizer_token_to_id(s->tokenizer, token);
    cr_assert_geq(id, 0, "token %s", token);
    return token_stream_push(s, id);
}

Test(generate_stream, byte_fallback_characters_come_out_whole) {
    Tokenizer *t = yi_like();
    TokenStream s;
    token_stream_init(&s, t);
    StrBuf all = {0};
    str_buf_append(&all, "", 0);
    int *ids;
    int n = tokenizer_encode(t, "hi", 2, &ids);
    for (int i = 0; i < n; i++) {
        char *piece = token_stream_push(&s, ids[i]);
        str_buf_append_str(&all, piece);
        free(piece);
    }
    free(ids);
    // U+4E2D as three byte tokens: nothing until the last one.
    const char *bytes[] = {"<0xE4>", "<0xB8>", "<0xAD>"};
    for (int i = 0; i < 3; i++) {
        char *piece = push(&s, bytes[i]);
        if (i < 2) cr_assert_str_eq(piece, "", "byte %d", i);
        else cr_assert_str_eq(piece, "\xe4\xb8\xad");
        str_buf_append_str(&all, piece);
        free(piece);
    }
    cr_assert_str_eq(all.data, "hi\xe4\xb8\xad");
    n = tokenizer_encode(t, " a", 2, &ids);
    for (int i = 0; i < n; i++) {
        char *piece = token_stream_push(&s, ids[i]);
        cr_assert(strstr(piece, "\xef\xbf\xbd") == NULL);
        free(piece);
    }
    free(ids);
    // A lone lead byte stays held; the end of the stream gives what decode gives (U+FFFD).
    char *held = push(&s, "<0xE4>");
    cr_assert_str_eq(held, "");
    char *rest = token_stream_finish(&s);
    cr_assert_str_eq(rest, "\xef\xbf\xbd");
    free(held);
    free(rest);
    str_buf_free(&all);
    token_stream_free(&s);
    tokenizer_free(t);
}
