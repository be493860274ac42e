// token_stream.h - text of generated tokens, handed out as they come but only
// in whole UTF-8 characters.
//
// A character split over byte-fallback tokens (<0xE4><0xB8><0xAD>) decodes
// to U+FFFD until its last byte arrives; the stream decodes all ids so far
// and holds back a trailing run of U+FFFD (and any cut sequence) until a
// later token completes it or the stream ends.
#ifndef VLFT_TEXT_TOKEN_STREAM_H
#define VLFT_TEXT_TOKEN_STREAM_H

#include <stddef.h>

#include "str_buf.h"
#include "tokenizer.h"

typedef struct {
    const Tokenizer *tokenizer;
    IntVec ids;      // every id pushed
    size_t emitted;  // bytes of the decoded text handed out
} TokenStream;

void token_stream_init(TokenStream *s, const Tokenizer *tokenizer);
// Adds id; returns the newly complete text (malloc'd, may be "").
char *token_stream_push(TokenStream *s, int id);
// The text still held back (malloc'd, may be ""), as decode gives it.
char *token_stream_finish(TokenStream *s);
// The whole decoded text so far (malloc'd).
char *token_stream_text(const TokenStream *s);
void token_stream_free(TokenStream *s);

#endif
