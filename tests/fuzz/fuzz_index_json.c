// Fuzz target: model.safetensors.index.json. The input is the index text; the
// folder also holds two valid shards, a.safetensors (tensor "x") and
// b.safetensors (tensor "y"), so an index that names them can succeed and the
// cross-checks between index and shards run.
#include "../../src/io/safetensors.h"
#include "fuzz_scratch.h"

static char scratch[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir = fuzz_scratch_dir(scratch, sizeof scratch, "index");
    static int shards_written;
    if (!shards_written) {
        size_t n;
        uint8_t *a = fuzz_small_safetensors("x", 2, 3, &n);
        fuzz_scratch_write(dir, "a.safetensors", a, n);
        free(a);
        uint8_t *b = fuzz_small_safetensors("y", 1, 4, &n);
        fuzz_scratch_write(dir, "b.safetensors", b, n);
        free(b);
        shards_written = 1;
    }
    fuzz_scratch_write(dir, "model.safetensors.index.json", data, size);
    Safetensors st;
    Error err = {{0}};
    if (safetensors_open_dir(&st, dir, NULL, &err) == 0) {
        // Everything handed out must be readable.
        for (int i = 0; i < st.n_tensors; i++) {
            float buf[16];
            if (st.tensors[i].numel <= 16 && safetensors_read_f32(&st, &st.tensors[i], buf, &err) != 0)
                __builtin_trap();
        }
        safetensors_close(&st);
    } else if (err.message[0] == '\0') {
        __builtin_trap();  // a refusal must say why
    }
    return 0;
}
