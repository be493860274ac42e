#include "json_out.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void json_init(JsonOut *j, int indent) {
    memset(j, 0, sizeof *j);
    j->indent = indent;
}

void json_free(JsonOut *j) {
    free(j->text);
    memset(j, 0, sizeof *j);
}

static void append(JsonOut *j, const char *s, size_t n) {
    if (j->failed) return;
    if (j->length + n + 1 > j->capacity) {
        size_t capacity = j->capacity ? j->capacity : 256;
        while (j->length + n + 1 > capacity) capacity *= 2;
        char *grown = realloc(j->text, capacity);
        if (grown == NULL) {
            j->failed = 1;
            return;
        }
        j->text = grown;
        j->capacity = capacity;
    }
    memcpy(j->text + j->length, s, n);
    j->length += n;
    j->text[j->length] = '\0';
}

static void append_str(JsonOut *j, const char *s) { append(j, s, strlen(s)); }

static void newline(JsonOut *j) {
    if (j->indent <= 0) return;
    append_str(j, "\n");
    for (int i = 0; i < j->depth * j->indent; i++) append_str(j, " ");
}

// Separator before a value or key at the current level.
static void before_item(JsonOut *j) {
    if (j->need_comma[j->depth]) append_str(j, j->indent > 0 ? "," : ", ");
    j->need_comma[j->depth] = 1;
    if (j->depth > 0) newline(j);
}

static void write_string(JsonOut *j, const char *value);

void json_key(JsonOut *j, const char *key) {
    before_item(j);
    write_string(j, key);
    append_str(j, ": ");
    j->need_comma[j->depth] = 2;  // 2 = the next value completes this key
}

static void value_prefix(JsonOut *j) {
    if (j->need_comma[j->depth] == 2) {
        j->need_comma[j->depth] = 1;
        return;
    }
    before_item(j);
}

static void open(JsonOut *j, const char *bracket) {
    value_prefix(j);
    append_str(j, bracket);
    if (j->depth < 31) j->depth++;
    j->need_comma[j->depth] = 0;
}

static void close(JsonOut *j, const char *bracket) {
    int had_items = j->need_comma[j->depth] != 0;
    if (j->depth > 0) j->depth--;
    if (had_items) newline(j);
    append_str(j, bracket);
}

void json_begin_object(JsonOut *j) { open(j, "{"); }
void json_end_object(JsonOut *j) { close(j, "}"); }
void json_begin_array(JsonOut *j) { open(j, "["); }
void json_end_array(JsonOut *j) { close(j, "]"); }

void py_float_repr(double value, char *dst, size_t size) {
    if (isnan(value)) {
        snprintf(dst, size, "NaN");
        return;
    }
    if (isinf(value)) {
        snprintf(dst, size, value > 0 ? "Infinity" : "-Infinity");
        return;
    }
    // shortest %.*e that reads back exactly gives the digits and exponent
    char sci[64];
    int precision;
    for (precision = 0; precision < 17; precision++) {
        snprintf(sci, sizeof sci, "%.*e", precision, value);
        if (strtod(sci, NULL) == value) break;
    }
    snprintf(sci, sizeof sci, "%.*e", precision, value);
    char digits[32];
    int n_digits = 0, negative = 0;
    const char *p = sci;
    if (*p == '-') {
        negative = 1;
        p++;
    }
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9') digits[n_digits++] = *p;
    digits[n_digits] = '\0';
    int exponent = atoi(p + 1);
    char out[64];
    size_t k = 0;
    if (negative) out[k++] = '-';
    if (exponent < -4 || exponent >= 16) {
        // d[.ddd]e[+-]XX with at least two exponent digits, as Python
        out[k++] = digits[0];
        if (n_digits > 1) {
            out[k++] = '.';
            for (int i = 1; i < n_digits; i++) out[k++] = digits[i];
        }
        snprintf(out + k, sizeof out - k, "e%c%02d", exponent < 0 ? '-' : '+', abs(exponent));
    } else if (exponent < 0) {
        out[k++] = '0';
        out[k++] = '.';
        for (int i = 0; i < -exponent - 1; i++) out[k++] = '0';
        for (int i = 0; i < n_digits; i++) out[k++] = digits[i];
        out[k] = '\0';
    } else {
        for (int i = 0; i <= exponent; i++) out[k++] = i < n_digits ? digits[i] : '0';
        out[k++] = '.';
        if (n_digits > exponent + 1)
            for (int i = exponent + 1; i < n_digits; i++) out[k++] = digits[i];
        else out[k++] = '0';
        out[k] = '\0';
    }
    snprintf(dst, size, "%s", out);
}

void json_double(JsonOut *j, double value) {
    char text[64];
    py_float_repr(value, text, sizeof text);
    value_prefix(j);
    append_str(j, text);
}

void json_int(JsonOut *j, long long value) {
    char text[32];
    snprintf(text, sizeof text, "%lld", value);
    value_prefix(j);
    append_str(j, text);
}

void json_bool(JsonOut *j, int value) {
    value_prefix(j);
    append_str(j, value ? "true" : "false");
}

void json_null(JsonOut *j) {
    value_prefix(j);
    append_str(j, "null");
}

void json_string(JsonOut *j, const char *value) {
    value_prefix(j);
    write_string(j, value);
}

static void write_string(JsonOut *j, const char *value) {
    if (value == NULL) {
        append_str(j, "null");
        return;
    }
    append_str(j, "\"");
    for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"': append_str(j, "\\\""); break;
        case '\\': append_str(j, "\\\\"); break;
        case '\n': append_str(j, "\\n"); break;
        case '\r': append_str(j, "\\r"); break;
        case '\t': append_str(j, "\\t"); break;
        default:
            if (*p < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", *p);
                append_str(j, esc);
            } else append(j, (const char *)p, 1);
        }
    }
    append_str(j, "\"");
}
