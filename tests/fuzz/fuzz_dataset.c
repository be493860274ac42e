// Fuzz target: dataset_info.json and a data file. The input is
// "<dataset_info.json>\x01<data file>"; the data file is written as both
// d.json and d.jsonl in a scratch folder (with one image, img.png), then
// loaded with the Yi-like fixture tokenizer (run from the repository root).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/base/fs.h"
#include "../../src/text/dataset.h"
#include "../../src/text/tokenizer.h"

static char scratch[64];

static void write_bytes(const char *name, const uint8_t *data, size_t size) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", scratch, name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size) fwrite(data, 1, size, f);
    fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!scratch[0]) {
        strcpy(scratch, "/tmp/vlft-fuzz-dataset-XXXXXX");
        if (!mkdtemp(scratch)) abort();
        write_bytes("img.png", (const uint8_t *)"not really a png", 16);
    }
    const uint8_t *sep = memchr(data, 1, size);
    size_t info_size = sep ? (size_t)(sep - data) : size;
    write_bytes("dataset_info.json", data, info_size);
    const uint8_t *rest = sep ? sep + 1 : data + size;
    size_t rest_size = (size_t)(data + size - rest);
    write_bytes("d.json", rest, rest_size);
    write_bytes("d.jsonl", rest, rest_size);
    // One tokenizer for the whole run: loading adds only the template's stop
    // words, the same ones every time.
    static Tokenizer *tok;
    Error err;
    if (!tok && tokenizer_load(&tok, "tests/data/tokenizers/yi_like", 1, &err)) abort();
    const char *templates[] = {"yi_vl", "llava", "alpaca", "default"};
    DatasetOptions o = {.dataset = "d", .dataset_dir = scratch, .template_name = templates[size % 4],
                        .cutoff_len = 1 + (int)(size % 300), .max_samples = (int)(size % 3), .val_size = 0.25,
                        .mask_history = (int)(size & 1), .seed = 42, .image_token_index = 1000, .image_seq_length = 3};
    Dataset d;
    if (dataset_load(&d, &o, tok, NULL, &err) == 0) dataset_free(&d);
    o.dataset = "d, e";
    if (dataset_load(&d, &o, tok, NULL, &err) == 0) dataset_free(&d);
    return 0;
}
