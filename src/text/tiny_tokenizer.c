// tiny_tokenizer.c - the fixture files, embedded with the assembler's
// .incbin (paths relative to the repository root, where make runs; the
// Makefile names them as prerequisites so edits rebuild this object).
#include "tiny_tokenizer.h"

#include <stddef.h>

#include "../base/fs.h"

__asm__(".section .rodata\n"
        ".balign 16\n"
        "vlft_tiny_tokenizer_model:\n"
        ".incbin \"tests/data/tokenizers/yi_like/tokenizer.model\"\n"
        "vlft_tiny_tokenizer_model_end:\n"
        "vlft_tiny_tokenizer_json:\n"
        ".incbin \"tests/data/tokenizers/yi_like/tokenizer.json\"\n"
        "vlft_tiny_tokenizer_json_end:\n"
        "vlft_tiny_tokenizer_config:\n"
        ".incbin \"tests/data/tokenizers/yi_like/tokenizer_config.json\"\n"
        "vlft_tiny_tokenizer_config_end:\n"
        "vlft_tiny_special_tokens_map:\n"
        ".incbin \"tests/data/tokenizers/yi_like/special_tokens_map.json\"\n"
        "vlft_tiny_special_tokens_map_end:\n"
        ".previous\n");

extern const char vlft_tiny_tokenizer_model[], vlft_tiny_tokenizer_model_end[];
extern const char vlft_tiny_tokenizer_json[], vlft_tiny_tokenizer_json_end[];
extern const char vlft_tiny_tokenizer_config[], vlft_tiny_tokenizer_config_end[];
extern const char vlft_tiny_special_tokens_map[], vlft_tiny_special_tokens_map_end[];

int tiny_tokenizer_write(const char *dir, Error *err) {
    struct {
        const char *name;
        const char *begin, *end;
    } files[] = {
        {"tokenizer.model", vlft_tiny_tokenizer_model, vlft_tiny_tokenizer_model_end},
        {"tokenizer.json", vlft_tiny_tokenizer_json, vlft_tiny_tokenizer_json_end},
        {"tokenizer_config.json", vlft_tiny_tokenizer_config, vlft_tiny_tokenizer_config_end},
        {"special_tokens_map.json", vlft_tiny_special_tokens_map, vlft_tiny_special_tokens_map_end},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[4096];
        if (path_join(path, sizeof path, dir, files[i].name, err)) return -1;
        if (write_file_atomic(path, files[i].begin, (size_t)(files[i].end - files[i].begin), err)) return -1;
    }
    return 0;
}
