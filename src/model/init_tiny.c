#include "init_tiny.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/fs.h"
#include "../base/rng.h"
#include "../text/tiny_tokenizer.h"

void init_tiny_defaults(TinyOptions *o) {
    memset(o, 0, sizeof *o);
    o->projector = PROJECTOR_YIVL;
    o->n_shards = 1;
    o->seed = 0;
    o->dtype = DTYPE_F32;
    ModelConfig *c = &o->config;
    strcpy(c->model_type, "llava");
    c->has_vision = 1;
    c->vision = (VisionConfig){.hidden_size = 64, .intermediate_size = 256, .num_hidden_layers = 3,
                               .num_attention_heads = 4, .num_channels = 3, .image_size = 112, .patch_size = 16,
                               .projection_dim = 64, .layer_norm_eps = 1e-5};
    strcpy(c->vision.hidden_act, "quick_gelu");
    c->text = (TextConfig){.vocab_size = 1024, .hidden_size = 128, .intermediate_size = 352, .num_hidden_layers = 4,
                           .num_attention_heads = 4, .num_key_value_heads = 2, .head_dim = 32,
                           .max_position_embeddings = 4096, .rms_norm_eps = 1e-5, .rope_theta = 10000.0,
                           .bos_token_id = 1, .eos_token_id = 2, .pad_token_id = 0};
    strcpy(c->text.hidden_act, "silu");
    strcpy(c->projector_hidden_act, "gelu");
    c->vision_feature_layer = -2;
    strcpy(c->vision_feature_select_strategy, "default");
    c->image_token_index = 1000;
    c->image_seq_length = 49;  // (112 / 16)^2
    c->multimodal_projector_bias = 1;
    c->is_yi_vl_derived_model = 1;
    strcpy(c->torch_dtype, "float32");
}

void init_tiny_preset_yi_vl_6b(TinyOptions *o) {
    init_tiny_defaults(o);
    o->dtype = DTYPE_BF16;
    o->n_shards = 3;
    ModelConfig *c = &o->config;
    c->vision = (VisionConfig){.hidden_size = 1280, .intermediate_size = 5120, .num_hidden_layers = 32,
                               .num_attention_heads = 16, .num_channels = 3, .image_size = 448, .patch_size = 14,
                               .projection_dim = 1024, .layer_norm_eps = 1e-5};
    strcpy(c->vision.hidden_act, "gelu");
    c->text = (TextConfig){.vocab_size = 64064, .hidden_size = 4096, .intermediate_size = 11008, .num_hidden_layers = 32,
                           .num_attention_heads = 32, .num_key_value_heads = 4, .head_dim = 128,
                           .max_position_embeddings = 4096, .rms_norm_eps = 1e-5, .rope_theta = 5000000.0,
                           .bos_token_id = 1, .eos_token_id = 2, .pad_token_id = 0};
    strcpy(c->text.hidden_act, "silu");
    // Yi-VL-6B's own checkpoint says 64000. The id changes no shape, and the
    // bundled tokenizer's <image> id lets the folder come with tokenizer
    // files (below), so that `vlft train` runs on it, not only `_model-step`.
    c->image_token_index = TINY_TOKENIZER_IMAGE_TOKEN_ID;
    c->image_seq_length = 1024;
    strcpy(c->torch_dtype, "bfloat16");
}

typedef struct {
    uint64_t seed;
    const LayoutEntry *entry;
    int index;
} FillContext;

// Each tensor draws from its own streams, one per chunk of CHUNK elements
// seeded by (seed, tensor index, chunk), so the weights depend neither on the
// shard layout, the write order nor the number of threads.
#define CHUNK ((size_t)1 << 20)

static int fill_random(void *ctx, const TensorRef *t, void *dst, Error *err) {
    (void)err;
    const FillContext *f = ctx;
    size_t n = tensor_ref_nbytes(t) / dtype_size(t->dtype);
    size_t chunks = (n + CHUNK - 1) / CHUNK;
    #pragma omp parallel for schedule(dynamic)
    for (size_t c = 0; c < chunks; c++) {
        Rng rng;
        rng_seed(&rng, (f->seed * 1000003ull + (uint64_t)f->index) * 1000033ull + c);
        size_t end = (c + 1) * CHUNK < n ? (c + 1) * CHUNK : n;
        for (size_t i = c * CHUNK; i < end; i++) {
            float x;
            switch (f->entry->init) {
            case INIT_NORMAL: x = (float)(0.02 * rng_normal(&rng)); break;
            // Random perturbations of the usual 1 / 0 make the tests see every
            // norm weight and bias actually used.
            case INIT_ONE: x = (float)(1.0 + 0.1 * rng_normal(&rng)); break;
            // With std 0.02 a small model's logits stay within about +-2.5
            // (the final RMSNorm bounds the hidden state), so no token can
            // ever be predicted with confidence and a LoRA run (lm_head
            // frozen) cannot learn the demo. std 1/sqrt(hidden) gives logits
            // of unit spread at the start and room to grow.
            case INIT_HEAD: x = (float)(rng_normal(&rng) / sqrt((double)t->shape[1])); break;
            default: x = (float)(0.02 * rng_normal(&rng)); break;
            }
            dtype_convert((char *)dst + i * dtype_size(t->dtype), t->dtype, &x, DTYPE_F32, 1);
        }
    }
    return 0;
}

