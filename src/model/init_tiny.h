// init_tiny.h - writes a random LLaVA model folder in the exact Hugging Face
// layout: config.json, weights (sharded with an index when asked),
// preprocessor_config.json, generation_config.json.
#ifndef VLFT_INIT_TINY_H
#define VLFT_INIT_TINY_H

#include <stdint.h>

#include "../base/dtype.h"
#include "config.h"
#include "layout.h"

typedef struct {
    ProjectorKind projector;  // PROJECTOR_YIVL or PROJECTOR_LLAVA
    int n_shards;             // 1 = model.safetensors
    uint64_t seed;
    DType dtype;              // DTYPE_F32 or DTYPE_BF16
    ModelConfig config;
} TinyOptions;

// The bundled tiny model's shapes (Yi-VL-style projector).
void init_tiny_defaults(TinyOptions *options);
// Yi-VL-6B's real shapes (bf16, about 13 GB).
void init_tiny_preset_yi_vl_6b(TinyOptions *options);
int init_tiny_write(const char *dir, const TinyOptions *options, Error *err);

#endif
