// vlft info DIR: load a model folder's config and weights, check every
// tensor against the config, and print a summary.
#include <stdio.h>
#include <string.h>

#include "../io/safetensors.h"
#include "../model/config.h"
#include "../model/layout.h"
#include "commands.h"

static const char *projector_name(ProjectorKind kind) {
    switch (kind) {
    case PROJECTOR_YIVL: return "Yi-VL (linear, LayerNorm, gelu, linear, LayerNorm)";
    case PROJECTOR_LLAVA: return "LLaVA (linear, gelu, linear)";
    default: return "none";
    }
}

int command_info(int argc, char **argv) {
    if (argc != 2 || argv[1][0] == '-') {
        int help = argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0);
        fprintf(help ? stdout : stderr,
                "usage: vlft info MODEL_DIR\n\nChecks config.json and the safetensors weights of a model folder "
                "against each other and prints a summary.\n");
        return help ? EXIT_OK : EXIT_USAGE;
    }
    const char *dir = argv[1];
    Error err;
    ModelConfig config;
    Safetensors weights;
    if (model_config_load(&config, dir, &err) != 0 || safetensors_open_dir(&weights, dir, "model", &err) != 0) {
        fprintf(stderr, "vlft info: %s\n", err.message);
        return EXIT_BAD_INPUT;
    }
    ProjectorKind projector = config.has_vision ? layout_detect_projector(&weights) : PROJECTOR_NONE;
    Layout layout;
    int rc = layout_build(&layout, &config, projector, &err);
    if (rc == 0) rc = layout_check(&layout, &weights, &err);
    if (rc != 0) {
        fprintf(stderr, "vlft info: %s\n", err.message);
        safetensors_close(&weights);
        return EXIT_BAD_INPUT;
    }
    size_t params[3] = {0, 0, 0}, bytes = 0;
    for (int i = 0; i < layout.count; i++) {
        const TensorInfo *t = layout_lookup(&weights, layout.entries[i].name);
        params[layout.entries[i].group] += t->numel;
        bytes += t->nbytes;
    }
    const TextConfig *t = &config.text;
    printf("model        %s (%s)\n", dir, config.model_type);
    if (config.has_vision) {
        const VisionConfig *v = &config.vision;
        printf("vision       CLIP ViT %dpx patch %d: %d layers (%d used), hidden %d, %d heads, MLP %d, %s\n",
               v->image_size, v->patch_size, v->num_hidden_layers, model_config_vision_layers_needed(&config),
               v->hidden_size, v->num_attention_heads, v->intermediate_size, v->hidden_act);
        printf("projector    %s\n", projector_name(projector));
        printf("image tokens %d per image (token id %d)\n", config.image_seq_length, config.image_token_index);
    }
    printf("language     LLaMA: %d layers, hidden %d, %d heads / %d KV heads, MLP %d, vocab %d, rope_theta %g\n",
           t->num_hidden_layers, t->hidden_size, t->num_attention_heads, t->num_key_value_heads, t->intermediate_size,
           t->vocab_size, t->rope_theta);
    printf("parameters   vision %zu, projector %zu, language %zu, total %zu\n", params[PARAM_VISION],
           params[PARAM_PROJECTOR], params[PARAM_LANGUAGE], params[0] + params[1] + params[2]);
    printf("weights      %d tensors in %d file%s, %.1f MB, all present with the shapes config.json implies\n",
           weights.n_tensors, weights.n_files, weights.n_files == 1 ? "" : "s", (double)bytes / 1e6);
    layout_free(&layout);
    safetensors_close(&weights);
    return EXIT_OK;
}
