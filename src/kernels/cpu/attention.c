// CPU kernels: rotary position embedding and scaled dot-product attention.
//
// Attention never holds an L x L matrix, kept or scratch: it runs in tiles
// of query rows x keys (the FlashAttention recipe), the forward saves each
// row's log-sum-exp and the backward recomputes the probabilities tile by
// tile from q and k, so memory grows with L, not L^2.
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels.h"
#include "exp_approx.h"

// angle(t, i) = t * inv_freq_i, in fp32 as transformers computes it, with
// t = pos0 + the row's position in its sequence of L.
static void rope_apply(float *x, int B, int L, int H, int D, float theta, float sign, int pos0) {
    int half = D / 2;
    float *inv_freq = malloc(sizeof(float) * (size_t)half);
    if (inv_freq == NULL) return;
    for (int i = 0; i < half; i++) inv_freq[i] = (float)(1.0 / pow((double)theta, (double)(2 * i) / D));
#pragma omp parallel for schedule(static) if ((size_t)B * L * H * D > KERNEL_PARALLEL_MIN)
    for (int row = 0; row < B * L; row++) {
        int t = pos0 + row % L;
        for (int i = 0; i < half; i++) {
            float angle = (float)t * inv_freq[i];
            float c = (float)cos((double)angle), s = sign * (float)sin((double)angle);
            for (int h = 0; h < H; h++) {
                float *xh = x + ((size_t)row * H + h) * D;
                float a = xh[i], b = xh[i + half];
                // rotate_half: (a, b) -> (a c - b s, b c + a s)
                xh[i] = a * c - b * s;
                xh[i + half] = b * c + a * s;
            }
        }
    }
    free(inv_freq);
}

void rope_forward(float *x, int B, int L, int H, int D, float theta) { rope_apply(x, B, L, H, D, theta, 1.0f, 0); }
void rope_backward(float *dx, int B, int L, int H, int D, float theta) { rope_apply(dx, B, L, H, D, theta, -1.0f, 0); }
// Cached decoding: N rows of one sequence starting at position pos0.
void rope_forward_at(float *x, int N, int H, int D, float theta, int pos0) { rope_apply(x, 1, N, H, D, theta, 1.0f, pos0); }

// ------------------------------------------------------------- attention
//
// Flash-style tiles (FlashAttention's recipe on the CPU): a task takes
// `tile` query rows of one head and walks the keys `tile` at a time, so a
// thread's scratch is a couple of [tile, tile] score tiles whatever L is; no
// [*, L] score buffer exists. The products on a tile go to gemm(), which runs
// single-threaded inside the parallel region. Key tiles wholly above the
// causal diagonal or wholly masked are never computed.
// The tile side follows the head dimension (tile_side), from
// bench/attention.sh (2 threads, 2-core Zen 1 EPYC, 512 KB L2 a core,
// 2026-11-26), total forward + backward against the earlier 128 x 128:
// - 96 x 96 below D=128: 1.26x on the mid-size LM (L=385, Hq=12, Hkv=4,
//   D=64, causal), 1.23x on its CLIP tower (L=257, D=64), 1.02x on ViT-H at
//   448 px (L=1025, D=80). 64-wide tiles gained less on the towers
//   (1.09-1.12x) and lost on ViT-H (0.96-0.98x); 32-wide did worse on both.
// - 64 x 64 from D=128: 1.8x on Yi-6B's text (L=1280, Hq=32, Hkv=4, D=128,
//   causal), where 96 x 96 gave 1.6x (a later side-by-side run of the two:
//   1.29x for 64 x 64 over 96 x 96): the backward's working set (the Q, dO,
//   dQ rows, K, V, dK, dV rows and the two score tiles) grows with D and
//   stays in L2 only with the smaller tile.
// Smaller tiles also waste less on the causal diagonal.
enum { ATTENTION_TILE_MAX = 96 };

