// dtype.h - element types of tensors as safetensors names them, and the
// conversions between the floating ones (bf16/f16 <-> f32).
#ifndef VLFT_DTYPE_H
#define VLFT_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    DTYPE_F32,
    DTYPE_F16,
    DTYPE_BF16,
    DTYPE_F64,
    DTYPE_I64,
    DTYPE_I32,
    DTYPE_I16,
    DTYPE_I8,
    DTYPE_U8,
    DTYPE_BOOL,
    DTYPE_COUNT
} DType;

// "F32", "BF16", ... as written in a safetensors header.
const char *dtype_name(DType dtype);
// Parses a safetensors dtype name; returns -1 when unknown.
int dtype_from_name(const char *name, DType *out);
size_t dtype_size(DType dtype);

// bf16 is the top half of an f32; rounding to nearest even as PyTorch does.
static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}
uint16_t f32_to_bf16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts n elements of a floating dtype (F32, F16, BF16, F64) into dst.
// Returns -1 when src_dtype/dst_dtype is not floating.
int dtype_convert(void *dst, DType dst_dtype, const void *src, DType src_dtype, size_t n);

#endif
