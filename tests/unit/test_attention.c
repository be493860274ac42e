// Tiled attention (src/kernels/cpu/attention.c: tiles of 96 query rows x
// 96 keys, or 64 x 64 from head dimension 128, online softmax) against a
// float64 reference written here: outputs, log-sum-exp and the three
// gradients, for shapes around the tile sizes, grouped heads, causal or not,
// right padding and query rows that see no key at all; a finite-difference
// check of the backward on a shape crossing tiles; and the same bits
// whatever the thread count.
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/base/rng.h"
#include "../../src/kernels/kernels.h"

enum { MASK_NONE, MASK_RIGHT_PADDING, MASK_EMPTY_SEQUENCE, MASK_LEFT_PADDING };

typedef struct {
    int B, L, Hq, Hkv, D, causal, mask_kind;
} Shape;

// Inputs of one case, float32 as the kernel takes them.
typedef struct {
    Shape s;
    float *q, *k, *v, *dout;
    int32_t *mask;  // NULL for MASK_NONE
    size_t nq, nk, nl;
} Inputs;

static void fill(float *x, size_t n, Rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = (float)rng_normal(rng);
}

// key_mask per kind: right padding drops the last L/3 keys of sequence 1 (and
// 3 of sequence 0); an empty sequence masks every key of the last sequence
// (every one of its rows sees nothing); left padding masks keys 0..2 of every
// sequence, so under a causal mask rows 0..2 see nothing.
static int32_t *make_mask(const Shape *s) {
    if (s->mask_kind == MASK_NONE) return NULL;
    int32_t *mask = malloc(sizeof(int32_t) * (size_t)s->B * s->L);
    cr_assert_not_null(mask);
    for (int b = 0; b < s->B; b++)
        for (int j = 0; j < s->L; j++) {
            int keep = 1;
            if (s->mask_kind == MASK_RIGHT_PADDING) keep = j < s->L - (b % 2 ? s->L / 3 : 3);
            if (s->mask_kind == MASK_EMPTY_SEQUENCE) keep = b != s->B - 1 && j < s->L - 2;
            if (s->mask_kind == MASK_LEFT_PADDING) keep = j >= 3;
            mask[(size_t)b * s->L + j] = keep;
        }
    return mask;
}

static Inputs make_inputs(Shape s, uint64_t seed) {
    Inputs in = {.s = s};
    Rng rng;
    rng_seed(&rng, seed);
    in.nq = (size_t)s.B * s.L * s.Hq * s.D, in.nk = (size_t)s.B * s.L * s.Hkv * s.D, in.nl = (size_t)s.B * s.Hq * s.L;
    in.q = malloc(in.nq * 4), in.k = malloc(in.nk * 4), in.v = malloc(in.nk * 4), in.dout = malloc(in.nq * 4);
    cr_assert(in.q && in.k && in.v && in.dout);
    fill(in.q, in.nq, &rng), fill(in.k, in.nk, &rng), fill(in.v, in.nk, &rng), fill(in.dout, in.nq, &rng);
    in.mask = make_mask(&s);
    return in;
}

static void free_inputs(Inputs *in) {
    free(in->q), free(in->k), free(in->v), free(in->dout), free(in->mask);
}

static float scale_of(const Shape *s) { return 1.0f / sqrtf((float)s->D); }

static int visible(const Inputs *in, int b, int i, int j) {
    if (in->s.causal && j > i) return 0;
    return in->mask == NULL || in->mask[(size_t)b * in->s.L + j] != 0;
}

// float64 attention and its gradients for dout, straight from the
// definitions: P = softmax over visible keys of scale q.k, out = P v,
// dS = P * (dO v^T - rowsum(P * dO v^T)), dq = scale dS k, dk = scale dS^T q,
// dv = P^T dO. A row with no visible key: out 0, lse +inf, no gradient.
typedef struct {
    double *out, *lse, *dq, *dk, *dv;
} Reference;

