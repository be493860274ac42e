// Fuzz target: a Hugging Face config.json (and the layout it implies).
#include <stdlib.h>
#include <string.h>

#include "../../src/model/config.h"
#include "../../src/model/layout.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (text == NULL) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    ModelConfig config;
    Error err;
    if (model_config_parse(&config, text, "fuzz.json", &err) == 0) {
        char *json = model_config_to_json(&config);
        ModelConfig again;
        if (model_config_parse(&again, json, "again.json", &err) != 0) __builtin_trap();  // must round-trip
        free(json);
        // Building the tensor list must stay bounded for small configs.
        if ((long long)config.vision.num_hidden_layers + config.text.num_hidden_layers < 4096) {
            Layout layout;
            if (layout_build(&layout, &config, PROJECTOR_YIVL, &err) == 0) layout_free(&layout);
        }
    }
    free(text);
    return 0;
}
