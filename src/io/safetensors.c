#include "safetensors.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../base/fs.h"

// The reference implementation refuses headers above 100 MB; so do we.
#define HEADER_LIMIT 100000000ull
// Largest integer a JSON double holds exactly.
#define JSON_INT_LIMIT 9007199254740992.0

// ---------------------------------------------------------------- reading

static int map_file(MappedFile *file, const char *path, Error *err) {
    memset(file, 0, sizeof *file);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return error_set(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return error_set(err, "%s: not a regular file", path);
    }
    file->path = strdup(path);
    file->map_size = (size_t)st.st_size;
    if (file->map_size > 0) {
        file->map = mmap(NULL, file->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (file->map == MAP_FAILED) {
            file->map = NULL;
            close(fd);
            return error_set(err, "%s: mmap failed: %s", path, strerror(errno));
        }
    }
    close(fd);
    return 0;
}

static void unmap_file(MappedFile *file) {
    if (file->map) munmap(file->map, file->map_size);
    free(file->path);
    memset(file, 0, sizeof *file);
}

// A JSON number that is a non-negative integer below 2^53.
static int json_uint(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return -1;
    double v = item->valuedouble;
    if (!(v >= 0.0) || v > JSON_INT_LIMIT || floor(v) != v) return -1;
    *out = (uint64_t)v;
    return 0;
}

typedef struct {
    uint64_t begin, end;
    int tensor;
} Span;

static int compare_spans(const void *a, const void *b) {
    const Span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : (x->end > y->end);
}

static int compare_tensors(const void *a, const void *b) {
    return strcmp(((const TensorInfo *)a)->name, ((const TensorInfo *)b)->name);
}

// Parses one tensor entry of the header into t (name already set).
static int parse_entry(const char *path, const cJSON *entry, TensorInfo *t, uint64_t *begin, uint64_t *end,
                       Error *err) {
    if (!cJSON_IsObject(entry)) return error_set(err, "%s: tensor '%s': entry is not an object", path, t->name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!cJSON_IsString(dtype)) return error_set(err, "%s: tensor '%s': missing dtype", path, t->name);
    if (dtype_from_name(dtype->valuestring, &t->dtype) != 0)
        return error_set(err, "%s: tensor '%s': unknown dtype '%s'", path, t->name, dtype->valuestring);
    if (!cJSON_IsArray(shape)) return error_set(err, "%s: tensor '%s': missing shape", path, t->name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > TENSOR_MAX_DIMS)
        return error_set(err, "%s: tensor '%s': %d dimensions (at most %d)", path, t->name, ndim, TENSOR_MAX_DIMS);
    t->ndim = ndim;
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        uint64_t extent;
        if (json_uint(cJSON_GetArrayItem(shape, d), &extent) != 0)
            return error_set(err, "%s: tensor '%s': shape[%d] is not a non-negative integer", path, t->name, d);
        t->shape[d] = (int64_t)extent;
        if (extent != 0 && numel > SIZE_MAX / extent)
            return error_set(err, "%s: tensor '%s': shape overflows", path, t->name);
        numel *= (size_t)extent;
    }
    t->numel = numel;
    if (numel > SIZE_MAX / dtype_size(t->dtype)) return error_set(err, "%s: tensor '%s': shape overflows", path, t->name);
    t->nbytes = numel * dtype_size(t->dtype);
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
        json_uint(cJSON_GetArrayItem(offsets, 0), begin) != 0 || json_uint(cJSON_GetArrayItem(offsets, 1), end) != 0)
        return error_set(err, "%s: tensor '%s': data_offsets must be two non-negative integers", path, t->name);
    if (*end < *begin) return error_set(err, "%s: tensor '%s': data_offsets end before begin", path, t->name);
    if (*end - *begin != t->nbytes)
        return error_set(err, "%s: tensor '%s': %s shape needs %zu bytes but data_offsets span %llu", path, t->name,
                         dtype_name(t->dtype), t->nbytes, (unsigned long long)(*end - *begin));
    return 0;
}

