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

// Writes an 8-byte length, the header text as given, then data_size zero bytes.
static void write_raw(const char *path, const char *header, size_t data_size, long long claimed_length) {
    FILE *fp = fopen(path, "wb");
    cr_assert_not_null(fp);
    unsigned long long n = claimed_length >= 0 ? (unsigned long long)claimed_length : strlen(header);
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(n >> (8 * i));
    fwrite(len, 1, 8, fp);
    fwrite(header, 1, strlen(header), fp);
    for (size_t i = 0; i < data_size; i++) fputc(0, fp);
    fclose(fp);
}

// Expects the file to be rejected with a message holding each fragment.
static void expect_rejected(const char *header, size_t data_size, long long claimed_length, const char *fragment) {
    char path[512];
    snprintf(path, sizeof path, "%s/bad.safetensors", dir);
    write_raw(path, header, data_size, claimed_length);
    Safetensors st;
    Error err = {{0}};
    cr_assert_eq(safetensors_open_file(&st, path, &err), -1, "accepted: %s", header);
    cr_assert(strstr(err.message, path) != NULL, "message does not name the file: %s", err.message);
    cr_assert(strstr(err.message, fragment) != NULL, "message '%s' lacks '%s'", err.message, fragment);
}

Test(safetensors, accepts_a_valid_handmade_file) {
    char path[512];
    snprintf(path, sizeof path, "%s/ok.safetensors", dir);
    write_raw(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[8,11]}}", 11, -1);
    Safetensors st;
    Error err;
    cr_assert_eq(safetensors_open_file(&st, path, &err), 0, "%s", err.message);
    cr_assert_eq(st.n_tensors, 2);
    safetensors_close(&st);
}

Test(safetensors, rejects_header_length_past_end) {
    expect_rejected("{}", 0, 1000, "past the end");
}

Test(safetensors, rejects_absurd_header_length) {
    expect_rejected("{}", 0, 1LL << 40, "absurd");
}

Test(safetensors, rejects_file_shorter_than_length_field) {
    char path[512];
    snprintf(path, sizeof path, "%s/short.safetensors", dir);
    FILE *fp = fopen(path, "wb");
    fwrite("abc", 1, 3, fp);
    fclose(fp);
    Safetensors st;
    Error err;
    cr_assert_eq(safetensors_open_file(&st, path, &err), -1);
    cr_assert(strstr(err.message, "too short") != NULL, "%s", err.message);
}

Test(safetensors, rejects_invalid_json) {
    expect_rejected("{\"a\": {\"dtype\": \"F32\", ", 0, -1, "not valid JSON");
}

Test(safetensors, rejects_non_object_header) {
    expect_rejected("[1, 2, 3]", 0, -1, "not a JSON object");
}

Test(safetensors, rejects_unknown_dtype) {
    expect_rejected("{\"a\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]}}", 16, -1, "unknown dtype 'F128'");
}

Test(safetensors, rejects_shape_size_disagreement) {
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, -1, "'a'");
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, -1, "needs 12 bytes");
}

Test(safetensors, rejects_negative_or_fractional_shape) {
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0, -1, "shape[0]");
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,6]}}", 6, -1, "shape[0]");
}

Test(safetensors, rejects_overflowing_shape) {
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,8]}}", 8, -1,
                    "overflows");
}

Test(safetensors, rejects_overlapping_offsets) {
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, -1, "overlap");
}

Test(safetensors, rejects_gap_between_tensors) {
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, -1, "gap");
}

Test(safetensors, rejects_out_of_order_start) {
    // the first tensor in data order must start at 0
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, -1, "gap");
}

Test(safetensors, rejects_out_of_bounds_offsets) {
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, -1, "out of bounds");
}

Test(safetensors, rejects_trailing_data) {
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 12, -1, "after the last tensor");
}

