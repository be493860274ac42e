#include "str_buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void out_of_memory(size_t n) {
    fprintf(stderr, "vlft: out of memory (allocating %zu bytes)\n", n);
    abort();
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) out_of_memory(n);
    return p;
}

void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) out_of_memory(count * size);
    return p;
}

void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) out_of_memory(n);
    return q;
}

char *xstrndup(const char *s, size_t n) {
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

void str_buf_append(StrBuf *b, const char *s, size_t n) {
    if (b->length + n + 1 > b->capacity) {
        size_t cap = b->capacity ? b->capacity : 64;
        while (cap < b->length + n + 1) cap *= 2;
        b->data = xrealloc(b->data, cap);
        b->capacity = cap;
    }
    if (n) memcpy(b->data + b->length, s, n);
    b->length += n;
    b->data[b->length] = 0;
}

void str_buf_append_str(StrBuf *b, const char *s) { str_buf_append(b, s, strlen(s)); }

void str_buf_append_char(StrBuf *b, char c) { str_buf_append(b, &c, 1); }

void str_buf_free(StrBuf *b) {
    free(b->data);
    b->data = NULL;
    b->length = b->capacity = 0;
}

void int_vec_push(IntVec *v, int x) {
    if (v->length == v->capacity) {
        v->capacity = v->capacity ? v->capacity * 2 : 16;
        v->data = xrealloc(v->data, (size_t)v->capacity * sizeof(int));
    }
    v->data[v->length++] = x;
}

void int_vec_append(IntVec *v, const int *xs, int n) {
    for (int i = 0; i < n; i++) int_vec_push(v, xs[i]);
}

void int_vec_free(IntVec *v) {
    free(v->data);
    v->data = NULL;
    v->length = v->capacity = 0;
}
