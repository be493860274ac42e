// fuzz_scratch.h - shared by the fuzz targets that read a whole folder: one
// scratch folder per process under /tmp, and a helper that writes a file in it.
#ifndef VLFT_FUZZ_SCRATCH_H
#define VLFT_FUZZ_SCRATCH_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Creates the folder on first use; returns its path.
static inline const char *fuzz_scratch_dir(char *dir, size_t dir_size, const char *tag) {
    if (!dir[0]) {
        snprintf(dir, dir_size, "/tmp/vlft-fuzz-%s-XXXXXX", tag);
        if (!mkdtemp(dir)) abort();
    }
    return dir;
}

static inline void fuzz_scratch_write(const char *dir, const char *name, const void *data, size_t size) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
}

// A valid safetensors file with one F32 tensor `name` of shape [rows, cols]
// (values 0.5); the caller frees the result.
static inline uint8_t *fuzz_small_safetensors(const char *name, int rows, int cols, size_t *size) {
    char header[512];
    size_t nbytes = (size_t)rows * cols * 4;
    int n = snprintf(header, sizeof header, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[0,%zu]}}",
                     name, rows, cols, nbytes);
    while (n % 8) header[n++] = ' ';
    *size = 8 + (size_t)n + nbytes;
    uint8_t *out = malloc(*size);
    if (!out) abort();
    uint64_t len = (uint64_t)n;
    for (int i = 0; i < 8; i++) out[i] = (uint8_t)(len >> (8 * i));
    memcpy(out + 8, header, (size_t)n);
    float half = 0.5f;
    for (size_t i = 0; i < (size_t)rows * cols; i++) memcpy(out + 8 + n + 4 * i, &half, 4);
    return out;
}

#endif
