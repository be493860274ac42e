// tokenizer.c - the encode / decode pipeline shared by every tokenizer kind.
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

#include "utf8.h"

static const char SPACE_SYMBOL[] = "\xe2\x96\x81";  // U+2581 "▁"
static const char REPLACEMENT_CHAR[] = "\xef\xbf\xbd";  // U+FFFD

Tokenizer *tokenizer_new(TokenizerKind kind) {
    Tokenizer *t = xcalloc(1, sizeof *t);
    t->kind = kind;
    t->bos_id = t->eos_id = t->pad_id = t->unk_id = -1;
    str_map_init(&t->piece_ids, 1024);
    return t;
}

void tokenizer_set_piece(Tokenizer *t, int id, const char *text, size_t length) {
    if (id >= t->n_pieces) {
        int n = t->n_pieces ? t->n_pieces : 256;
        while (n <= id) n *= 2;
        t->pieces = xrealloc(t->pieces, (size_t)n * sizeof *t->pieces);
        memset(t->pieces + t->n_pieces, 0, (size_t)(n - t->n_pieces) * sizeof *t->pieces);
        t->n_pieces = n;
    }
    free(t->pieces[id]);
    t->pieces[id] = xstrndup(text, length);
    str_map_put(&t->piece_ids, t->pieces[id], length, id);
}

void tokenizer_add_added_token(Tokenizer *t, const char *content, int id, int special, int lstrip, int rstrip) {
    for (int i = 0; i < t->n_added; i++)
        if (strcmp(t->added[i].content, content) == 0) {
            t->added[i].id = id;
            t->added[i].special = t->added[i].special || special;
            return;
        }
    t->added = xrealloc(t->added, (size_t)(t->n_added + 1) * sizeof *t->added);
    size_t length = strlen(content);
    t->added[t->n_added++] = (AddedToken){xstrndup(content, length), length, id, special, lstrip, rstrip};
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    bpe_free(&t->bpe);
    bpe_scratch_free(&t->scratch);
    for (int i = 0; i < t->n_pieces; i++) free(t->pieces[i]);
    free(t->pieces);
    str_map_free(&t->piece_ids);
    free(t->sp_piece_types);
    for (int i = 0; i < t->n_normalizers; i++) {
        free(t->normalizers[i].from);
        free(t->normalizers[i].to);
    }
    free(t->normalizers);
    for (int i = 0; i < t->n_decoders; i++) {
        free(t->decoders[i].from);
        free(t->decoders[i].to);
        free(t->decoders[i].content);
    }
    free(t->decoders);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    free(t);
}

// ---- SentencePiece normalizer (normalizer.cc, identity rules) ----

// One normalization unit at s: a user-defined piece, a UTF-8 character, or
// one invalid byte (which becomes U+FFFD).
static size_t sp_unit(const Tokenizer *t, const char *s, size_t n, int *invalid) {
    *invalid = 0;
    for (int i = 0; i < t->bpe.n_frozen; i++) {
        size_t len = t->bpe.frozen_lengths[i];
        if (len <= n && memcmp(s, t->bpe.frozen[i], len) == 0) {
            // longest user-defined match
            size_t best = len;
            for (int j = i + 1; j < t->bpe.n_frozen; j++) {
                size_t lj = t->bpe.frozen_lengths[j];
                if (lj > best && lj <= n && memcmp(s, t->bpe.frozen[j], lj) == 0) best = lj;
            }
            return best;
        }
    }
    size_t len = utf8_char_length(s, n);
    if (len == 0) {
        *invalid = 1;
        return 1;
    }
    return len;
}