Test(safetensors, rejects_end_before_begin) {
    expect_rejected("{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4, -1, "end before begin");
}

Test(safetensors, rejects_duplicate_names) {
    expect_rejected("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                    "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, -1, "duplicate tensor name 'a'");
}

Test(safetensors, rejects_bad_metadata) {
    expect_rejected("{\"__metadata__\":{\"format\":3}}", 0, -1, "__metadata__");
    expect_rejected("{\"__metadata__\":[1]}", 0, -1, "__metadata__");
}

Test(safetensors, rejects_missing_fields) {
    expect_rejected("{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, -1, "missing dtype");
    expect_rejected("{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, -1, "missing shape");
    expect_rejected("{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, -1, "data_offsets");
    expect_rejected("{\"a\":7}", 0, -1, "not an object");
}

Test(safetensors, rejects_garbage_after_json_in_header) {
    expect_rejected("{}xyz", 0, -1, "trailing bytes");
}

static TensorRef make_ref(const char *name, const float *data, int64_t n) {
    TensorRef r = {.name = name, .dtype = DTYPE_F32, .ndim = 1, .data = data};
    r.shape[0] = n;
    return r;
}

Test(safetensors, sharded_round_trip_and_index) {
    float a[100], b[50], c[10];
    for (int i = 0; i < 100; i++) a[i] = (float)i;
    for (int i = 0; i < 50; i++) b[i] = (float)-i;
    for (int i = 0; i < 10; i++) c[i] = 0.5f * (float)i;
    TensorRef refs[3] = {make_ref("x.a", a, 100), make_ref("x.b", b, 50), make_ref("x.c", c, 10)};
    Error err;
    char sub[512];
    snprintf(sub, sizeof sub, "%s/model", dir);
    cr_assert_eq(safetensors_write_dir(sub, "model", refs, 3, 300, 0, NULL, &err), 0, "%s", err.message);
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", sub);
    cr_assert(file_exists(path));
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", sub);
    cr_assert(file_exists(path), "expected two shards of at most 300 bytes' worth");
    Safetensors st;
    cr_assert_eq(safetensors_open_dir(&st, sub, NULL, &err), 0, "%s", err.message);
    cr_assert_eq(st.n_tensors, 3);
    cr_assert_eq(st.n_files, 2);
    cr_assert_eq(memcmp(safetensors_get(&st, "x.b")->data, b, sizeof b), 0);
    cr_assert_eq(memcmp(safetensors_get(&st, "x.c")->data, c, sizeof c), 0);
    safetensors_close(&st);
}

Test(safetensors, index_naming_a_missing_shard_is_rejected) {
    char sub[512], path[600];
    snprintf(sub, sizeof sub, "%s/m", dir);
    Error err;
    cr_assert_eq(make_dirs(sub, &err), 0);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", sub);
    const char *index = "{\"weight_map\":{\"w\":\"model-00001-of-00002.safetensors\"}}";
    cr_assert_eq(write_file_atomic(path, index, strlen(index), &err), 0);
    Safetensors st;
    cr_assert_eq(safetensors_open_dir(&st, sub, NULL, &err), -1);
    cr_assert(strstr(err.message, "missing shard model-00001-of-00002.safetensors") != NULL, "%s", err.message);
}

Test(safetensors, index_naming_a_tensor_absent_from_its_shard_is_rejected) {
    float a[2] = {1, 2};
    TensorRef refs[1] = {make_ref("real", a, 2)};
    char sub[512], path[600];
    snprintf(sub, sizeof sub, "%s/m2", dir);
    Error err;
    cr_assert_eq(make_dirs(sub, &err), 0);
    snprintf(path, sizeof path, "%s/shard.safetensors", sub);
    cr_assert_eq(safetensors_write(path, refs, 1, NULL, &err), 0);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", sub);
    const char *index = "{\"weight_map\":{\"real\":\"shard.safetensors\",\"ghost\":\"shard.safetensors\"}}";
    cr_assert_eq(write_file_atomic(path, index, strlen(index), &err), 0);
    Safetensors st;
    cr_assert_eq(safetensors_open_dir(&st, sub, NULL, &err), -1);
    cr_assert(strstr(err.message, "'ghost'") != NULL, "%s", err.message);
}

Test(safetensors, index_escaping_the_folder_is_rejected) {
    char sub[512], path[600];
    snprintf(sub, sizeof sub, "%s/m3", dir);
    Error err;
    cr_assert_eq(make_dirs(sub, &err), 0);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", sub);
    const char *index = "{\"weight_map\":{\"w\":\"../outside.safetensors\"}}";
    cr_assert_eq(write_file_atomic(path, index, strlen(index), &err), 0);
    Safetensors st;
    cr_assert_eq(safetensors_open_dir(&st, sub, NULL, &err), -1);
    cr_assert(strstr(err.message, "not a file in the folder") != NULL, "%s", err.message);
}

Test(safetensors, missing_folder_and_missing_weights_are_named) {
    Safetensors st;
    Error err;
    cr_assert_eq(safetensors_open_dir(&st, "/nonexistent/vlft", NULL, &err), -1);
    cr_assert(strstr(err.message, "/nonexistent/vlft") != NULL, "%s", err.message);
    cr_assert_eq(safetensors_open_dir(&st, dir, NULL, &err), -1);
    cr_assert(strstr(err.message, "no model.safetensors") != NULL, "%s", err.message);
}

static int fill_counting(void *ctx, const TensorRef *t, void *dst, Error *err) {
    (void)err;
    int *calls = ctx;
    (*calls)++;
    size_t n = tensor_ref_nbytes(t) / 4;
    for (size_t i = 0; i < n; i++) ((float *)dst)[i] = (float)i + 0.25f;
    return 0;
}

Test(safetensors, fill_callback_and_bf16_conversion) {
    int calls = 0;
    TensorRef refs[1] = {{.name = "f", .dtype = DTYPE_F32, .ndim = 2, .shape = {3, 4}, .fill = fill_counting, .fill_ctx = &calls}};
    char path[512];
    snprintf(path, sizeof path, "%s/fill.safetensors", dir);
    Error err;
    cr_assert_eq(safetensors_write(path, refs, 1, NULL, &err), 0, "%s", err.message);
    cr_assert_eq(calls, 1);
    Safetensors st;
    cr_assert_eq(safetensors_open_file(&st, path, &err), 0, "%s", err.message);
    const float *v = safetensors_get(&st, "f")->data;
    for (int i = 0; i < 12; i++) cr_assert_float_eq(v[i], (float)i + 0.25f, 0);
    safetensors_close(&st);
}

Test(safetensors, unaligned_data_is_read_by_copy) {
    // A header of odd length (no padding) puts F32 data at an odd address.
    char path[512];
    snprintf(path, sizeof path, "%s/odd.safetensors", dir);
    const char *header = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    FILE *fp = fopen(path, "wb");
    unsigned long long n = strlen(header);
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(n >> (8 * i));
    fwrite(len, 1, 8, fp);
    fwrite(header, 1, n, fp);
    float one = 1.5f;
    fwrite(&one, 4, 1, fp);
    fclose(fp);
    Safetensors st;
    Error err;
    cr_assert_eq(safetensors_open_file(&st, path, &err), 0, "%s", err.message);
    const TensorInfo *t = safetensors_get(&st, "a");
    cr_assert_eq(safetensors_is_zero_copy(t, DTYPE_F32), (n % 4) == 0);
    float got;
    cr_assert_eq(safetensors_read_f32(&st, t, &got, &err), 0);
    cr_assert_float_eq(got, 1.5f, 0);
    safetensors_close(&st);
}
