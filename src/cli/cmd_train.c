// vlft train RECIPE.yaml: fine-tune as a LLaMA-Factory recipe says.
#include <stdio.h>
#include <string.h>

#include "../train/recipe.h"
#include "commands.h"

static void usage(FILE *out) {
    fprintf(out, "usage: vlft train [--print-config] RECIPE.yaml\n\n"
                 "Runs supervised fine-tuning with LLaMA-Factory's YAML keys.\n"
                 "--print-config  print the resolved recipe (every key, defaults filled in) and exit\n");
}

int command_train(int argc, char **argv) {
    const char *path = NULL;
    int print_config = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return EXIT_OK;
        }
        if (strcmp(argv[i], "--print-config") == 0) print_config = 1;
        else if (argv[i][0] == '-') {
            fprintf(stderr, "vlft train: unknown option '%s'\n", argv[i]);
            return EXIT_USAGE;
        } else if (path == NULL) path = argv[i];
        else {
            fprintf(stderr, "vlft train: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    if (path == NULL) {
        usage(stderr);
        return EXIT_USAGE;
    }
    Recipe recipe;
    Error err;
    if (recipe_load(&recipe, path, stderr, &err) != 0) {
        fprintf(stderr, "vlft train: %s\n", err.message);
        return EXIT_BAD_INPUT;
    }
    if (recipe_validate(&recipe, path, &err) != 0) {
        fprintf(stderr, "vlft train: %s\n", err.message);
        recipe_free(&recipe);
        return EXIT_BAD_INPUT;
    }
    if (print_config) {
        recipe_print(&recipe, stdout);
        recipe_free(&recipe);
        return EXIT_OK;
    }
    fprintf(stderr, "vlft train: %s: the training loop is not built yet (see issue 6); use --print-config\n", path);
    recipe_free(&recipe);
    return EXIT_BAD_INPUT;
}
