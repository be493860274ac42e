// vlft data preview RECIPE.yaml [--n K]: loads the recipe's datasets with its
// model's tokenizer and template and prints K encoded training samples the
// way LLaMA-Factory prints its "training example" (input ids, input text,
// label ids, label text).
// vlft data dump RECIPE.yaml: every encoded sample as one JSON line
// ({"split", "input_ids", "labels", "images"}), for tests and inspection.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../model/config.h"
#include "../text/dataset.h"
#include "../text/tokenizer.h"
#include "../train/recipe.h"
#include "commands.h"

static int usage(FILE *out) {
    fprintf(out, "usage: vlft data preview RECIPE.yaml [--n K]\n"
                 "       vlft data dump RECIPE.yaml\n\n"
                 "preview  print K (default 1) encoded training samples as LLaMA-Factory does\n"
                 "dump     print every encoded sample (train, then eval) as one JSON line each\n");
    return out == stdout ? EXIT_OK : EXIT_USAGE;
}

static void print_ids(const int *ids, int n) {
    printf("[");
    for (int i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
    printf("]\n");
}

static void preview_sample(const Sample *s, Tokenizer *tok, const char *title) {
    printf("%s\ninput_ids:\n", title);
    print_ids(s->input_ids, s->length);
    char *inputs = tokenizer_decode(tok, s->input_ids, s->length);
    printf("inputs:\n%s\nlabel_ids:\n", inputs);
    free(inputs);
    print_ids(s->labels, s->length);
    int *valid = malloc(((size_t)s->length + 1) * sizeof(int));
    int n_valid = 0;
    for (int i = 0; i < s->length; i++)
        if (s->labels[i] != IGNORE_INDEX) valid[n_valid++] = s->labels[i];
    char *labels = tokenizer_decode(tok, valid, n_valid);
    printf("labels:\n%s\n", labels);
    if (s->n_images) {
        printf("images:\n");
        for (int i = 0; i < s->n_images; i++) printf("%s\n", s->image_paths[i]);
    }
    free(labels);
    free(valid);
}

static void print_json_string(const char *s) {
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') printf("\\%c", *p);
        else if (*p < 0x20) printf("\\u%04x", *p);
        else putchar(*p);
    }
    putchar('"');
}

static void dump_list(const SampleList *list, const char *split) {
    for (int i = 0; i < list->n_samples; i++) {
        const Sample *s = &list->samples[i];
        printf("{\"split\": \"%s\", \"input_ids\": ", split);
        for (int k = 0; k < s->length; k++) printf(k ? ", %d" : "[%d", s->input_ids[k]);
        printf(s->length ? "], \"labels\": " : "[], \"labels\": ");
        for (int k = 0; k < s->length; k++) printf(k ? ", %d" : "[%d", s->labels[k]);
        printf(s->length ? "], \"images\": [" : "[], \"images\": [");
        for (int k = 0; k < s->n_images; k++) {
            if (k) printf(", ");
            print_json_string(s->image_paths[k]);
        }
        printf("]}\n");
    }
}

int command_data(int argc, char **argv) {
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) return usage(stdout);
    if (argc < 3 || (strcmp(argv[1], "preview") != 0 && strcmp(argv[1], "dump") != 0)) return usage(stderr);
    int dump = strcmp(argv[1], "dump") == 0;
    const char *path = NULL;
    int count = 1;
    for (int i = 2; i < argc; i++) {
        if (!dump && strcmp(argv[i], "--n") == 0 && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 1000000) {
                fprintf(stderr, "vlft data: --n needs a positive count\n");
                return EXIT_USAGE;
            }
            count = (int)v;
        } else if (argv[i][0] != '-' && !path) {
            path = argv[i];
        } else {
            return usage(stderr);
        }
    }
    if (!path) return usage(stderr);
    Recipe recipe;
    Error err;
    if (recipe_load(&recipe, path, stderr, &err)) {
        fprintf(stderr, "vlft data: %s\n", err.message);
        return EXIT_BAD_INPUT;
    }
    if (!recipe.model_name_or_path) {
        fprintf(stderr, "vlft data: %s: model_name_or_path is required (its tokenizer encodes the data)\n", path);
        recipe_free(&recipe);
        return EXIT_BAD_INPUT;
    }
    ModelConfig config;
    Tokenizer *tok = NULL;
    Dataset data;
    int rc = model_config_load(&config, recipe.model_name_or_path, &err);
    if (rc == 0) rc = tokenizer_load(&tok, recipe.model_name_or_path, recipe.use_fast_tokenizer, &err);
    if (rc == 0) {
        DatasetOptions options;
        dataset_options_from_recipe(&options, &recipe, &config);
        rc = dataset_load(&data, &options, tok, stderr, &err);
    }
    if (rc) {
        fprintf(stderr, "vlft data: %s\n", err.message);
        tokenizer_free(tok);
        recipe_free(&recipe);
        return EXIT_BAD_INPUT;
    }
    if (dump) {
        dump_list(&data.train, "train");
        dump_list(&data.eval, "eval");
    } else {
        printf("%d training samples, %d eval samples (%d rows read, %d dropped); tokenizer %s\n", data.train.n_samples,
               data.eval.n_samples, data.n_rows, data.n_dropped, tokenizer_kind(tok));
        for (int i = 0; i < count && i < data.train.n_samples; i++) {
            char title[64];
            snprintf(title, sizeof title, "training example %d:", i + 1);
            preview_sample(&data.train.samples[i], tok, title);
        }
    }
    dataset_free(&data);
    tokenizer_free(tok);
    recipe_free(&recipe);
    return EXIT_OK;
}
