// Streaming decode in whole characters (token_stream.h).
#include "token_stream.h"

#include <stdlib.h>
#include <string.h>

#include "utf8.h"

static const char REPLACEMENT[] = "\xEF\xBF\xBD";

void token_stream_init(TokenStream *s, const Tokenizer *tokenizer) {
    memset(s, 0, sizeof *s);
    s->tokenizer = tokenizer;
}

char *token_stream_text(const TokenStream *s) { return tokenizer_decode(s->tokenizer, s->ids.data, s->ids.length); }

// Bytes of text that are final: up to a trailing run of U+FFFD or a cut
// UTF-8 sequence.
static size_t settled_length(const char *text, size_t n) {
    size_t end = 0, i = 0;
    while (i < n) {
        size_t len = utf8_char_length(text + i, n - i);
        if (len == 0) break;  // cut sequence: wait for the rest
        i += len;
        if (!(len == 3 && memcmp(text + i - 3, REPLACEMENT, 3) == 0)) end = i;
    }
    return end;
}

static char *take(TokenStream *s, const char *text, size_t upto) {
    size_t from = s->emitted < upto ? s->emitted : upto;
    // Decoding byte tokens together can rewrite text already handed out (a
    // complete character followed by a lone byte: all become U+FFFD, as
    // tokenizers' ByteFallback does). What was printed stays printed; carry
    // on from the next character boundary so the output stays valid UTF-8.
    while (from < upto && ((unsigned char)text[from] & 0xC0) == 0x80) from++;
    char *out = xstrndup(text + from, upto - from);
    if (upto > s->emitted) s->emitted = upto;
    return out;
}

char *token_stream_push(TokenStream *s, int id) {
    int_vec_push(&s->ids, id);
    char *text = token_stream_text(s);
    char *out = take(s, text, settled_length(text, strlen(text)));
    free(text);
    return out;
}

char *token_stream_finish(TokenStream *s) {
    char *text = token_stream_text(s);
    char *out = take(s, text, strlen(text));
    free(text);
    return out;
}

void token_stream_free(TokenStream *s) {
    int_vec_free(&s->ids);
    s->emitted = 0;
}