static void sp_normalize(const Tokenizer *t, const char *text, size_t n, StrBuf *out) {
    out->length = 0;
    str_buf_append(out, "", 0);
    int squeeze = t->sp_remove_extra_whitespaces;
    if (squeeze)
        while (n > 0 && text[0] == ' ') {
            text++;
            n--;
        }
    if (n == 0) return;
    const char *space = t->sp_escape_whitespaces ? SPACE_SYMBOL : " ";
    if (!t->sp_treat_whitespace_as_suffix && t->sp_add_dummy_prefix) str_buf_append_str(out, space);
    int prev_space = squeeze;
    while (n > 0) {
        int invalid;
        size_t len = sp_unit(t, text, n, &invalid);
        const char *unit = invalid ? REPLACEMENT_CHAR : text;
        size_t unit_len = invalid ? 3 : len;
        if (prev_space)
            while (unit_len > 0 && unit[0] == ' ') {
                unit++;
                unit_len--;
            }
        if (unit_len > 0) {
            for (size_t i = 0; i < unit_len; i++) {
                if (t->sp_escape_whitespaces && unit[i] == ' ') str_buf_append_str(out, SPACE_SYMBOL);
                else str_buf_append_char(out, unit[i]);
            }
            prev_space = unit[unit_len - 1] == ' ';
        }
        text += len;
        n -= len;
        if (!squeeze) prev_space = 0;
    }
    if (squeeze) {
        size_t sl = strlen(space);
        while (out->length >= sl && memcmp(out->data + out->length - sl, space, sl) == 0) out->length -= sl;
        out->data[out->length] = 0;
    }
    if (t->sp_treat_whitespace_as_suffix && t->sp_add_dummy_prefix) str_buf_append_str(out, space);
}

// ---- Hugging Face normalizers and pre-tokenizer ----

static void replace_all(const char *s, size_t n, const char *from, const char *to, StrBuf *out) {
    size_t from_len = strlen(from);
    out->length = 0;
    str_buf_append(out, "", 0);
    if (from_len == 0) {
        str_buf_append(out, s, n);
        return;
    }
    size_t i = 0;
    while (i < n) {
        if (i + from_len <= n && memcmp(s + i, from, from_len) == 0) {
            str_buf_append_str(out, to);
            i += from_len;
        } else {
            str_buf_append_char(out, s[i]);
            i++;
        }
    }
}

static int is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

static void hf_normalize(const Tokenizer *t, const char *text, size_t n, StrBuf *out, StrBuf *tmp) {
    out->length = 0;
    str_buf_append(out, text, n);
    for (int i = 0; i < t->n_normalizers; i++) {
        const NormalizerStep *step = &t->normalizers[i];
        switch (step->kind) {
        case NORM_PREPEND:
            if (out->length > 0) {
                tmp->length = 0;
                str_buf_append_str(tmp, step->from);
                str_buf_append(tmp, out->data, out->length);
                StrBuf swap = *out;
                *out = *tmp;
                *tmp = swap;
            }
            break;
        case NORM_REPLACE: {
            replace_all(out->data, out->length, step->from, step->to, tmp);
            StrBuf swap = *out;
            *out = *tmp;
            *tmp = swap;
            break;
        }
        case NORM_STRIP: {
            size_t a = 0, b = out->length;
            if (step->left)
                while (a < b && is_ascii_space(out->data[a])) a++;
            if (step->right)
                while (b > a && is_ascii_space(out->data[b - 1])) b--;
            memmove(out->data, out->data + a, b - a);
            out->length = b - a;
            out->data[out->length] = 0;
            break;
        }
        }
    }
}