static int tile_side(int D) { return D >= 128 ? 64 : ATTENTION_TILE_MAX; }

// What one call reads, shared by its tasks.
typedef struct {
    const float *q, *k, *v;   // q [B*L, Hq*D], k, v [B*L, Hkv*D]
    const int32_t *key_mask;  // [B*L] or NULL
    int B, L, Hq, Hkv, D, causal;
    int group;   // query heads per KV head
    int qs, ks;  // row strides of q (out, dq) and of k, v (dk, dv)
    float scale;
    int tile;  // query rows and keys of a tile, tile_side(D); also the row stride of the score tiles
} Attention;

static int min_int(int a, int b) { return a < b ? a : b; }

static inline float dot(const float *a, const float *b, int n) {
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

// How many of the keys j0 .. j0+cols-1 of sequence b the key mask lets through.
static int keys_unmasked(const Attention *a, int b, int j0, int cols) {
    if (a->key_mask == NULL) return cols;
    const int32_t *m = a->key_mask + (size_t)b * a->L + j0;
    int n = 0;
    for (int c = 0; c < cols; c++) n += m[c] != 0;
    return n;
}

// The query tile of rows i0 .. i0+rows-1 sees keys below this bound.
static int keys_end(const Attention *a, int i0, int rows) { return a->causal ? i0 + rows : a->L; }

// Whether the tile (queries from i0, keys j0 .. j0+cols-1) has invisible
// entries: it straddles the causal diagonal or holds masked keys.
static int tile_partial(const Attention *a, int i0, int j0, int cols, int unmasked) {
    return unmasked < cols || (a->causal && j0 + cols - 1 > i0);
}

// Scores S [rows, tile] of a partial tile: invisible entries become -inf.
static void mask_tile(const Attention *a, float *S, int b, int i0, int rows, int j0, int cols) {
    const int32_t *m = a->key_mask ? a->key_mask + (size_t)b * a->L + j0 : NULL;
    for (int r = 0; r < rows; r++) {
        float *s = S + (size_t)r * a->tile;
        int seen = a->causal ? min_int(i0 + r - j0 + 1, cols) : cols;  // causal: keys c < seen
        if (seen < 0) seen = 0;
        for (int c = seen; c < cols; c++) s[c] = -INFINITY;
        if (m)
            for (int c = 0; c < seen; c++)
                if (m[c] == 0) s[c] = -INFINITY;
    }
}

// A thread's scratch in the forward.
typedef struct {
    float S[ATTENTION_TILE_MAX * ATTENTION_TILE_MAX];  // scores of a tile, then exp(s - m)
    float m[ATTENTION_TILE_MAX];                       // running row max
    double l[ATTENTION_TILE_MAX];                      // running row sum of exp(s - m)
} ForwardScratch;

// Forward of one query tile of head h in sequence b, with the online
// softmax: m = running row max, l = running sum of exp(s - m); when a key tile
// raises m, the output accumulated so far is rescaled by exp(m_old - m_new).
// The output rows themselves are the accumulator (normalised by l at the end).
static void forward_tile(const Attention *a, float *out, float *lse, int b, int h, int i0, ForwardScratch *w) {
    float *S = w->S, *m = w->m;
    double *l = w->l;
    int rows = min_int(a->tile, a->L - i0), D = a->D, qs = a->qs, ks = a->ks;
    size_t at = ((size_t)b * a->L + i0) * qs + (size_t)h * D;
    size_t kv = (size_t)b * a->L * ks + (size_t)(h / a->group) * D;
    const float *Q = a->q + at, *K = a->k + kv, *V = a->v + kv;
    float *O = out + at;
    for (int r = 0; r < rows; r++) {
        m[r] = -INFINITY;
        l[r] = 0;
        memset(O + (size_t)r * qs, 0, sizeof(float) * (size_t)D);
    }
    int end = keys_end(a, i0, rows);
    for (int j0 = 0; j0 < end; j0 += a->tile) {
        int cols = min_int(a->tile, end - j0), unmasked = keys_unmasked(a, b, j0, cols);
        if (unmasked == 0) continue;
        // S = scale Q K^T
        gemm(0, 1, rows, cols, D, a->scale, Q, qs, K + (size_t)j0 * ks, ks, 0.0f, S, a->tile);
        if (tile_partial(a, i0, j0, cols, unmasked)) mask_tile(a, S, b, i0, rows, j0, cols);
        for (int r = 0; r < rows; r++) {
            float *s = S + (size_t)r * a->tile;
            float tile_max = -INFINITY;
#pragma omp simd reduction(max : tile_max)
            for (int c = 0; c < cols; c++) tile_max = s[c] > tile_max ? s[c] : tile_max;
            if (tile_max == -INFINITY) {  // nothing visible in this tile: adds nothing
                memset(s, 0, sizeof(float) * (size_t)cols);
                continue;
            }
            float m_new = m[r] > tile_max ? m[r] : tile_max, alpha = exp_approx(m[r] - m_new), sum = 0;
#pragma omp simd reduction(+ : sum)
            for (int c = 0; c < cols; c++) {
                s[c] = exp_approx(s[c] - m_new);
                sum += s[c];
            }
            l[r] = l[r] * alpha + sum;
            m[r] = m_new;
            if (alpha != 1.0f) {
                float *o = O + (size_t)r * qs;
                for (int d = 0; d < D; d++) o[d] *= alpha;
            }
        }
        gemm(0, 0, rows, D, cols, 1.0f, S, a->tile, V + (size_t)j0 * ks, ks, 1.0f, O, qs);  // O += P V
    }
    float *row_lse = lse + ((size_t)b * a->Hq + h) * a->L + i0;
    for (int r = 0; r < rows; r++) {
        if (m[r] == -INFINITY) {  // no visible key: zero output (already), lse = +inf
            row_lse[r] = INFINITY;
            continue;
        }
        float inv = (float)(1.0 / l[r]), *o = O + (size_t)r * qs;
        for (int d = 0; d < D; d++) o[d] *= inv;
        row_lse[r] = m[r] + (float)log(l[r]);
    }
}

// Work worth waking the other threads for: score entries times D.
static int attention_parallel(int B, int L, int Hq, int D) {
    return (size_t)B * Hq * L * L * D > KERNEL_PARALLEL_MIN;
}

void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *key_mask,
                       int B, int L, int Hq, int Hkv, int D, int causal, float scale) {
    Attention a = {q, k, v, key_mask, B, L, Hq, Hkv, D, causal, Hq / Hkv, Hq * D, Hkv * D, scale, tile_side(D)};
    int parallel = attention_parallel(B, L, Hq, D), threads = parallel ? omp_get_max_threads() : 1;
    int tiles = (L + a.tile - 1) / a.tile;
    ForwardScratch *scratch = malloc(sizeof(ForwardScratch) * (size_t)threads);
    if (scratch == NULL) return;
    // Tasks (b, h, query tile) are independent. Dynamic scheduling, the
    // longest (last, under a causal mask) query tiles first, ends balanced.
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (parallel)
    for (long task = 0; task < (long)B * Hq * tiles; task++) {
        int index = tiles - 1 - (int)(task % tiles), bh = (int)(task / tiles);  // query tile, last first
        forward_tile(&a, out, lse, bh / Hq, bh % Hq, index * a.tile, &scratch[omp_get_thread_num()]);
    }
    free(scratch);
}

