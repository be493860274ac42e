// Fuzz target: a PEFT adapter folder. The input is
// "<adapter_config.json>[\x01<adapter_model.safetensors>]"; without the
// separator a small valid LoRA pair for layer 0's q_proj is used as weights.
#include "../../src/model/adapter.h"
#include "fuzz_scratch.h"

static char scratch[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir = fuzz_scratch_dir(scratch, sizeof scratch, "adapter");
    const uint8_t *sep = memchr(data, 1, size);
    size_t config_size = sep ? (size_t)(sep - data) : size;
    fuzz_scratch_write(dir, "adapter_config.json", data, config_size);
    if (sep) {
        fuzz_scratch_write(dir, "adapter_model.safetensors", sep + 1, (size_t)(data + size - sep - 1));
    } else {
        static uint8_t *weights;
        static size_t weights_size;
        if (!weights) {
            // Two tensors: lora_A [2, 4] and lora_B [4, 2] for one module.
            const char *a = "base_model.model.language_model.model.layers.0.self_attn.q_proj.lora_A.weight";
            const char *b = "base_model.model.language_model.model.layers.0.self_attn.q_proj.lora_B.weight";
            char header[512];
            int n = snprintf(header, sizeof header,
                             "{\"%s\":{\"dtype\":\"F32\",\"shape\":[2,4],\"data_offsets\":[0,32]},"
                             "\"%s\":{\"dtype\":\"F32\",\"shape\":[4,2],\"data_offsets\":[32,64]}}",
                             a, b);
            while (n % 8) header[n++] = ' ';
            weights_size = 8 + (size_t)n + 64;
            weights = calloc(1, weights_size);
            if (!weights) abort();
            for (int i = 0; i < 8; i++) weights[i] = (uint8_t)((uint64_t)n >> (8 * i));
            memcpy(weights + 8, header, (size_t)n);
        }
        fuzz_scratch_write(dir, "adapter_model.safetensors", weights, weights_size);
    }
    Adapter adapter;
    Error err = {{0}};
    if (adapter_load(&adapter, dir, &err) == 0) {
        // Merging every pair into a matching weight must stay in bounds.
        for (int i = 0; i < adapter.n_pairs; i++) {
            const LoraPair *p = &adapter.pairs[i];
            int64_t out = p->b->shape[0], in = p->a->shape[1];
            if (out * in > 1 << 20) continue;
            float *w = calloc((size_t)(out * in), sizeof *w);
            if (!w) abort();
            if (adapter_merge_pair(&adapter, p, w, out, in, &err) != 0 && err.message[0] == '\0') __builtin_trap();
            free(w);
        }
        adapter_free(&adapter);
    } else if (err.message[0] == '\0') {
        __builtin_trap();
    }
    return 0;
}
