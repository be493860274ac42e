// export.h - merge a LoRA adapter into its base model and write a Hugging
// Face folder (LLaMA-Factory's `llamafactory-cli export`).
#ifndef VLFT_EXPORT_H
#define VLFT_EXPORT_H

#include <stddef.h>

#include "../base/dtype.h"
#include "../base/error.h"

typedef struct {
    const char *model_dir;    // base model folder
    const char *adapter_dir;  // PEFT adapter folder, or NULL (re-shard / cast only)
    const char *export_dir;
    size_t max_shard_bytes;   // export_size GB; 0 = one file
    int keep_dtype;           // 1: each tensor keeps its checkpoint dtype
    DType dtype;              // else: F32, BF16 or F16 for every floating tensor
} ExportOptions;

// Writes the merged model into a temporary sibling folder and moves it onto
// export_dir only when complete. Prints nothing.
int export_merged_model(const ExportOptions *options, int *merged_count, Error *err);

#endif
