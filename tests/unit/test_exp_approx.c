// The vectorisable e^x of the CPU kernels (src/kernels/cpu/exp_approx.h)
// against libm's double exp, and the kernels built on it (sigmoid-gated
// activations, GELU's derivative, SwiGLU, cross-entropy) against double-precision closed forms,
// on sizes that take the threaded path and leave a vector remainder.
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/base/rng.h"
#include "../../src/kernels/cpu/exp_approx.h"
#include "../../src/kernels/kernels.h"

static double rel_error(double got, double want) { return fabs(got - want) / fabs(want); }

static void track(float x, double *worst, double *worst_x, double *worst_abs) {
    double want = exp((double)x), got = exp_approx(x);
    if (want >= FLT_MIN) {  // a normal float: relative error
        double r = rel_error(got, want);
        if (r > *worst) *worst = r, *worst_x = x;
    } else if (fabs(got - want) > *worst_abs) {  // below: subnormal or 0, absolute
        *worst_abs = fabs(got - want);
    }
}

Test(exp_approx, dense_sweep_against_libm) {
    // Every 2^-15 over [-88, 88] (5.8 million points), then a million random
    // floats near 0 (magnitudes 2^-40 .. 2^-1, where x - n ln2 is smallest)
    // and a million anywhere in [-88, 88].
    double worst = 0, worst_x = 0, worst_abs = 0;
    for (int64_t k = -88 * 32768; k <= 88 * 32768; k++) track(ldexpf((float)k, -15), &worst, &worst_x, &worst_abs);
    Rng rng;
    rng_seed(&rng, 10);
    for (int i = 0; i < 1000000; i++) {
        float sign = rng_uniform(&rng) < 0.5 ? -1.0f : 1.0f;
        track(sign * ldexpf((float)(1 + rng_uniform(&rng)), -1 - (int)rng_below(&rng, 40)), &worst, &worst_x,
              &worst_abs);
        track((float)(176 * rng_uniform(&rng) - 88), &worst, &worst_x, &worst_abs);
    }
    cr_expect_lt(worst, 2e-7, "max relative error %.3g at x = %.9g", worst, worst_x);
    cr_expect_leq(worst_abs, FLT_MIN, "below FLT_MIN the error is %.3g absolute", worst_abs);
}

Test(exp_approx, edges) {
    cr_expect_eq(exp_approx(0.0f), 1.0f);
    cr_expect_eq(exp_approx(-0.0f), 1.0f);
    cr_expect_eq(exp_approx(-INFINITY), 0.0f);
    cr_expect_eq(exp_approx(-88.0f), 0.0f);  // true value 6e-39, below FLT_MIN
    cr_expect_eq(exp_approx(-1000.0f), 0.0f);
    cr_expect_eq(exp_approx(-FLT_MAX), 0.0f);
    float tiny = exp_approx(-87.0f);  // e^-87 = 1.65e-38, still normal
    cr_expect_lt(rel_error(tiny, exp(-87.0)), 2e-7, "e^-87 = %g", tiny);
    // Clamped at 88 above: finite, e^88 to float precision.
    float top = exp_approx(88.0f);
    cr_expect_lt(rel_error(top, exp(88.0)), 2e-7, "e^88 = %g", top);
    cr_expect_eq(exp_approx(89.0f), top);
    cr_expect_eq(exp_approx(INFINITY), top);
    cr_expect(isnan(exp_approx(NAN)));
    // Sigmoid stays in [0, 1] at the far ends and is exact at 0.
    cr_expect_eq(sigmoid_approx(0.0f), 0.5f);
    cr_expect_eq(sigmoid_approx(100.0f), 1.0f);
    cr_expect_eq(sigmoid_approx(INFINITY), 1.0f);
    cr_expect(sigmoid_approx(-100.0f) >= 0.0f && sigmoid_approx(-100.0f) < 1e-38f);
    cr_expect(sigmoid_approx(-INFINITY) >= 0.0f && sigmoid_approx(-INFINITY) < 1e-38f);
}

static double sigmoid_exact(double x) { return 1.0 / (1.0 + exp(-x)); }

// Each value within rel of the double reference, or within abs of it when
// the reference is near 0 (differences of nearly equal terms).
static void expect_close(const float *got, const double *want, size_t n, double rel, double abs_tol, const char *what) {
    double worst = 0;
    size_t worst_i = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(got[i] - want[i]) / (fabs(want[i]) + abs_tol / rel);
        if (e > worst) worst = e, worst_i = i;
    }
    cr_expect_lt(worst, rel, "%s: error %.3g at %zu (got %.9g, want %.9g)", what, worst, worst_i, got[worst_i],
                 want[worst_i]);
}

// Past KERNEL_PARALLEL_MIN (threaded), and odd (a vector remainder).
#define N_ELEMENTS (((size_t)1 << 17) + 7)