static Reference reference(const Inputs *in) {
    const Shape *s = &in->s;
    int L = s->L, D = s->D, group = s->Hq / s->Hkv, qs = s->Hq * D, ks = s->Hkv * D;
    double scale = scale_of(s);
    Reference r = {calloc(in->nq, 8), calloc(in->nl, 8), calloc(in->nq, 8), calloc(in->nk, 8), calloc(in->nk, 8)};
    double *p = calloc((size_t)L, 8), *dp = calloc((size_t)L, 8);
    cr_assert(r.out && r.lse && r.dq && r.dk && r.dv && p && dp);
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->Hq; h++)
            for (int i = 0; i < L; i++) {
                int g = h / group;
                const float *qi = in->q + ((size_t)b * L + i) * qs + (size_t)h * D;
                const float *doi = in->dout + ((size_t)b * L + i) * qs + (size_t)h * D;
                double m = -INFINITY;
                for (int j = 0; j < L; j++) {
                    p[j] = -INFINITY;
                    if (!visible(in, b, i, j)) continue;
                    const float *kj = in->k + ((size_t)b * L + j) * ks + (size_t)g * D;
                    double dot = 0;
                    for (int d = 0; d < D; d++) dot += (double)qi[d] * kj[d];
                    p[j] = scale * dot;
                    m = fmax(m, p[j]);
                }
                double *lse = r.lse + ((size_t)b * s->Hq + h) * L + i;
                if (m == -INFINITY) {
                    *lse = INFINITY;
                    continue;
                }
                double sum = 0, delta = 0;
                for (int j = 0; j < L; j++) sum += (p[j] = p[j] == -INFINITY ? 0 : exp(p[j] - m));
                *lse = m + log(sum);
                double *out = r.out + ((size_t)b * L + i) * qs + (size_t)h * D;
                for (int j = 0; j < L; j++) {
                    p[j] /= sum;
                    const float *vj = in->v + ((size_t)b * L + j) * ks + (size_t)g * D;
                    dp[j] = 0;
                    for (int d = 0; d < D; d++) {
                        out[d] += p[j] * vj[d];
                        dp[j] += (double)doi[d] * vj[d];
                    }
                    delta += p[j] * dp[j];
                }
                double *dqi = r.dq + ((size_t)b * L + i) * qs + (size_t)h * D;
                for (int j = 0; j < L; j++) {
                    if (p[j] == 0) continue;
                    double ds = p[j] * (dp[j] - delta) * scale;
                    size_t at = ((size_t)b * L + j) * ks + (size_t)g * D;
                    for (int d = 0; d < D; d++) {
                        dqi[d] += ds * in->k[at + d];
                        r.dk[at + d] += ds * qi[d];
                        r.dv[at + d] += p[j] * doi[d];
                    }
                }
            }
    free(p), free(dp);
    return r;
}

static void free_reference(Reference *r) { free(r->out), free(r->lse), free(r->dq), free(r->dk), free(r->dv); }

// The kernel's results for one case.
typedef struct {
    float *out, *lse, *dq, *dk, *dv;
} Result;

static Result run_kernel(const Inputs *in) {
    const Shape *s = &in->s;
    Result r = {malloc(in->nq * 4), malloc(in->nl * 4), malloc(in->nq * 4), malloc(in->nk * 4), malloc(in->nk * 4)};
    cr_assert(r.out && r.lse && r.dq && r.dk && r.dv);
    // Garbage in the outputs: the kernel must overwrite every element.
    for (size_t i = 0; i < in->nq; i++) r.out[i] = r.dq[i] = NAN;
    for (size_t i = 0; i < in->nk; i++) r.dk[i] = r.dv[i] = NAN;
    for (size_t i = 0; i < in->nl; i++) r.lse[i] = NAN;
    attention_forward(r.out, r.lse, in->q, in->k, in->v, in->mask, s->B, s->L, s->Hq, s->Hkv, s->D, s->causal,
                      scale_of(s));
    attention_backward(r.dq, r.dk, r.dv, in->dout, r.out, r.lse, in->q, in->k, in->v, in->mask, s->B, s->L, s->Hq,
                       s->Hkv, s->D, s->causal, scale_of(s));
    return r;
}