// Encodes one piece of text that holds no added token.
static void encode_segment(Tokenizer *t, const char *text, size_t n, int first_in_input, IntVec *out) {
    StrBuf norm = {0}, tmp = {0};
    if (t->kind == TOKENIZER_SLOW || t->kind == TOKENIZER_SENTENCEPIECE) {
        sp_normalize(t, text, n, &norm);
        bpe_encode(&t->bpe, norm.data, norm.length, &t->scratch, out);
    } else {
        hf_normalize(t, text, n, &norm, &tmp);
        if (!t->has_metaspace) {
            bpe_encode(&t->bpe, norm.data, norm.length, &t->scratch, out);
        } else {
            const char *repl = t->metaspace_replacement;
            size_t repl_len = strlen(repl);
            replace_all(norm.data, norm.length, " ", repl, &tmp);
            int prepend = t->metaspace_prepend == PREPEND_ALWAYS ||
                          (t->metaspace_prepend == PREPEND_FIRST && first_in_input);
            norm.length = 0;
            str_buf_append(&norm, "", 0);
            if (prepend && tmp.length > 0 && !(tmp.length >= repl_len && memcmp(tmp.data, repl, repl_len) == 0))
                str_buf_append(&norm, repl, repl_len);
            str_buf_append(&norm, tmp.data, tmp.length);
            if (!t->metaspace_split) {
                bpe_encode(&t->bpe, norm.data, norm.length, &t->scratch, out);
            } else {
                // Split before every replacement character (merged with next).
                size_t start = 0;
                for (size_t i = 1; i + repl_len <= norm.length; i++)
                    if (memcmp(norm.data + i, repl, repl_len) == 0) {
                        bpe_encode(&t->bpe, norm.data + start, i - start, &t->scratch, out);
                        start = i;
                    }
                bpe_encode(&t->bpe, norm.data + start, norm.length - start, &t->scratch, out);
            }
        }
    }
    str_buf_free(&norm);
    str_buf_free(&tmp);
}

// Leftmost-longest added token at or after pos; returns its index or -1 and
// the match bounds (widened by lstrip / rstrip).
static int find_added(const Tokenizer *t, const char *text, size_t n, size_t pos, size_t floor_pos, size_t *match_start,
                      size_t *match_end, size_t *token_start) {
    for (size_t i = pos; i < n; i++) {
        int best = -1;
        size_t best_len = 0;
        for (int k = 0; k < t->n_added; k++) {
            const AddedToken *a = &t->added[k];
            if (a->length > best_len && a->length <= n - i && a->content[0] == text[i] &&
                memcmp(text + i, a->content, a->length) == 0) {
                best = k;
                best_len = a->length;
            }
        }
        if (best >= 0) {
            size_t s = i, e = i + best_len;
            if (t->added[best].lstrip)
                while (s > floor_pos && is_ascii_space(text[s - 1])) s--;
            if (t->added[best].rstrip)
                while (e < n && is_ascii_space(text[e])) e++;
            *match_start = s;
            *match_end = e;
            *token_start = i;
            return best;
        }
    }
    return -1;
}

int tokenizer_encode(Tokenizer *t, const char *text, size_t n, int **ids) {
    IntVec out = {0};
    size_t pos = 0;
    while (pos < n) {
        size_t s = n, e = n, token_start = n;
        int k = t->n_added > 0 ? find_added(t, text, n, pos, pos, &s, &e, &token_start) : -1;
        if (k < 0) s = e = n;
        if (s > pos) encode_segment(t, text + pos, s - pos, pos == 0, &out);
        if (k >= 0) int_vec_push(&out, t->added[k].id);
        pos = e;
    }
    *ids = out.data ? out.data : xmalloc(sizeof(int));
    return out.length;
}

// ---- decoding ----

static const AddedToken *added_by_id(const Tokenizer *t, int id) {
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id == id) return &t->added[i];
    return NULL;
}

const char *tokenizer_id_to_token(const Tokenizer *t, int id) {
    const AddedToken *a = added_by_id(t, id);
    if (a) return a->content;
    if (id >= 0 && id < t->n_pieces) return t->pieces[id];
    return NULL;
}

