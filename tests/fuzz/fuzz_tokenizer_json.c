// Fuzz target: a Hugging Face tokenizer.json, then encoding and decoding a
// few strings with whatever tokenizer parsed.
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/text/tokenizer.h"
#include "fuzz_input.h"

static const char *const SAMPLES[] = {"Hello world", "  two  spaces\t\n", "\xe4\xbd\xa0\xe5\xa5\xbd 123",
                                      "\xf0\x9f\x98\x80<image>x", "\xff\xfe invalid", ""};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_memfile(data, size, path, sizeof path);
    if (fd < 0) return 0;
    Tokenizer *t;
    Error err;
    if (tokenizer_load_json_file(&t, path, &err) == 0) {
        for (size_t i = 0; i < sizeof SAMPLES / sizeof SAMPLES[0]; i++) {
            int *ids;
            int n = tokenizer_encode(t, SAMPLES[i], strlen(SAMPLES[i]), &ids);
            free(tokenizer_decode(t, ids, n));
            free(ids);
        }
        tokenizer_add_special_token(t, "###");
        tokenizer_free(t);
    }
    close(fd);
    return 0;
}