static void free_result(Result *r) { free(r->out), free(r->lse), free(r->dq), free(r->dk), free(r->dv); }

// Largest |got - want| relative to the largest |want| (at least 1).
static double relative_error(const float *got, const double *want, size_t n) {
    double err = 0, size = 1;
    for (size_t i = 0; i < n; i++) {
        cr_assert(isfinite(got[i]), "element %zu is %f", i, got[i]);
        err = fmax(err, fabs(got[i] - want[i]));
        size = fmax(size, fabs(want[i]));
    }
    return err / size;
}

static void describe(char *buf, size_t n, const Shape *s) {
    snprintf(buf, n, "B=%d L=%d Hq=%d Hkv=%d D=%d causal=%d mask=%d", s->B, s->L, s->Hq, s->Hkv, s->D, s->causal,
             s->mask_kind);
}

static void check_against_reference(Shape s, uint64_t seed) {
    char name[128];
    describe(name, sizeof name, &s);
    Inputs in = make_inputs(s, seed);
    Reference want = reference(&in);
    Result got = run_kernel(&in);
    cr_expect_lt(relative_error(got.out, want.out, in.nq), 2e-6, "out, %s", name);
    cr_expect_lt(relative_error(got.dq, want.dq, in.nq), 5e-6, "dq, %s", name);
    cr_expect_lt(relative_error(got.dk, want.dk, in.nk), 5e-6, "dk, %s", name);
    cr_expect_lt(relative_error(got.dv, want.dv, in.nk), 5e-6, "dv, %s", name);
    int empty_rows = 0;
    for (size_t i = 0; i < in.nl; i++) {
        if (want.lse[i] == INFINITY) {
            empty_rows++;
            cr_expect(got.lse[i] == INFINITY, "lse[%zu] = %f for a row with no visible key, %s", i, got.lse[i], name);
        } else {
            cr_expect_float_eq(got.lse[i], want.lse[i], 2e-6 * (1 + fabs(want.lse[i])), "lse[%zu], %s", i, name);
        }
    }
    // Rows that see no key give exact zeros; keys nobody sees get exact zero gradients.
    int D = s.D, qs = s.Hq * D, ks = s.Hkv * D;
    for (int b = 0; b < s.B; b++)
        for (int i = 0; i < s.L; i++) {
            for (int h = 0; h < s.Hq; h++)
                if (want.lse[((size_t)b * s.Hq + h) * s.L + i] == INFINITY)
                    for (int d = 0; d < D; d++) {
                        size_t at = ((size_t)b * s.L + i) * qs + (size_t)h * D + d;
                        cr_expect(got.out[at] == 0 && got.dq[at] == 0, "row %d of b=%d h=%d not zero, %s", i, b, h,
                                  name);
                    }
            if (in.mask && in.mask[(size_t)b * s.L + i] == 0)
                for (int e = 0; e < ks; e++) {
                    size_t at = ((size_t)b * s.L + i) * ks + e;
                    cr_expect(got.dk[at] == 0 && got.dv[at] == 0, "masked key %d of b=%d has a gradient, %s", i, b,
                              name);
                }
        }
    if (s.mask_kind == MASK_EMPTY_SEQUENCE || (s.mask_kind == MASK_LEFT_PADDING && s.causal))
        cr_expect_gt(empty_rows, 0, "the case was meant to have rows that see nothing, %s", name);
    free_result(&got);
    free_reference(&want);
    free_inputs(&in);
}

