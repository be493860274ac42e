// str_buf.h - growable byte and int arrays used across the text pipeline.
//
// Allocation failure aborts with a message: the text pipeline's inputs are
// bounded by the files it reads, and a half-built token list is of no use.
#ifndef VLFT_TEXT_STR_BUF_H
#define VLFT_TEXT_STR_BUF_H

#include <stddef.h>

typedef struct {
    char *data;  // always NUL-terminated when non-NULL
    size_t length;
    size_t capacity;
} StrBuf;

void str_buf_append(StrBuf *b, const char *s, size_t n);
void str_buf_append_str(StrBuf *b, const char *s);
void str_buf_append_char(StrBuf *b, char c);
void str_buf_free(StrBuf *b);

typedef struct {
    int *data;
    int length;
    int capacity;
} IntVec;

void int_vec_push(IntVec *v, int x);
void int_vec_append(IntVec *v, const int *xs, int n);
void int_vec_free(IntVec *v);

// malloc / realloc / strdup that abort on failure.
void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrndup(const char *s, size_t n);

#endif