Test(exp_approx, sigmoid_kernels_match_double) {
    size_t n = N_ELEMENTS;
    float *x = malloc(n * sizeof(float)), *u = malloc(n * sizeof(float)), *dy = malloc(n * sizeof(float));
    float *y = malloc(n * sizeof(float)), *y2 = malloc(n * sizeof(float));
    double *want = malloc(n * sizeof(double)), *want2 = malloc(n * sizeof(double));
    Rng rng;
    rng_seed(&rng, 11);
    for (size_t i = 0; i < n; i++) {
        x[i] = (float)(8 * rng_normal(&rng));  // into the tails, where e^-x is large
        u[i] = (float)rng_normal(&rng);
        dy[i] = (float)rng_normal(&rng);
    }
    const float ks[2] = {1.0f, 1.702f};
    const Activation acts[2] = {ACT_SILU, ACT_QUICK_GELU};
    for (int a = 0; a < 2; a++) {
        double k = ks[a];
        activation_forward(y, x, n, acts[a]);
        activation_backward(y2, dy, x, n, acts[a]);
        for (size_t i = 0; i < n; i++) {
            // The argument k x rounded to float as the kernel (and libm's
            // expf before it) sees it: at k x = -40 that rounding alone is
            // 2e-6 of e^(k x).
            double s = sigmoid_exact(ks[a] * x[i]);
            want[i] = x[i] * s;
            want2[i] = dy[i] * (s + k * x[i] * s * (1 - s));
        }
        expect_close(y, want, n, 1e-6, 1e-30, a == 0 ? "silu" : "quick_gelu");
        expect_close(y2, want2, n, 1e-6, 1e-7, a == 0 ? "silu backward" : "quick_gelu backward");
    }
    // GELU backward, in place (dx = dy) as the model calls it.
    memcpy(y, dy, n * sizeof(float));
    activation_backward(y, y, x, n, ACT_GELU);
    for (size_t i = 0; i < n; i++) {
        double cdf = 0.5 * (1 + erf(x[i] / sqrt(2.0))), pdf = exp(-0.5 * x[i] * x[i]) / sqrt(2 * M_PI);
        want[i] = dy[i] * (cdf + x[i] * pdf);
    }
    expect_close(y, want, n, 1e-6, 1e-7, "gelu backward");
    swiglu_forward(y, x, u, n);
    for (size_t i = 0; i < n; i++) want[i] = x[i] * sigmoid_exact(x[i]) * u[i];
    expect_close(y, want, n, 1e-6, 1e-30, "swiglu");
    swiglu_backward(y, y2, dy, x, u, n);  // dgate, dup
    for (size_t i = 0; i < n; i++) {
        double s = sigmoid_exact(x[i]);
        want[i] = dy[i] * u[i] * s * (1 + x[i] * (1 - s));
        want2[i] = dy[i] * x[i] * s;
    }
    expect_close(y, want, n, 1e-6, 1e-7, "swiglu dgate");
    expect_close(y2, want2, n, 1e-6, 1e-30, "swiglu dup");
    free(x), free(u), free(dy), free(y), free(y2), free(want), free(want2);
}

Test(exp_approx, cross_entropy_matches_double) {
    enum { N = 5, V = 32003 };
    float *logits = malloc((size_t)N * V * sizeof(float));
    double *want = malloc((size_t)N * V * sizeof(double));
    int32_t targets[N] = {3, KERNEL_IGNORE_INDEX, V - 1, 17, 0};
    Rng rng;
    rng_seed(&rng, 12);
    for (size_t i = 0; i < (size_t)N * V; i++) logits[i] = (float)(4 * rng_normal(&rng));
    double want_lse[N], want_total = 0;
    for (int n = 0; n < N; n++) {
        const float *row = logits + (size_t)n * V;
        double m = -INFINITY, s = 0;
        for (int v = 0; v < V; v++) m = fmax(m, row[v]);
        for (int v = 0; v < V; v++) s += exp(row[v] - m);
        want_lse[n] = targets[n] == KERNEL_IGNORE_INDEX ? 0 : m + log(s);
        if (targets[n] != KERNEL_IGNORE_INDEX) want_total += want_lse[n] - row[targets[n]];
        for (int v = 0; v < V; v++) {
            double p = targets[n] == KERNEL_IGNORE_INDEX ? 0 : exp(row[v] - want_lse[n]) - (v == targets[n]);
            want[(size_t)n * V + v] = 0.25 * p;
        }
    }
    float lse[N];
    double total = cross_entropy_forward(lse, logits, targets, N, V);
    cr_expect_lt(rel_error(total, want_total), 1e-6, "total %.9g, want %.9g", total, want_total);
    for (int n = 0; n < N; n++)
        cr_expect(fabs(lse[n] - want_lse[n]) <= 1e-6 * fabs(want_lse[n]), "row %d lse %.9g, want %.9g", n, lse[n],
                  want_lse[n]);
    cross_entropy_backward(logits, lse, targets, N, V, 0.25f);
    // lse is a float, so each probability carries its rounding (|lse| ~ 20,
    // half an ulp 1e-6 absolute in the exponent): relative 2e-6.
    expect_close(logits, want, (size_t)N * V, 2e-6, 1e-12, "cross-entropy backward");
    free(logits), free(want);
}
