#include "dtype.h"

#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtype_table[DTYPE_COUNT] = {
    [DTYPE_F32] = {"F32", 4},  [DTYPE_F16] = {"F16", 2}, [DTYPE_BF16] = {"BF16", 2},
    [DTYPE_F64] = {"F64", 8},  [DTYPE_I64] = {"I64", 8}, [DTYPE_I32] = {"I32", 4},
    [DTYPE_I16] = {"I16", 2},  [DTYPE_I8] = {"I8", 1},   [DTYPE_U8] = {"U8", 1},
    [DTYPE_BOOL] = {"BOOL", 1},
};

const char *dtype_name(DType dtype) { return dtype < DTYPE_COUNT ? dtype_table[dtype].name : "?"; }

size_t dtype_size(DType dtype) { return dtype < DTYPE_COUNT ? dtype_table[dtype].size : 0; }

int dtype_from_name(const char *name, DType *out) {
    for (int i = 0; i < DTYPE_COUNT; i++) {
        if (strcmp(name, dtype_table[i].name) == 0) {
            *out = (DType)i;
            return 0;
        }
    }
    return -1;
}

uint16_t f32_to_bf16(float f) {
    union { float f; uint32_t u; } v = {.f = f};
    if (isnan(f)) return (uint16_t)((v.u >> 16) | 0x40);  // keep it a quiet NaN
    uint32_t rounding_bias = 0x7fff + ((v.u >> 16) & 1);
    return (uint16_t)((v.u + rounding_bias) >> 16);
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exponent = (h >> 10) & 0x1f;
    uint32_t mantissa = h & 0x3ff;
    union { uint32_t u; float f; } v;
    if (exponent == 0) {
        // zero or subnormal: value = mantissa * 2^-24
        float magnitude = ldexpf((float)mantissa, -24);
        return sign ? -magnitude : magnitude;
    }
    if (exponent == 31) {
        v.u = sign | 0x7f800000u | (mantissa << 13);
        return v.f;
    }
    v.u = sign | ((exponent + 112) << 23) | (mantissa << 13);
    return v.f;
}

uint16_t f32_to_f16(float f) {
    union { float f; uint32_t u; } v = {.f = f};
    uint16_t sign = (uint16_t)((v.u >> 16) & 0x8000);
    float a = fabsf(f);
    if (isnan(f)) return sign | 0x7e00;
    if (a >= 65520.0f) return sign | 0x7c00;  // rounds to infinity
    if (a < 6.103515625e-05f) {
        // subnormal range: quantum 2^-24, round half to even via rintf
        return sign | (uint16_t)rintf(a * 16777216.0f);
    }
    uint32_t bits = v.u & 0x7fffffffu;
    uint32_t exponent = (bits >> 23) - 112;
    uint32_t mantissa = bits & 0x7fffff;
    uint32_t half = (exponent << 10) | (mantissa >> 13);
    uint32_t rest = mantissa & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) half++;
    return sign | (uint16_t)half;
}

static int is_floating(DType d) { return d == DTYPE_F32 || d == DTYPE_F16 || d == DTYPE_BF16 || d == DTYPE_F64; }

static float load_as_f32(const void *src, DType dtype, size_t i) {
    switch (dtype) {
    case DTYPE_F32: return ((const float *)src)[i];
    case DTYPE_F16: return f16_to_f32(((const uint16_t *)src)[i]);
    case DTYPE_BF16: return bf16_to_f32(((const uint16_t *)src)[i]);
    default: return (float)((const double *)src)[i];
    }
}

int dtype_convert(void *dst, DType dst_dtype, const void *src, DType src_dtype, size_t n) {
    if (!is_floating(dst_dtype) || !is_floating(src_dtype)) return -1;
    if (dst_dtype == src_dtype) {
        memcpy(dst, src, n * dtype_size(dst_dtype));
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (src_dtype == DTYPE_F64 && dst_dtype == DTYPE_F32) {
            ((float *)dst)[i] = (float)((const double *)src)[i];
            continue;
        }
        float x = load_as_f32(src, src_dtype, i);
        switch (dst_dtype) {
        case DTYPE_F32: ((float *)dst)[i] = x; break;
        case DTYPE_F16: ((uint16_t *)dst)[i] = f32_to_f16(x); break;
        case DTYPE_BF16: ((uint16_t *)dst)[i] = f32_to_bf16(x); break;
        default: ((double *)dst)[i] = (double)x; break;  // from a 16/32-bit source the f32 is exact
        }
    }
    return 0;
}
