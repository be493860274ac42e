// libFuzzer target: arbitrary bytes into the JPEG decoder, then the pipeline.
// Build: see tests/fuzz/run.sh.
#include "fuzz_decode_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Image image;
    Error err;
    int ok = jpeg_decode(data, size, "fuzz-input", &image, &err) == 0;
    fuzz_after_decode(&image, ok, &err);
    if (ok) image_free(&image);
    // The dispatching entry point must agree on what it accepts.
    if (image_decode_memory(data, size, "fuzz-input", &image, &err) == 0) image_free(&image);
    return 0;
}
