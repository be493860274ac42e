// utf8.h - the few UTF-8 facts the tokenizer needs.
#ifndef VLFT_TEXT_UTF8_H
#define VLFT_TEXT_UTF8_H

#include <stddef.h>

// Length in bytes of the well-formed UTF-8 character starting at s (at most
// n bytes available), or 0 when the bytes there are not valid UTF-8
// (overlong forms, surrogates, truncated sequences, stray continuations).
size_t utf8_char_length(const char *s, size_t n);

// 1 when the n bytes at s are entirely valid UTF-8.
int utf8_valid(const char *s, size_t n);

#endif