// "<0xAB>" -> 0xAB, or -1.
static int byte_piece_value(const char *s) {
    if (strlen(s) != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

// Appends bytes, turning each byte of an invalid sequence into U+FFFD.
static void append_bytes_lossy(StrBuf *out, const char *bytes, size_t n) {
    if (utf8_valid(bytes, n)) {
        str_buf_append(out, bytes, n);
        return;
    }
    for (size_t i = 0; i < n; i++) str_buf_append_str(out, REPLACEMENT_CHAR);
}

static char *decode_sentencepiece(const Tokenizer *t, const int *ids, int n) {
    StrBuf out = {0}, bytes = {0};
    str_buf_append(&out, "", 0);
    int at_start = 1;
    for (int i = 0; i < n; i++) {
        int id = ids[i];
        const AddedToken *a = t->kind == TOKENIZER_SLOW ? added_by_id(t, id) : NULL;
        if (!a && (id < 0 || id >= t->n_pieces || !t->pieces[id])) continue;
        int type = a ? SP_USER_DEFINED : t->sp_piece_types[id];
        if (type == SP_BYTE && !a) {
            int v = byte_piece_value(t->pieces[id]);
            if (v >= 0) {
                char c = (char)v;
                str_buf_append(&bytes, &c, 1);
            }
            continue;
        }
        if (bytes.length) {
            append_bytes_lossy(&out, bytes.data, bytes.length);
            bytes.length = 0;
            at_start = 0;
        }
        if (a) {
            str_buf_append_str(&out, a->content);
            at_start = 0;
        } else if (type == SP_CONTROL) {
            continue;
        } else if (type == SP_UNKNOWN) {
            str_buf_append_str(&out, " \xe2\x81\x87 ");  // " ⁇ "
            at_start = 0;
        } else {
            const char *p = t->pieces[id];
            size_t len = strlen(p);
            if (at_start && t->sp_add_dummy_prefix && !t->sp_treat_whitespace_as_suffix && len >= 3 &&
                memcmp(p, SPACE_SYMBOL, 3) == 0) {
                p += 3;
                len -= 3;
            }
            StrBuf tmp = {0};
            replace_all(p, len, SPACE_SYMBOL, " ", &tmp);
            str_buf_append(&out, tmp.data, tmp.length);
            str_buf_free(&tmp);
            at_start = 0;
        }
    }
    if (bytes.length) append_bytes_lossy(&out, bytes.data, bytes.length);
    str_buf_free(&bytes);
    return out.data;
}

typedef struct {
    char **items;
    int n;
} TokenList;

static void token_list_set(TokenList *l, int i, StrBuf *b) {
    free(l->items[i]);
    l->items[i] = b->data ? b->data : xstrndup("", 0);
    memset(b, 0, sizeof *b);
}

static char *decode_hf(const Tokenizer *t, const int *ids, int n) {
    TokenList list = {xcalloc((size_t)n + 1, sizeof(char *)), 0};
    for (int i = 0; i < n; i++) {
        const char *tok = tokenizer_id_to_token(t, ids[i]);
        if (tok) list.items[list.n++] = xstrndup(tok, strlen(tok));
    }
    for (int d = 0; d < t->n_decoders; d++) {
        const DecoderStep *step = &t->decoders[d];
        switch (step->kind) {
        case DECODE_REPLACE:
            for (int i = 0; i < list.n; i++) {
                StrBuf b = {0};
                replace_all(list.items[i], strlen(list.items[i]), step->from, step->to, &b);
                token_list_set(&list, i, &b);
            }
            break;
        case DECODE_METASPACE:
            // Every replacement character becomes a space, except in the
            // first token, where (unless prepend_scheme is never) all of them
            // are dropped (tokenizers' Metaspace::decode_chain).
            for (int i = 0; i < list.n; i++) {
                StrBuf b = {0};
                int drop = i == 0 && step->prepend_scheme != PREPEND_NEVER;
                replace_all(list.items[i], strlen(list.items[i]), step->from, drop ? "" : " ", &b);
                token_list_set(&list, i, &b);
            }
            break;
        case DECODE_BYTE_FALLBACK: {
            int w = 0;
            for (int i = 0; i < list.n;) {
                if (byte_piece_value(list.items[i]) < 0) {
                    list.items[w++] = list.items[i++];
                    continue;
                }
                StrBuf bytes = {0}, b = {0};
                while (i < list.n && byte_piece_value(list.items[i]) >= 0) {
                    char c = (char)byte_piece_value(list.items[i]);
                    str_buf_append(&bytes, &c, 1);
                    free(list.items[i]);
                    i++;
                }
                append_bytes_lossy(&b, bytes.data, bytes.length);
                str_buf_free(&bytes);
                list.items[w++] = b.data;
            }
            list.n = w;
            break;
        }
        case DECODE_FUSE: {
            StrBuf b = {0};
            str_buf_append(&b, "", 0);
            for (int i = 0; i < list.n; i++) {
                str_buf_append_str(&b, list.items[i]);
                free(list.items[i]);
            }
            list.items[0] = b.data;
            list.n = 1;
            break;
        }
        case DECODE_STRIP:
            for (int i = 0; i < list.n; i++) {
                char *s = list.items[i];
                size_t len = strlen(s), cl = strlen(step->content), a = 0, e = len;
                for (int k = 0; k < step->start && cl > 0 && a + cl <= e && memcmp(s + a, step->content, cl) == 0; k++)
                    a += cl;
                for (int k = 0; k < step->stop && cl > 0 && e >= a + cl && memcmp(s + e - cl, step->content, cl) == 0; k++)
                    e -= cl;
                memmove(s, s + a, e - a);
                s[e - a] = 0;
            }
            break;
        }
    }
    StrBuf out = {0};
    str_buf_append(&out, "", 0);
    for (int i = 0; i < list.n; i++) {
        str_buf_append_str(&out, list.items[i]);
        free(list.items[i]);
    }
    free(list.items);
    return out.data;
}

char *tokenizer_decode(const Tokenizer *t, const int *ids, int n) {
    if (t->kind == TOKENIZER_SLOW || t->kind == TOKENIZER_SENTENCEPIECE) return decode_sentencepiece(t, ids, n);
    return decode_hf(t, ids, n);
}

// ---- accessors ----

int tokenizer_bos_id(const Tokenizer *t) { return t->bos_id; }
int tokenizer_eos_id(const Tokenizer *t) { return t->eos_id; }
int tokenizer_pad_id(const Tokenizer *t) { return t->pad_id; }
int tokenizer_unk_id(const Tokenizer *t) { return t->unk_id; }
void tokenizer_set_pad_id(Tokenizer *t, int id) { t->pad_id = id; }

int tokenizer_vocab_size(const Tokenizer *t) {
    int size = 0;
    for (int i = 0; i < t->n_pieces; i++)
        if (t->pieces[i]) size = i + 1;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id + 1 > size) size = t->added[i].id + 1;
    return size;
}

int tokenizer_token_to_id(const Tokenizer *t, const char *token) {
    for (int i = 0; i < t->n_added; i++)
        if (strcmp(t->added[i].content, token) == 0) return t->added[i].id;
    return str_map_get(&t->piece_ids, token, strlen(token));
}

int tokenizer_add_special_token(Tokenizer *t, const char *content) {
    int id = tokenizer_token_to_id(t, content);
    if (id < 0) id = tokenizer_vocab_size(t);
    tokenizer_add_added_token(t, content, id, 1, 0, 0);
    return id;
}

const char *tokenizer_kind(const Tokenizer *t) {
    switch (t->kind) {
    case TOKENIZER_FAST_JSON: return "fast (tokenizer.json)";
    case TOKENIZER_FAST_CONVERTED: return "fast (converted from tokenizer.model)";
    case TOKENIZER_SLOW: return "slow (tokenizer.model)";
    case TOKENIZER_SENTENCEPIECE: return "sentencepiece";
    }
    return "?";
}