// A thread's scratch in the backward.
typedef struct {
    float S[ATTENTION_TILE_MAX * ATTENTION_TILE_MAX];   // scores of a tile, then P
    float dP[ATTENTION_TILE_MAX * ATTENTION_TILE_MAX];  // dO V^T, then dS
    float delta[ATTENTION_TILE_MAX];                    // rowsum(dO * O)
} BackwardScratch;

// Backward of one query tile of head h in sequence b against every key tile
// it sees: dq rows overwritten; dK, dV (the KV head's rows 0..L-1, row stride
// dkv_stride) accumulated. P = exp(S - lse) is rebuilt from q and k;
// dS = P * (dP - delta) with dP = dO V^T and delta = rowsum(dO * O).
static void backward_tile(const Attention *a, float *dq, float *dK, float *dV, int dkv_stride, const float *dout,
                          const float *out, const float *lse, int b, int h, int i0, BackwardScratch *w) {
    float *S = w->S, *dP = w->dP, *delta = w->delta;
    int rows = min_int(a->tile, a->L - i0), D = a->D, qs = a->qs, ks = a->ks;
    size_t at = ((size_t)b * a->L + i0) * qs + (size_t)h * D;
    size_t kv = (size_t)b * a->L * ks + (size_t)(h / a->group) * D;
    const float *Q = a->q + at, *K = a->k + kv, *V = a->v + kv, *dO = dout + at, *O = out + at;
    const float *row_lse = lse + ((size_t)b * a->Hq + h) * a->L + i0;
    float *dQ = dq + at;
    for (int r = 0; r < rows; r++) {
        delta[r] = dot(dO + (size_t)r * qs, O + (size_t)r * qs, D);
        memset(dQ + (size_t)r * qs, 0, sizeof(float) * (size_t)D);
    }
    int end = keys_end(a, i0, rows);
    for (int j0 = 0; j0 < end; j0 += a->tile) {
        int cols = min_int(a->tile, end - j0), unmasked = keys_unmasked(a, b, j0, cols);
        if (unmasked == 0) continue;
        const float *Kj = K + (size_t)j0 * ks, *Vj = V + (size_t)j0 * ks;
        gemm(0, 1, rows, cols, D, a->scale, Q, qs, Kj, ks, 0.0f, S, a->tile);  // S = scale Q K^T
        gemm(0, 1, rows, cols, D, 1.0f, dO, qs, Vj, ks, 0.0f, dP, a->tile);    // dP = dO V^T
        if (tile_partial(a, i0, j0, cols, unmasked)) mask_tile(a, S, b, i0, rows, j0, cols);
        for (int r = 0; r < rows; r++) {
            float *p = S + (size_t)r * a->tile, *ds = dP + (size_t)r * a->tile;
            float row = row_lse[r], dr = delta[r];
            if (row == INFINITY) {  // row saw no key: no gradient through it
                memset(p, 0, sizeof(float) * (size_t)cols);
                memset(ds, 0, sizeof(float) * (size_t)cols);
                continue;
            }
            float scale = a->scale;
#pragma omp simd
            for (int c = 0; c < cols; c++) {
                p[c] = exp_approx(p[c] - row);  // masked entries: exp(-inf) = 0
                ds[c] = p[c] * (ds[c] - dr) * scale;
            }
        }
        float *dKj = dK + (size_t)j0 * dkv_stride, *dVj = dV + (size_t)j0 * dkv_stride;
        gemm(1, 0, cols, D, rows, 1.0f, S, a->tile, dO, qs, 1.0f, dVj, dkv_stride);  // dV += P^T dO
        gemm(1, 0, cols, D, rows, 1.0f, dP, a->tile, Q, qs, 1.0f, dKj, dkv_stride);  // dK += dS^T Q
        gemm(0, 0, rows, D, cols, 1.0f, dP, a->tile, Kj, ks, 1.0f, dQ, qs);          // dQ += dS K
    }
}

