// json_out.h - writes JSON text the way Python's json module does, so
// vlft's logs read like LLaMA-Factory's and transformers' files.
//
// Floats use Python's repr (shortest text that reads back to the same
// double: 0.0001, 1e-05, 2.0); integers print without a fraction. Objects
// are written in the order the caller adds keys, so a caller that wants
// sort_keys adds them sorted. indent 0 = one line with ", " and ": " as
// json.dumps does; indent > 0 = pretty like json.dump(indent=N).
#ifndef VLFT_JSON_OUT_H
#define VLFT_JSON_OUT_H

#include <stddef.h>

typedef struct {
    char *text;
    size_t length, capacity;
    int indent;
    int depth;
    int need_comma[32];  // per nesting level: something was written already
    int failed;          // out of memory
} JsonOut;

void json_init(JsonOut *j, int indent);
void json_free(JsonOut *j);

// Python repr of a double into dst (at least 32 bytes): "0.1", "1e-05", "3.0", "NaN".
void py_float_repr(double value, char *dst, size_t size);

void json_begin_object(JsonOut *j);
void json_end_object(JsonOut *j);
void json_begin_array(JsonOut *j);
void json_end_array(JsonOut *j);
// A key inside an object; follow with exactly one value call.
void json_key(JsonOut *j, const char *key);
void json_double(JsonOut *j, double value);
void json_int(JsonOut *j, long long value);
void json_string(JsonOut *j, const char *value);  // NULL writes null
void json_bool(JsonOut *j, int value);
void json_null(JsonOut *j);

#endif