// Shapes around the 96 x 96 tiles (and the 64 x 64 ones of D >= 128): L
// below one tile, exactly one or two, one past, not a multiple, several;
// groups 1, 2, 4. The shapes around 128
// (the tile size until 2026-11-26) stay as further multi-tile cases.
Test(attention, tiles_match_float64_reference) {
    kernel_init(2);
    Shape shapes[] = {
        {1, 1, 2, 1, 8, 1, MASK_NONE},               // one row
        {2, 37, 4, 2, 16, 1, MASK_RIGHT_PADDING},    // L < 96
        {2, 90, 4, 1, 12, 0, MASK_RIGHT_PADDING},    // L < 96, group 4
        {1, 96, 4, 2, 8, 1, MASK_LEFT_PADDING},      // exactly one tile, rows that see nothing
        {1, 97, 2, 2, 8, 1, MASK_RIGHT_PADDING},     // one past a tile: a 1-row query tile, a 1-key key tile
        {1, 98, 2, 1, 8, 1, MASK_NONE},              // causal, a 2-row query tile on the diagonal
        {1, 192, 2, 1, 8, 1, MASK_NONE},             // exactly two tiles, group 2
        {2, 100, 4, 1, 12, 0, MASK_RIGHT_PADDING},   // one tile and a partial one, group 4
        {1, 128, 4, 2, 8, 1, MASK_LEFT_PADDING},     // rows that see nothing across two tiles
        {1, 129, 2, 2, 8, 1, MASK_RIGHT_PADDING},    // a 33-row query tile, a 33-key key tile
        {1, 130, 2, 1, 8, 1, MASK_NONE},             // causal, a 34-row query tile on the diagonal
        {3, 130, 2, 2, 8, 0, MASK_EMPTY_SEQUENCE},   // a sequence with no key at all
        {2, 150, 8, 2, 16, 1, MASK_LEFT_PADDING},    // group 4, causal, crossing tiles
        {1, 256, 2, 1, 8, 1, MASK_NONE},             // two tiles and two thirds, group 2
        {1, 300, 4, 4, 8, 1, MASK_RIGHT_PADDING},    // four tiles, the last one partial
        {2, 257, 6, 3, 20, 0, MASK_RIGHT_PADDING},   // CLIP-like 1 + 16^2, odd KV head count
        {1, 200, 4, 1, 16, 0, MASK_NONE},            // a single KV head (one unit, split over threads)
        // D >= 128 takes 64 x 64 tiles: the same cases around 64.
        {1, 64, 2, 1, 128, 1, MASK_LEFT_PADDING},    // exactly one tile, rows that see nothing
        {1, 65, 2, 2, 128, 1, MASK_RIGHT_PADDING},   // one past a tile
        {1, 66, 2, 1, 128, 1, MASK_NONE},            // causal, a 2-row query tile on the diagonal
        {2, 130, 4, 2, 128, 1, MASK_RIGHT_PADDING},  // two tiles and a partial one, group 2
        {1, 200, 4, 1, 160, 0, MASK_NONE},           // not causal, a single KV head, D past 128
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_against_reference(shapes[i], 100 + i);
}

// Random shapes drawn with a fixed seed.
Test(attention, random_shapes_match_float64_reference) {
    kernel_init(2);
    Rng rng;
    rng_seed(&rng, 7);
    int groups[3] = {1, 2, 4};
    for (int c = 0; c < 12; c++) {
        Shape s;
        s.B = 1 + (int)rng_below(&rng, 2);
        s.L = 1 + (int)rng_below(&rng, 280);
        s.Hkv = 1 + (int)rng_below(&rng, 3);
        s.Hq = s.Hkv * groups[rng_below(&rng, 3)];
        s.D = 4 * (1 + (int)rng_below(&rng, 6));
        s.causal = (int)rng_below(&rng, 2);
        s.mask_kind = (int)rng_below(&rng, 4);
        if (s.mask_kind != MASK_NONE && s.L < 8) s.mask_kind = MASK_NONE;  // padding needs a few keys
        check_against_reference(s, 1000 + (uint64_t)c);
    }
}

// Finite differences of f = sum(out * R) at sampled coordinates of q, k, v on
// a shape with several query and key tiles, grouped heads, right padding
// and rows that see nothing (left padding under the causal mask).
static double objective(const Inputs *in, float *out, float *lse) {
    const Shape *s = &in->s;
    attention_forward(out, lse, in->q, in->k, in->v, in->mask, s->B, s->L, s->Hq, s->Hkv, s->D, s->causal,
                      scale_of(s));
    double f = 0;
    for (size_t i = 0; i < in->nq; i++) f += (double)out[i] * in->dout[i];
    return f;
}

Test(attention, backward_matches_finite_differences_across_tiles) {
    kernel_init(2);
    Shape s = {2, 140, 4, 2, 8, 1, MASK_LEFT_PADDING};
    Inputs in = make_inputs(s, 21);
    in.mask[1 * s.L + s.L - 1] = in.mask[1 * s.L + s.L - 2] = 0;  // and right padding in sequence 1
    Result got = run_kernel(&in);
    float *out = malloc(in.nq * 4), *lse = malloc(in.nl * 4);
    cr_assert(out && lse);
    Rng rng;
    rng_seed(&rng, 22);
    float *inputs[3] = {in.q, in.k, in.v}, *grads[3] = {got.dq, got.dk, got.dv};
    size_t sizes[3] = {in.nq, in.nk, in.nk};
    const char *names[3] = {"dq", "dk", "dv"};
    for (int t = 0; t < 3; t++) {
        double num = 0, den = 0;
        for (int n = 0; n < 40; n++) {
            size_t idx = (size_t)rng_below(&rng, sizes[t]);
            float saved = inputs[t][idx];
            inputs[t][idx] = saved + 1e-2f;
            double plus = objective(&in, out, lse);
            inputs[t][idx] = saved - 1e-2f;
            double minus = objective(&in, out, lse);
            inputs[t][idx] = saved;
            double fd = (plus - minus) / 2e-2;
            num += (fd - grads[t][idx]) * (fd - grads[t][idx]);
            den += fd * fd;
        }
        cr_assert(den > 0, "%s: sampled finite differences all zero, the check would be empty", names[t]);
        cr_expect_lt(sqrt(num / den), 5e-3, "%s", names[t]);
    }
    free(out), free(lse);
    free_result(&got);
    free_inputs(&in);
}

static int same_bits(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

// Forward tasks and dq rows never share a sum, so they come out bit for bit
// the same for any thread count; dk, dv too as long as each (b, KV head) runs
// whole in one task (the unit count is a multiple of the thread count). With 3
// threads over 4 units the units are split in parts whose sums are added in
// a fixed order: close to the 1-thread result, and the same on every run.
Test(attention, same_bits_for_any_thread_count) {
    Shape s = {2, 200, 4, 2, 16, 1, MASK_RIGHT_PADDING};  // 4 units; large enough to run in parallel
    Inputs in = make_inputs(s, 31);
    kernel_init(1);
    Result one = run_kernel(&in);
    kernel_init(2);
    Result two = run_kernel(&in);
    kernel_init(3);
    Result three = run_kernel(&in), three_again = run_kernel(&in);
    cr_expect(same_bits(one.out, two.out, in.nq) && same_bits(one.out, three.out, in.nq));
    cr_expect(same_bits(one.lse, two.lse, in.nl) && same_bits(one.lse, three.lse, in.nl));
    cr_expect(same_bits(one.dq, two.dq, in.nq) && same_bits(one.dq, three.dq, in.nq));
    cr_expect(same_bits(one.dk, two.dk, in.nk) && same_bits(one.dv, two.dv, in.nk));
    cr_expect(same_bits(three.dk, three_again.dk, in.nk) && same_bits(three.dv, three_again.dv, in.nk));
    for (size_t i = 0; i < in.nk; i++) {
        cr_expect_float_eq(three.dk[i], one.dk[i], 1e-5f * (1 + fabsf(one.dk[i])), "dk[%zu]", i);
        cr_expect_float_eq(three.dv[i], one.dv[i], 1e-5f * (1 + fabsf(one.dv[i])), "dv[%zu]", i);
    }
    kernel_init(2);
    free_result(&one), free_result(&two), free_result(&three), free_result(&three_again);
    free_inputs(&in);
}