static int gcd(int a, int b) { return b == 0 ? a : gcd(b, a % b); }

// Which part of its (b, KV head) unit the idx-th (head, query tile) pair goes
// to: dealt out in a snake order (0 1 1 0 0 1 ...) so that, under a causal
// mask where later tiles cost more, the parts get near-equal work.
static int part_of(int idx, int parts) {
    int round = idx / parts, pos = idx % parts;
    return round % 2 ? parts - 1 - pos : pos;
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                        const float *q, const float *k, const float *v, const int32_t *key_mask, int B, int L, int Hq,
                        int Hkv, int D, int causal, float scale) {
    Attention a = {q, k, v, key_mask, B, L, Hq, Hkv, D, causal, Hq / Hkv, Hq * D, Hkv * D, scale, tile_side(D)};
    int parallel = attention_parallel(B, L, Hq, D), threads = parallel ? omp_get_max_threads() : 1;
    int tiles = (L + a.tile - 1) / a.tile, units = B * Hkv, pairs = a.group * tiles;
    // A unit is one (b, KV head): all the query heads reading that KV head, so
    // it alone adds into those dK, dV rows and writes those dq rows; units run
    // in parallel with no shared writes, and each sum runs in a fixed order
    // (the same bits for any thread count or schedule). The alternative,
    // tasks per (b, query head, query tile) as in the forward with a
    // per-thread copy of dk and dv summed at the end, measured the same CPU
    // time on bench/attention.sh's shapes (within noise) but needs those
    // copies (5.4 MB for the 6B text shape, 10.6 MB for its ViT-H at 448 px on
    // 2 threads, growing with the thread count) and gives gradients that
    // depend on the thread count. When the unit count is not a multiple of
    // the thread count (a single KV head, an odd count), each unit is split
    // into `parts` over its (head, query tile) pairs, part 0 adding into dk,
    // dv and the others into their own [L, D] dK, dV copies added in
    // afterwards in part order, so every thread gets equal work.
    int parts = threads / gcd(units, threads);
    size_t part_size = (size_t)2 * L * D;  // dK, dV of a part
    BackwardScratch *scratch = malloc(sizeof(BackwardScratch) * (size_t)threads);
    float *part_grads = parts > 1 ? malloc(sizeof(float) * part_size * (size_t)units * (parts - 1)) : NULL;
    if (scratch == NULL || (parts > 1 && part_grads == NULL)) {
        free(scratch);
        free(part_grads);
        return;
    }
#pragma omp parallel num_threads(threads) if (parallel)
    {
        BackwardScratch *w = &scratch[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < units * parts; task++) {
            int unit = task / parts, part = task % parts, b = unit / Hkv, g = unit % Hkv;
            float *dK = dk + (size_t)b * L * a.ks + (size_t)g * D, *dV = dv + (size_t)b * L * a.ks + (size_t)g * D;
            int stride = a.ks;
            if (part > 0) {
                dK = part_grads + ((size_t)unit * (parts - 1) + part - 1) * part_size;
                dV = dK + (size_t)L * D;
                stride = D;
            }
            for (int j = 0; j < L; j++) {
                memset(dK + (size_t)j * stride, 0, sizeof(float) * (size_t)D);
                memset(dV + (size_t)j * stride, 0, sizeof(float) * (size_t)D);
            }
            for (int idx = 0; idx < pairs; idx++)
                if (part_of(idx, parts) == part)
                    backward_tile(&a, dq, dK, dV, stride, dout, out, lse, b, g * a.group + idx / tiles,
                                  (idx % tiles) * a.tile, w);
        }
        if (parts > 1) {
#pragma omp for schedule(static)
            for (long row = 0; row < (long)units * L; row++) {
                int unit = (int)(row / L), j = (int)(row % L), b = unit / Hkv, g = unit % Hkv;
                size_t at = ((size_t)b * L + j) * a.ks + (size_t)g * D;
                for (int part = 1; part < parts; part++) {
                    const float *pk = part_grads + ((size_t)unit * (parts - 1) + part - 1) * part_size + (size_t)j * D;
                    const float *pv = pk + (size_t)L * D;
                    for (int d = 0; d < D; d++) {
                        dk[at + d] += pk[d];
                        dv[at + d] += pv[d];
                    }
                }
            }
        }
    }
    free(scratch);
    free(part_grads);
}