static int write_json_file(const char *dir, const char *name, const char *text, Error *err) {
    char path[4096];
    if (path_join(path, sizeof path, dir, name, err) != 0) return -1;
    return write_file_atomic(path, text, strlen(text), err);
}

int init_tiny_write(const char *dir, const TinyOptions *o, Error *err) {
    ModelConfig config = o->config;
    strcpy(config.torch_dtype, o->dtype == DTYPE_BF16 ? "bfloat16" : "float32");
    config.is_yi_vl_derived_model = o->projector == PROJECTOR_YIVL;
    Layout layout;
    if (layout_build(&layout, &config, o->projector, err) != 0) return -1;
    TensorRef *refs = calloc((size_t)layout.count, sizeof(TensorRef));
    FillContext *fills = calloc((size_t)layout.count, sizeof(FillContext));
    int rc = 0;
    if (refs == NULL || fills == NULL) rc = error_set(err, "%s: out of memory", dir);
    for (int i = 0; i < layout.count && rc == 0; i++) {
        fills[i] = (FillContext){o->seed, &layout.entries[i], i};
        refs[i].name = layout.entries[i].name;
        refs[i].dtype = o->dtype;
        refs[i].ndim = layout.entries[i].ndim;
        memcpy(refs[i].shape, layout.entries[i].shape, sizeof(int64_t) * 4);
        refs[i].fill = fill_random;
        refs[i].fill_ctx = &fills[i];
    }
    static const char *const metadata[] = {"format", "pt", NULL};
    if (rc == 0) rc = make_dirs(dir, err);
    if (rc == 0) rc = safetensors_write_dir(dir, "model", refs, layout.count, 0, o->n_shards, metadata, err);
    char *config_json = rc == 0 ? model_config_to_json(&config) : NULL;
    if (rc == 0) rc = write_json_file(dir, "config.json", config_json, err);
    free(config_json);
    char text[2048];
    if (rc == 0) {
        int s = config.vision.image_size;
        snprintf(text, sizeof text,
                 "{\n  \"crop_size\": {\"height\": %d, \"width\": %d},\n  \"do_center_crop\": true,\n"
                 "  \"do_convert_rgb\": true,\n  \"do_normalize\": true,\n  \"do_rescale\": true,\n  \"do_resize\": true,\n"
                 "  \"image_mean\": [0.48145466, 0.4578275, 0.40821073],\n"
                 "  \"image_processor_type\": \"CLIPImageProcessor\",\n"
                 "  \"image_std\": [0.26862954, 0.26130258, 0.27577711],\n  \"processor_class\": \"LlavaProcessor\",\n"
                 "  \"resample\": 3,\n  \"rescale_factor\": 0.00392156862745098,\n  \"size\": {\"shortest_edge\": %d}\n}\n",
                 s, s, s);
        rc = write_json_file(dir, "preprocessor_config.json", text, err);
    }
    if (rc == 0) {
        snprintf(text, sizeof text,
                 "{\n  \"_from_model_config\": true,\n  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n"
                 "  \"pad_token_id\": %d,\n  \"transformers_version\": \"4.49.0\"\n}\n",
                 config.text.bos_token_id, config.text.eos_token_id,
                 config.text.pad_token_id >= 0 ? config.text.pad_token_id : 0);
        rc = write_json_file(dir, "generation_config.json", text, err);
    }
    // The embedded Yi-like tokenizer fits models whose image token is its
    // <image> id (the tiny model); other shapes get no tokenizer files.
    if (rc == 0 && config.image_token_index == TINY_TOKENIZER_IMAGE_TOKEN_ID && config.text.vocab_size > 1001)
        rc = tiny_tokenizer_write(dir, err);
    free(refs);
    free(fills);
    layout_free(&layout);
    return rc;
}
