// Safetensors reader/writer: round trips and every rejection of a lying header.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/base/fs.h"
#include "../../src/io/safetensors.h"

static char dir[256];

static void make_dir(void) {
    snprintf(dir, sizeof dir, "/tmp/vlft-st-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(safetensors, .init = make_dir, .fini = remove_dir);

Test(safetensors, round_trip_values_and_dtypes) {
    float a[6] = {1, -2, 3.5f, 0, 1e-3f, 7};
    uint16_t b[3] = {0x3f80, 0xc000, 0x0000};
    int64_t c[2] = {-1, 1LL << 40};
    TensorRef refs[3] = {
        {.name = "a", .dtype = DTYPE_F32, .ndim = 2, .shape = {2, 3}, .data = a},
        {.name = "b.bf16", .dtype = DTYPE_BF16, .ndim = 1, .shape = {3}, .data = b},
        {.name = "c", .dtype = DTYPE_I64, .ndim = 1, .shape = {2}, .data = c},
    };
    char path[512];
    snprintf(path, sizeof path, "%s/x.safetensors", dir);
    Error err;
    const char *meta[] = {"format", "pt", NULL};
    cr_assert_eq(safetensors_write(path, refs, 3, meta, &err), 0, "%s", err.message);
    Safetensors st;
    cr_assert_eq(safetensors_open_file(&st, path, &err), 0, "%s", err.message);
    cr_assert_eq(st.n_tensors, 3);
    const TensorInfo *t = safetensors_get(&st, "a");
    cr_assert_not_null(t);
    cr_assert_eq(t->ndim, 2);
    cr_assert_eq(t->shape[1], 3);
    cr_assert_eq(memcmp(t->data, a, sizeof a), 0);
    cr_assert(safetensors_is_zero_copy(t, DTYPE_F32));
    float bf[3];
    cr_assert_eq(safetensors_read_f32(&st, safetensors_get(&st, "b.bf16"), bf, &err), 0);
    cr_assert_float_eq(bf[0], 1.0f, 0);
    cr_assert_float_eq(bf[1], -2.0f, 0);
    cr_assert_eq(memcmp(safetensors_get(&st, "c")->data, c, sizeof c), 0);
    cr_assert_str_eq(st.metadata_json, "{\"format\":\"pt\"}");
    safetensors_close(&st);
}
