// vlft export: merge a LoRA adapter into its base model and write Hugging
// Face shards, from a LLaMA-Factory export YAML or from flags.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../model/export.h"
#include "../train/recipe.h"
#include "commands.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: vlft export RECIPE.yaml\n"
            "       vlft export --model DIR [--adapter DIR] --out DIR [--size GB] [--dtype keep|f32|bf16|f16]\n\n"
            "Merges the LoRA adapter into the base weights (W + alpha/r * B A) and writes a Hugging Face folder:\n"
            "safetensors shards of at most --size GB (export_size, default 5) with an index, config.json,\n"
            "tokenizer and preprocessor files. The recipe form reads LLaMA-Factory's export keys\n"
            "(model_name_or_path, adapter_name_or_path, export_dir, export_size, export_legacy_format).\n");
}

static int parse_dtype(const char *s, ExportOptions *o) {
    if (strcmp(s, "keep") == 0) o->keep_dtype = 1;
    else if (strcmp(s, "f32") == 0 || strcmp(s, "float32") == 0) o->dtype = DTYPE_F32;
    else if (strcmp(s, "bf16") == 0 || strcmp(s, "bfloat16") == 0) o->dtype = DTYPE_BF16;
    else if (strcmp(s, "f16") == 0 || strcmp(s, "float16") == 0) o->dtype = DTYPE_F16;
    else return -1;
    if (strcmp(s, "keep") != 0) o->keep_dtype = 0;
    return 0;
}

int command_export(int argc, char **argv) {
    ExportOptions o = {.keep_dtype = 1, .max_shard_bytes = (size_t)5 << 30};
    const char *recipe_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return EXIT_OK;
        } else if (strcmp(a, "--model") == 0 && has_value) o.model_dir = argv[++i];
        else if (strcmp(a, "--adapter") == 0 && has_value) o.adapter_dir = argv[++i];
        else if (strcmp(a, "--out") == 0 && has_value) o.export_dir = argv[++i];
        else if (strcmp(a, "--size") == 0 && has_value) {
            char *end;
            double gb = strtod(argv[++i], &end);
            if (*end != '\0' || !(gb > 0)) {
                fprintf(stderr, "vlft export: --size needs a positive number of GB, got '%s'\n", argv[i]);
                return EXIT_USAGE;
            }
            o.max_shard_bytes = (size_t)(gb * (double)(1u << 30));
        } else if (strcmp(a, "--dtype") == 0 && has_value) {
            if (parse_dtype(argv[++i], &o) != 0) {
                fprintf(stderr, "vlft export: --dtype must be keep, f32, bf16 or f16, got '%s'\n", argv[i]);
                return EXIT_USAGE;
            }
        } else if (a[0] != '-' && recipe_path == NULL) recipe_path = a;
        else {
            fprintf(stderr, "vlft export: unexpected argument '%s'\n", a);
            return EXIT_USAGE;
        }
    }
    Recipe recipe;
    int have_recipe = recipe_path != NULL;
    Error err;
    if (have_recipe) {
        if (o.model_dir || o.adapter_dir || o.export_dir) {
            fprintf(stderr, "vlft export: give either a recipe or --model/--adapter/--out, not both\n");
            return EXIT_USAGE;
        }
        if (recipe_load(&recipe, recipe_path, stderr, &err) != 0) {
            fprintf(stderr, "vlft export: %s\n", err.message);
            return EXIT_BAD_INPUT;
        }
        const char *problem = NULL;
        if (recipe.model_name_or_path == NULL) problem = "model_name_or_path is required";
        else if (recipe.export_dir == NULL) problem = "export_dir is required";
        else if (recipe.export_size < 1) problem = "export_size must be at least 1 (GB)";
        else if (recipe.export_legacy_format) problem = "export_legacy_format: true (.bin files) is not supported; vlft writes safetensors";
        else if (recipe.export_quantization_bit > 0) problem = "export_quantization_bit is not supported";
        else if (recipe.adapter_name_or_path && strchr(recipe.adapter_name_or_path, ','))
            problem = "adapter_name_or_path: merging several adapters at once is not supported";
        if (problem) {
            fprintf(stderr, "vlft export: %s: %s\n", recipe_path, problem);
            recipe_free(&recipe);
            return EXIT_BAD_INPUT;
        }
        o.model_dir = recipe.model_name_or_path;
        o.adapter_dir = recipe.adapter_name_or_path;
        o.export_dir = recipe.export_dir;
        o.max_shard_bytes = (size_t)recipe.export_size << 30;
    } else if (o.model_dir == NULL || o.export_dir == NULL) {
        usage(stderr);
        return EXIT_USAGE;
    }
    int merged = 0;
    int rc = export_merged_model(&o, &merged, &err);
    if (rc != 0) fprintf(stderr, "vlft export: %s\n", err.message);
    else printf("exported %s%s%s to %s (%d LoRA weights merged)\n", o.model_dir, o.adapter_dir ? " + " : "",
                o.adapter_dir ? o.adapter_dir : "", o.export_dir, merged);
    if (have_recipe) recipe_free(&recipe);
    return rc == 0 ? EXIT_OK : EXIT_BAD_INPUT;
}
