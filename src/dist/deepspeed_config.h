// deepspeed_config.h - the ZeRO stage of a DeepSpeed JSON config, the files
// LLaMA-Factory recipes name with `deepspeed:` (examples/deepspeed/
// ds_z0_config.json ... ds_z3_offload_config.json): zero_optimization.stage.
// The rest of such a file ("auto" batch sizes, fp16/bf16 blocks, offload)
// is DeepSpeed's business; vlft takes batch sizes from the recipe.
#ifndef VLFT_DEEPSPEED_CONFIG_H
#define VLFT_DEEPSPEED_CONFIG_H

#include "../base/error.h"

// *stage = zero_optimization.stage (0 when the file has no
// zero_optimization block, as DeepSpeed defaults). Errors name the file.
int deepspeed_zero_stage(const char *path, int *stage, Error *err);

#endif