// Parses and validates the header of an already-mapped file; appends its
// tensors to st.
static int parse_header(Safetensors *st, int file_index, Error *err) {
    const MappedFile *file = &st->files[file_index];
    const char *path = file->path;
    if (file->map_size < 8) return error_set(err, "%s: too short for a safetensors file (%zu bytes)", path, file->map_size);
    const unsigned char *bytes = file->map;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | bytes[i];
    if (header_len > HEADER_LIMIT) return error_set(err, "%s: header length %llu is absurd", path, (unsigned long long)header_len);
    if (header_len > file->map_size - 8)
        return error_set(err, "%s: header length %llu runs past the end of the file (%zu bytes)", path,
                         (unsigned long long)header_len, file->map_size);
    if (header_len < 2 || bytes[8] != '{') return error_set(err, "%s: header is not a JSON object", path);
    const char *end_of_json = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)bytes + 8, header_len, &end_of_json, 0);
    if (root == NULL || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return error_set(err, "%s: header is not valid JSON", path);
    }
    // Only padding spaces may follow the JSON object inside the header.
    for (const char *p = end_of_json; p < (const char *)bytes + 8 + header_len; p++) {
        if (*p != ' ' && *p != '\0' && *p != '\n' && *p != '\t' && *p != '\r') {
            cJSON_Delete(root);
            return error_set(err, "%s: header has trailing bytes after the JSON object", path);
        }
    }
    const unsigned char *data = bytes + 8 + header_len;
    uint64_t data_size = file->map_size - 8 - header_len;

    int count = 0;
    for (const cJSON *item = root->child; item; item = item->next)
        if (strcmp(item->string, "__metadata__") != 0) count++;
    TensorInfo *grown = realloc(st->tensors, sizeof(TensorInfo) * (size_t)(st->n_tensors + count + 1));
    Span *spans = malloc(sizeof(Span) * (size_t)(count + 1));
    if (grown == NULL || spans == NULL) {
        if (grown) st->tensors = grown;
        free(spans);
        cJSON_Delete(root);
        return error_set(err, "%s: out of memory", path);
    }
    st->tensors = grown;
    int rc = 0, n_spans = 0, n_metadata = 0;
    for (const cJSON *item = root->child; item && rc == 0; item = item->next) {
        if (strcmp(item->string, "__metadata__") == 0) {
            if (++n_metadata > 1) { rc = error_set(err, "%s: duplicate __metadata__", path); break; }
            if (!cJSON_IsObject(item)) { rc = error_set(err, "%s: __metadata__ is not an object", path); break; }
            for (const cJSON *kv = item->child; kv; kv = kv->next)
                if (!cJSON_IsString(kv)) { rc = error_set(err, "%s: __metadata__ value '%s' is not a string", path, kv->string); break; }
            if (rc == 0 && file_index == 0 && st->metadata_json == NULL) st->metadata_json = cJSON_PrintUnformatted(item);
            continue;
        }
        TensorInfo *t = &st->tensors[st->n_tensors];
        memset(t, 0, sizeof *t);
        t->name = strdup(item->string);
        t->file_index = file_index;
        st->n_tensors++;
        uint64_t begin = 0, end = 0;
        rc = parse_entry(path, item, t, &begin, &end, err);
        if (rc != 0) break;
        if (end > data_size) {
            rc = error_set(err, "%s: tensor '%s': data_offsets [%llu, %llu] out of bounds (data is %llu bytes)", path,
                           t->name, (unsigned long long)begin, (unsigned long long)end, (unsigned long long)data_size);
            break;
        }
        t->data = data + begin;
        spans[n_spans++] = (Span){begin, end, st->n_tensors - 1};
    }
    if (rc == 0) {
        // Data must tile [0, data_size) exactly: no overlap, no gap, no tail.
        qsort(spans, (size_t)n_spans, sizeof(Span), compare_spans);
        uint64_t expected = 0;
        for (int i = 0; i < n_spans && rc == 0; i++) {
            const char *name = st->tensors[spans[i].tensor].name;
            if (spans[i].begin < expected)
                rc = error_set(err, "%s: tensor '%s': data_offsets overlap the previous tensor", path, name);
            else if (spans[i].begin > expected)
                rc = error_set(err, "%s: tensor '%s': gap of %llu bytes before its data", path, name,
                               (unsigned long long)(spans[i].begin - expected));
            expected = spans[i].end;
        }
        if (rc == 0 && expected != data_size)
            rc = error_set(err, "%s: %llu bytes of data after the last tensor", path,
                           (unsigned long long)(data_size - expected));
    }
    free(spans);
    cJSON_Delete(root);
    return rc;
}

