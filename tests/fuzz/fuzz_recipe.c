// Fuzz target: a LLaMA-Factory YAML recipe.
#include <stdint.h>
#include <stdio.h>

#include "../../src/train/recipe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Recipe recipe;
    Error err;
    if (recipe_parse(&recipe, (const char *)data, size, "fuzz.yaml", NULL, &err) == 0) {
        recipe_validate(&recipe, "fuzz.yaml", &err);
        FILE *sink = fopen("/dev/null", "w");
        if (sink) {
            recipe_print(&recipe, sink);
            fclose(sink);
        }
        recipe_free(&recipe);
    }
    return 0;
}
