// safetensors.h - the Hugging Face weight format, read by mmap, written
// atomically.
//
// File layout: u64 little-endian N, N bytes of JSON header
//   {"__metadata__": {str: str}, "name": {"dtype": "F32", "shape": [..],
//    "data_offsets": [begin, end]}, ...}
// then the data; offsets are relative to the byte after the header and must
// tile [0, data_size) exactly. A folder holds either model.safetensors or
// shards named in model.safetensors.index.json ("weight_map": name -> file).
//
// Every header is checked before any tensor is handed out: a file that lies
// about lengths, offsets, dtypes or shapes is rejected with an error naming
// the file and the tensor.
#ifndef VLFT_SAFETENSORS_H
#define VLFT_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "../base/dtype.h"
#include "../base/error.h"

#define TENSOR_MAX_DIMS 8

typedef struct {
    char *name;
    DType dtype;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    size_t numel;
    size_t nbytes;
    const void *data;  // inside the read-only mapping of its file
    int file_index;    // index into Safetensors.files
} TensorInfo;

typedef struct {
    char *path;
    void *map;
    size_t map_size;
} MappedFile;

typedef struct {
    int n_files;
    MappedFile *files;
    int n_tensors;
    TensorInfo *tensors;  // sorted by name
    char *metadata_json;  // "__metadata__" of the first file as JSON text, or NULL
} Safetensors;

// Opens one .safetensors file.
int safetensors_open_file(Safetensors *st, const char *path, Error *err);
// Opens a model folder: model.safetensors.index.json with its shards if
// present, else model.safetensors, else the single *.safetensors file.
// prefix selects the file family ("model", "adapter_model"); NULL = "model".
int safetensors_open_dir(Safetensors *st, const char *dir, const char *prefix, Error *err);
void safetensors_close(Safetensors *st);

const TensorInfo *safetensors_get(const Safetensors *st, const char *name);
// Path of the file that holds t (for error messages).
const char *safetensors_file_of(const Safetensors *st, const TensorInfo *t);
// Copies t into dst as f32 (converting from F16/BF16/F64).
int safetensors_read_f32(const Safetensors *st, const TensorInfo *t, float *dst, Error *err);
// True when t's data can be used in place as dtype (same dtype, aligned).
int safetensors_is_zero_copy(const TensorInfo *t, DType dtype);

// --- writing ---

typedef struct TensorRef TensorRef;
// Fills dst (t->nbytes of it) for a tensor whose data is produced on demand.
typedef int (*TensorFillFn)(void *ctx, const TensorRef *t, void *dst, Error *err);

struct TensorRef {
    const char *name;
    DType dtype;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    const void *data;  // NULL: ask fill
    TensorFillFn fill;
    void *fill_ctx;
};

size_t tensor_ref_nbytes(const TensorRef *t);

// Writes one file; metadata is NULL or a NULL-terminated key, value, ... list.
int safetensors_write(const char *path, const TensorRef *tensors, int n, const char *const *metadata, Error *err);

// Writes a model folder's weights as prefix.safetensors, or, when the
// tensors exceed max_shard_bytes (0 = no limit) or n_shards > 1 is asked,
// as prefix-0000i-of-0000n.safetensors shards plus prefix.safetensors.index.json.
int safetensors_write_dir(const char *dir, const char *prefix, const TensorRef *tensors, int n,
                          size_t max_shard_bytes, int n_shards, const char *const *metadata, Error *err);

#endif