static int add_file(Safetensors *st, const char *path, Error *err) {
    MappedFile *grown = realloc(st->files, sizeof(MappedFile) * (size_t)(st->n_files + 1));
    if (grown == NULL) return error_set(err, "%s: out of memory", path);
    st->files = grown;
    if (map_file(&st->files[st->n_files], path, err) != 0) return -1;
    st->n_files++;
    return parse_header(st, st->n_files - 1, err);
}

// Sorts by name and rejects a name seen twice (in one file or across shards).
static int finish_index(Safetensors *st, Error *err) {
    if (st->n_tensors > 1) qsort(st->tensors, (size_t)st->n_tensors, sizeof(TensorInfo), compare_tensors);
    for (int i = 1; i < st->n_tensors; i++) {
        if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0)
            return error_set(err, "%s: duplicate tensor name '%s'", st->files[st->tensors[i].file_index].path,
                             st->tensors[i].name);
    }
    return 0;
}

int safetensors_open_file(Safetensors *st, const char *path, Error *err) {
    memset(st, 0, sizeof *st);
    if (add_file(st, path, err) != 0 || finish_index(st, err) != 0) {
        safetensors_close(st);
        return -1;
    }
    return 0;
}

static int open_index(Safetensors *st, const char *dir, const char *index_path, Error *err) {
    char *text;
    if (read_file(index_path, 64u << 20, &text, NULL, err) != 0) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *weight_map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(weight_map)) {
        cJSON_Delete(root);
        return error_set(err, "%s: not a safetensors index (no weight_map object)", index_path);
    }
    if (weight_map->child == NULL) {
        cJSON_Delete(root);
        return error_set(err, "%s: weight_map names no tensors", index_path);
    }
    int rc = 0;
    // Open each shard once, in order of first mention.
    for (const cJSON *kv = weight_map->child; kv && rc == 0; kv = kv->next) {
        if (!cJSON_IsString(kv)) { rc = error_set(err, "%s: weight_map['%s'] is not a file name", index_path, kv->string); break; }
        const char *shard = kv->valuestring;
        if (strchr(shard, '/') || strcmp(shard, "..") == 0 || shard[0] == '\0') {
            rc = error_set(err, "%s: weight_map['%s'] names '%s', which is not a file in the folder", index_path, kv->string, shard);
            break;
        }
        char path[4096];
        if (path_join(path, sizeof path, dir, shard, err) != 0) { rc = -1; break; }
        int seen = 0;
        for (int f = 0; f < st->n_files && !seen; f++) seen = strcmp(st->files[f].path, path) == 0;
        if (seen) continue;
        if (!file_exists(path)) { rc = error_set(err, "%s: tensor '%s' is in missing shard %s", index_path, kv->string, shard); break; }
        rc = add_file(st, path, err);
    }
    if (rc == 0) rc = finish_index(st, err);
    // Every tensor the index names must be in the shard it names.
    for (const cJSON *kv = weight_map->child; kv && rc == 0; kv = kv->next) {
        const TensorInfo *t = safetensors_get(st, kv->string);
        char path[4096];
        path_join(path, sizeof path, dir, kv->valuestring, NULL);
        if (t == NULL || strcmp(st->files[t->file_index].path, path) != 0)
            rc = error_set(err, "%s: tensor '%s' is not in shard %s", index_path, kv->string, kv->valuestring);
    }
    cJSON_Delete(root);
    return rc;
}

