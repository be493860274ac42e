// CPU kernels: LayerNorm (CLIP, Yi-VL projector) and RMSNorm (LLaMA).
// Statistics are accumulated in double so long rows do not lose precision.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels.h"

void layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b, int N,
                       int C, float eps) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > KERNEL_PARALLEL_MIN)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C;
        double s = 0, ss = 0;
        for (int c = 0; c < C; c++) s += xr[c];
        double m = s / C;
        for (int c = 0; c < C; c++) ss += (xr[c] - m) * (xr[c] - m);
        float rs = (float)(1.0 / sqrt(ss / C + eps));
        mean[n] = (float)m;
        rstd[n] = rs;
        float *yr = y + (size_t)n * C;
        for (int c = 0; c < C; c++) yr[c] = ((xr[c] - (float)m) * rs) * w[c] + (b ? b[c] : 0.0f);
    }
}

void layernorm_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *mean,
                        const float *rstd, const float *w, int N, int C) {
    // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w
    if (dx) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > KERNEL_PARALLEL_MIN)
        for (int n = 0; n < N; n++) {
            const float *xr = x + (size_t)n * C, *dyr = dy + (size_t)n * C;
            double sg = 0, sgx = 0;
            for (int c = 0; c < C; c++) {
                float xhat = (xr[c] - mean[n]) * rstd[n];
                float g = dyr[c] * w[c];
                sg += g;
                sgx += g * xhat;
            }
            float mg = (float)(sg / C), mgx = (float)(sgx / C);
            float *dxr = dx + (size_t)n * C;
            for (int c = 0; c < C; c++) {
                float xhat = (xr[c] - mean[n]) * rstd[n];
                dxr[c] = rstd[n] * (dyr[c] * w[c] - mg - xhat * mgx);
            }
        }
    }
    if (dw || db) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > KERNEL_PARALLEL_MIN)
        for (int c = 0; c < C; c++) {
            double sw = 0, sb = 0;
            for (int n = 0; n < N; n++) {
                float d = dy[(size_t)n * C + c];
                sw += d * ((x[(size_t)n * C + c] - mean[n]) * rstd[n]);
                sb += d;
            }
            if (dw) dw[c] += (float)sw;
            if (db) db[c] += (float)sb;
        }
    }
}

void rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int N, int C, float eps) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > KERNEL_PARALLEL_MIN)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C;
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)xr[c] * xr[c];
        float rs = (float)(1.0 / sqrt(ss / C + eps));
        rstd[n] = rs;
        float *yr = y + (size_t)n * C;
        for (int c = 0; c < C; c++) yr[c] = w[c] * (xr[c] * rs);
    }
}

void rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *rstd, const float *w, int N,
                      int C) {
    // y = w * x * r, r = (mean(x^2)+eps)^-1/2 ; dx = r * (g - x * r^2 * mean(g * x)), g = dy * w
    if (dx) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > KERNEL_PARALLEL_MIN)
        for (int n = 0; n < N; n++) {
            const float *xr = x + (size_t)n * C, *dyr = dy + (size_t)n * C;
            double sgx = 0;
            for (int c = 0; c < C; c++) sgx += (double)dyr[c] * w[c] * xr[c];
            float r = rstd[n];
            float k = (float)(sgx / C) * r * r;
            float *dxr = dx + (size_t)n * C;
            for (int c = 0; c < C; c++) dxr[c] = r * (dyr[c] * w[c] - xr[c] * k);
        }
    }
    if (dw) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > KERNEL_PARALLEL_MIN)
        for (int c = 0; c < C; c++) {
            double s = 0;
            for (int n = 0; n < N; n++) s += (double)dy[(size_t)n * C + c] * x[(size_t)n * C + c] * rstd[n];
            dw[c] += (float)s;
        }
    }
}
