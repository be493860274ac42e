// libFuzzer target: arbitrary bytes into the WebP decoder, then the pipeline.
// Build: see tests/fuzz/run.sh.
#include "fuzz_decode_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Image image;
    Error err;
    int ok = webp_decode(data, size, "fuzz-input", &image, &err) == 0;
    fuzz_after_decode(&image, ok, &err);
    if (ok) image_free(&image);
    return 0;
}
