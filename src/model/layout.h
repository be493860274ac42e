// layout.h - the tensors of a Hugging Face LLaVA / LLaMA checkpoint.
//
// One list, built from a ModelConfig, of every tensor name and shape that
// transformers' LlavaForConditionalGeneration (or LlamaForCausalLM) saves, in
// its module order. init-tiny writes exactly this list; the loader checks a
// checkpoint against it. Names use the classic prefix
// ("language_model.model.layers.0...", "vision_tower.vision_model...");
// layout_canonical_name() maps the newer transformers spelling
// ("model.language_model.layers.0...", "lm_head.weight") onto it.
#ifndef VLFT_LAYOUT_H
#define VLFT_LAYOUT_H

#include <stdint.h>

#include "../io/safetensors.h"
#include "config.h"

typedef enum {
    PARAM_VISION,     // vision_tower.*
    PARAM_PROJECTOR,  // multi_modal_projector.*
    PARAM_LANGUAGE,   // language_model.*
} ParamGroup;

typedef enum {
    INIT_NORMAL,  // N(0, 0.02^2): Linear, Embedding, conv weights
    INIT_ZERO,    // biases
    INIT_ONE,     // norm weights
    INIT_HEAD,    // lm_head: N(0, 1/hidden) (see init_tiny.c)
} ParamInit;

typedef struct {
    char name[160];
    int ndim;
    int64_t shape[4];
    ParamGroup group;
    ParamInit init;
} LayoutEntry;

typedef struct {
    int count;
    LayoutEntry *entries;
} Layout;

typedef enum { PROJECTOR_NONE, PROJECTOR_LLAVA, PROJECTOR_YIVL } ProjectorKind;

int layout_build(Layout *layout, const ModelConfig *config, ProjectorKind projector, Error *err);
void layout_free(Layout *layout);
const LayoutEntry *layout_find(const Layout *layout, const char *name);

// Writes into out the classic name of a checkpoint tensor name (identity for
// classic names). Returns -1 when it does not fit.
int layout_canonical_name(const char *name, char *out, size_t size);

// Which projector a checkpoint holds: linear_3/linear_4 present -> Yi-VL.
ProjectorKind layout_detect_projector(const Safetensors *weights);



// Checks that weights hold every tensor of the layout with its shape (under
// the classic or the newer name), and no tensor the layout lacks.
int layout_check(const Layout *layout, const Safetensors *weights, Error *err);
// The checkpoint tensor for a layout name, trying the newer spelling too.
const TensorInfo *layout_lookup(const Safetensors *weights, const char *classic_name);
#endif
