// adapter.h - a PEFT LoRA adapter folder (adapter_config.json +
// adapter_model.safetensors), as PEFT and LLaMA-Factory write it.
//
// Tensor names: base_model.model.<module path>.lora_A.weight [r, in] and
// .lora_B.weight [out, r] (an adapter name such as ".default" may precede
// ".weight"); full replacements for modules_to_save as
// base_model.model.<module path>.[modules_to_save.[default.]]<param>.
// Module paths are mapped onto the classic LLaVA names (see layout.h) so an
// adapter made against either transformers spelling applies to the same base.
#ifndef VLFT_ADAPTER_H
#define VLFT_ADAPTER_H

#include "../io/safetensors.h"

typedef struct {
    char module[200];        // classic module path, e.g. language_model.model.layers.0.self_attn.q_proj
    const TensorInfo *a;     // [r, in]
    const TensorInfo *b;     // [out, r]
} LoraPair;

typedef struct {
    char tensor[220];        // classic tensor name it replaces
    const TensorInfo *value;
} SavedModule;

// adapter_config.json, checked.
typedef struct {
    int rank;
    double alpha;
    double dropout;
    int use_rslora;               // scale alpha / sqrt(r) instead of alpha / r
    char target_modules[4096];    // comma-separated (a string target_modules is kept as it is)
    char modules_to_save[1024];   // comma-separated, "" when null
    char base_model[1024];
} AdapterConfig;

int adapter_config_load(AdapterConfig *config, const char *dir, Error *err);

typedef struct {
    Safetensors weights;
    int rank;
    double alpha;
    double scale;            // alpha / r, or alpha / sqrt(r) with use_rslora
    double dropout;
    char base_model[1024];
    int n_pairs;
    LoraPair *pairs;
    int n_saved;
    SavedModule *saved;
} Adapter;

int adapter_load(Adapter *adapter, const char *dir, Error *err);
void adapter_free(Adapter *adapter);
// The LoRA pair acting on a classic weight name ("<module>.weight"), or NULL.
const LoraPair *adapter_find(const Adapter *adapter, const char *weight_name);
const SavedModule *adapter_find_saved(const Adapter *adapter, const char *tensor_name);

// weight [out, in] (row-major f32) += scale * B @ A for one pair.
int adapter_merge_pair(const Adapter *adapter, const LoraPair *pair, float *weight, int64_t out_features,
                       int64_t in_features, Error *err);

#endif
