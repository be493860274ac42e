// vlft init-tiny DIR: a random LLaVA model in Hugging Face layout.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../model/init_tiny.h"
#include "commands.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: vlft init-tiny DIR [--projector yivl|llava] [--shards N] [--seed S] [--dtype f32|bf16]\n"
            "                          [--preset tiny|yi-vl-6b]\n\n"
            "Writes a random LLaVA model (config.json, safetensors weights, preprocessor_config.json,\n"
            "generation_config.json) with the tensor names and shapes transformers would save.\n"
            "--preset yi-vl-6b writes Yi-VL-6B's real shapes with random bf16 weights (about 13 GB) and the bundled\n"
            "tokenizer (its <image> id, 1000, as image_token_index: `vlft train` runs on the folder).\n");
}

int command_init_tiny(int argc, char **argv) {
    const char *dir = NULL, *projector = NULL, *dtype = NULL, *preset = "tiny";
    long shards = -1;
    unsigned long long seed = 0;
    int seed_given = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return EXIT_OK;
        }
        int has_value = i + 1 < argc;
        char *end = NULL;
        if (strcmp(a, "--projector") == 0 && has_value) projector = argv[++i];
        else if (strcmp(a, "--dtype") == 0 && has_value) dtype = argv[++i];
        else if (strcmp(a, "--preset") == 0 && has_value) preset = argv[++i];
        else if (strcmp(a, "--shards") == 0 && has_value) {
            shards = strtol(argv[++i], &end, 10);
            if (*end != '\0' || shards < 1 || shards > 9999) {
                fprintf(stderr, "vlft init-tiny: --shards needs a count from 1 to 9999, got '%s'\n", argv[i]);
                return EXIT_USAGE;
            }
        } else if (strcmp(a, "--seed") == 0 && has_value) {
            seed = strtoull(argv[++i], &end, 10);
            seed_given = 1;
            if (*end != '\0' || argv[i][0] == '-' || argv[i][0] == '\0') {
                fprintf(stderr, "vlft init-tiny: --seed needs a non-negative integer, got '%s'\n", argv[i]);
                return EXIT_USAGE;
            }
        } else if (a[0] == '-') {
            fprintf(stderr, "vlft init-tiny: unknown or incomplete option '%s'\n", a);
            return EXIT_USAGE;
        } else if (dir == NULL) dir = a;
        else {
            fprintf(stderr, "vlft init-tiny: unexpected argument '%s'\n", a);
            return EXIT_USAGE;
        }
    }
    if (dir == NULL) {
        usage(stderr);
        return EXIT_USAGE;
    }
    TinyOptions options;
    if (strcmp(preset, "tiny") == 0) init_tiny_defaults(&options);
    else if (strcmp(preset, "yi-vl-6b") == 0) init_tiny_preset_yi_vl_6b(&options);
    else {
        fprintf(stderr, "vlft init-tiny: --preset must be tiny or yi-vl-6b, got '%s'\n", preset);
        return EXIT_USAGE;
    }
    if (projector && strcmp(projector, "yivl") == 0) options.projector = PROJECTOR_YIVL;
    else if (projector && strcmp(projector, "llava") == 0) options.projector = PROJECTOR_LLAVA;
    else if (projector) {
        fprintf(stderr, "vlft init-tiny: --projector must be yivl or llava, got '%s'\n", projector);
        return EXIT_USAGE;
    }
    if (dtype && strcmp(dtype, "f32") == 0) options.dtype = DTYPE_F32;
    else if (dtype && strcmp(dtype, "bf16") == 0) options.dtype = DTYPE_BF16;
    else if (dtype) {
        fprintf(stderr, "vlft init-tiny: --dtype must be f32 or bf16, got '%s'\n", dtype);
        return EXIT_USAGE;
    }
    if (shards > 0) options.n_shards = (int)shards;
    if (seed_given) options.seed = seed;
    Error err;
    if (init_tiny_write(dir, &options, &err) != 0) {
        fprintf(stderr, "vlft init-tiny: %s\n", err.message);
        return EXIT_BAD_INPUT;
    }
    printf("wrote %s model to %s\n", options.projector == PROJECTOR_YIVL ? "Yi-VL-style" : "LLaVA-style", dir);
    return EXIT_OK;
}