int safetensors_open_dir(Safetensors *st, const char *dir, const char *prefix, Error *err) {
    memset(st, 0, sizeof *st);
    if (prefix == NULL) prefix = "model";
    char name[512], path[4096];
    snprintf(name, sizeof name, "%s.safetensors.index.json", prefix);
    if (path_join(path, sizeof path, dir, name, err) != 0) return -1;
    int rc;
    if (file_exists(path)) {
        rc = open_index(st, dir, path, err);
    } else {
        snprintf(name, sizeof name, "%s.safetensors", prefix);
        if (path_join(path, sizeof path, dir, name, err) != 0) return -1;
        if (!file_exists(path)) {
            if (!dir_exists(dir)) return error_set(err, "%s: no such folder", dir);
            return error_set(err, "%s: no %s.safetensors or %s.safetensors.index.json in the folder", dir, prefix, prefix);
        }
        rc = add_file(st, path, err);
        if (rc == 0) rc = finish_index(st, err);
    }
    if (rc != 0) safetensors_close(st);
    return rc;
}

void safetensors_close(Safetensors *st) {
    for (int i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    for (int i = 0; i < st->n_files; i++) unmap_file(&st->files[i]);
    free(st->tensors);
    free(st->files);
    free(st->metadata_json);
    memset(st, 0, sizeof *st);
}

const TensorInfo *safetensors_get(const Safetensors *st, const char *name) {
    int lo = 0, hi = st->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(st->tensors[mid].name, name);
        if (c == 0) return &st->tensors[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

const char *safetensors_file_of(const Safetensors *st, const TensorInfo *t) { return st->files[t->file_index].path; }

int safetensors_is_zero_copy(const TensorInfo *t, DType dtype) {
    return t->dtype == dtype && ((uintptr_t)t->data % dtype_size(dtype)) == 0;
}

int safetensors_read_f32(const Safetensors *st, const TensorInfo *t, float *dst, Error *err) {
    if (t->dtype == DTYPE_F32) {
        memcpy(dst, t->data, t->nbytes);  // memcpy: the data may be unaligned
        return 0;
    }
    size_t element = dtype_size(t->dtype);
    if (t->dtype != DTYPE_F16 && t->dtype != DTYPE_BF16 && t->dtype != DTYPE_F64)
        return error_set(err, "%s: tensor '%s' is %s, not a floating type", safetensors_file_of(st, t), t->name,
                         dtype_name(t->dtype));
    unsigned char scratch[8];
    for (size_t i = 0; i < t->numel; i++) {
        memcpy(scratch, (const unsigned char *)t->data + i * element, element);
        dtype_convert(&dst[i], DTYPE_F32, scratch, t->dtype, 1);
    }
    return 0;
}

// ---------------------------------------------------------------- writing

size_t tensor_ref_nbytes(const TensorRef *t) {
    size_t n = dtype_size(t->dtype);
    for (int d = 0; d < t->ndim; d++) n *= (size_t)t->shape[d];
    return n;
}

// A growable string for building headers.
typedef struct {
    char *text;
    size_t length, capacity;
    int failed;
} Text;

static void text_append(Text *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_append(Text *s, const char *fmt, ...) {
    if (s->failed) return;
    for (;;) {
        va_list args;
        va_start(args, fmt);
        size_t room = s->capacity - s->length;
        int n = vsnprintf(s->text ? s->text + s->length : NULL, s->text ? room : 0, fmt, args);
        va_end(args);
        if (n < 0) { s->failed = 1; return; }
        if (s->text && (size_t)n < room) { s->length += (size_t)n; return; }
        size_t capacity = (s->capacity + (size_t)n + 1) * 2;
        char *grown = realloc(s->text, capacity);
        if (grown == NULL) { s->failed = 1; return; }
        s->text = grown;
        s->capacity = capacity;
    }
}

// A JSON string literal; names and metadata are escaped the way JSON needs.
static void text_append_json_string(Text *s, const char *value) {
    text_append(s, "\"");
    for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
        if (*p == '"' || *p == '\\') text_append(s, "\\%c", *p);
        else if (*p < 0x20) text_append(s, "\\u%04x", *p);
        else text_append(s, "%c", *p);
    }
    text_append(s, "\"");
}

static int write_one(const char *path, const TensorRef *tensors, const int *which, int n, const char *const *metadata,
                     Error *err) {
    Text header = {0};
    text_append(&header, "{");
    int first = 1;
    if (metadata && metadata[0]) {
        text_append(&header, "\"__metadata__\":{");
        for (int i = 0; metadata[i] && metadata[i + 1]; i += 2) {
            if (i) text_append(&header, ",");
            text_append_json_string(&header, metadata[i]);
            text_append(&header, ":");
            text_append_json_string(&header, metadata[i + 1]);
        }
        text_append(&header, "}");
        first = 0;
    }
    size_t offset = 0, largest = 0;
    for (int k = 0; k < n; k++) {
        const TensorRef *t = &tensors[which[k]];
        size_t nbytes = tensor_ref_nbytes(t);
        if (nbytes > largest) largest = nbytes;
        if (!first) text_append(&header, ",");
        first = 0;
        text_append_json_string(&header, t->name);
        text_append(&header, ":{\"dtype\":\"%s\",\"shape\":[", dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++) text_append(&header, d ? ",%lld" : "%lld", (long long)t->shape[d]);
        text_append(&header, "],\"data_offsets\":[%zu,%zu]}", offset, offset + nbytes);
        offset += nbytes;
    }
    text_append(&header, "}");
    // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
    while (!header.failed && header.length % 8 != 0) text_append(&header, " ");
    if (header.failed) {
        free(header.text);
        return error_set(err, "%s: out of memory building the header", path);
    }
    AtomicFile file;
    if (atomic_open(&file, path, err) != 0) {
        free(header.text);
        return -1;
    }
    unsigned char length_bytes[8];
    for (int i = 0; i < 8; i++) length_bytes[i] = (unsigned char)((uint64_t)header.length >> (8 * i));
    int rc = atomic_write(&file, length_bytes, 8, err);
    if (rc == 0) rc = atomic_write(&file, header.text, header.length, err);
    free(header.text);
    void *scratch = NULL;
    for (int k = 0; k < n && rc == 0; k++) {
        const TensorRef *t = &tensors[which[k]];
        size_t nbytes = tensor_ref_nbytes(t);
        const void *data = t->data;
        if (data == NULL) {
            if (t->fill == NULL) {
                atomic_abort(&file);
                rc = error_set(err, "%s: tensor '%s' has neither data nor a fill function", path, t->name);
                break;
            }
            if (scratch == NULL && (scratch = malloc(largest ? largest : 1)) == NULL) {
                atomic_abort(&file);
                rc = error_set(err, "%s: out of memory", path);
                break;
            }
            if (t->fill(t->fill_ctx, t, scratch, err) != 0) {
                atomic_abort(&file);
                rc = error_prefix(err, "%s", path);
                break;
            }
            data = scratch;
        }
        rc = atomic_write(&file, data, nbytes, err);
    }
    free(scratch);
    if (rc == 0) rc = atomic_commit(&file, err);
    return rc;
}

int safetensors_write(const char *path, const TensorRef *tensors, int n, const char *const *metadata, Error *err) {
    int *which = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    if (which == NULL) return error_set(err, "%s: out of memory", path);
    for (int i = 0; i < n; i++) which[i] = i;
    int rc = write_one(path, tensors, which, n, metadata, err);
    free(which);
    return rc;
}

int safetensors_write_dir(const char *dir, const char *prefix, const TensorRef *tensors, int n,
                          size_t max_shard_bytes, int n_shards, const char *const *metadata, Error *err) {
    if (prefix == NULL) prefix = "model";
    size_t total = 0;
    for (int i = 0; i < n; i++) total += tensor_ref_nbytes(&tensors[i]);
    int *shard_of = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    int *which = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    if (shard_of == NULL || which == NULL) {
        free(shard_of);
        free(which);
        return error_set(err, "%s: out of memory", dir);
    }
    // Plan: greedy by size (a new shard when the next tensor would overflow,
    // as transformers does), or by count (cut at equal byte fractions).
    int shards = 1;
    if (n_shards > 1) {
        size_t before = 0;
        for (int i = 0; i < n; i++) {
            int s = total ? (int)((double)before * n_shards / (double)total) : 0;
            shard_of[i] = s < n_shards ? s : n_shards - 1;
            before += tensor_ref_nbytes(&tensors[i]);
        }
        // Renumber so that empty shards (tiny tensors count) disappear.
        int next = -1, last = -1;
        for (int i = 0; i < n; i++) {
            if (shard_of[i] != last) { last = shard_of[i]; next++; }
            shard_of[i] = next;
        }
        shards = next + 1;
    } else {
        size_t in_shard = 0;
        int s = 0;
        for (int i = 0; i < n; i++) {
            size_t nbytes = tensor_ref_nbytes(&tensors[i]);
            if (max_shard_bytes && in_shard > 0 && in_shard + nbytes > max_shard_bytes) {
                s++;
                in_shard = 0;
            }
            shard_of[i] = s;
            in_shard += nbytes;
        }
        shards = s + 1;
    }
    int rc = make_dirs(dir, err);
    char path[4096], name[512];
    if (rc == 0 && shards == 1) {
        snprintf(name, sizeof name, "%s.safetensors", prefix);
        rc = path_join(path, sizeof path, dir, name, err);
        if (rc == 0) rc = safetensors_write(path, tensors, n, metadata, err);
    } else if (rc == 0) {
        Text index = {0};
        text_append(&index, "{\n  \"metadata\": {\n    \"total_size\": %zu\n  },\n  \"weight_map\": {", total);
        for (int s = 0; s < shards && rc == 0; s++) {
            int count = 0;
            for (int i = 0; i < n; i++)
                if (shard_of[i] == s) which[count++] = i;
            snprintf(name, sizeof name, "%s-%05d-of-%05d.safetensors", prefix, s + 1, shards);
            rc = path_join(path, sizeof path, dir, name, err);
            if (rc == 0) rc = write_one(path, tensors, which, count, metadata, err);
        }
        for (int i = 0; i < n; i++) {
            snprintf(name, sizeof name, "%s-%05d-of-%05d.safetensors", prefix, shard_of[i] + 1, shards);
            text_append(&index, "%s\n    ", i ? "," : "");
            text_append_json_string(&index, tensors[i].name);
            text_append(&index, ": ");
            text_append_json_string(&index, name);
        }
        text_append(&index, "\n  }\n}\n");
        if (rc == 0 && index.failed) rc = error_set(err, "%s: out of memory", dir);
        snprintf(name, sizeof name, "%s.safetensors.index.json", prefix);
        if (rc == 0) rc = path_join(path, sizeof path, dir, name, err);
        // The index goes last: until it exists the folder is not a model.
        if (rc == 0) rc = write_file_atomic(path, index.text, index.length, err);
        free(index.text);
    }
    free(shard_of);
    free(which);
    return rc;
}
