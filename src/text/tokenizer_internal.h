// tokenizer_internal.h - the Tokenizer's parts, shared by tokenizer.c (the
// encode/decode pipeline) and the loaders (tokenizer_json.c,
// tokenizer_load.c). Not for use outside src/text.
#ifndef VLFT_TEXT_TOKENIZER_INTERNAL_H
#define VLFT_TEXT_TOKENIZER_INTERNAL_H

#include "bpe.h"
#include "sp_model.h"
#include "tokenizer.h"

typedef enum { NORM_PREPEND, NORM_REPLACE, NORM_STRIP } NormalizerKind;

typedef struct {
    NormalizerKind kind;
    char *from;  // Replace: pattern; Prepend: the prefix
    char *to;    // Replace: content
    int left, right;  // Strip
} NormalizerStep;

typedef enum { DECODE_REPLACE, DECODE_BYTE_FALLBACK, DECODE_FUSE, DECODE_STRIP, DECODE_METASPACE } DecoderKind;

typedef struct {
    DecoderKind kind;
    char *from, *to;      // Replace; Metaspace: from = replacement
    char *content;        // Strip: the character stripped
    int start, stop;      // Strip: how many at each end
    int prepend_scheme;   // Metaspace
} DecoderStep;

typedef enum { PREPEND_NEVER = 0, PREPEND_ALWAYS = 1, PREPEND_FIRST = 2 } PrependScheme;

typedef struct {
    char *content;
    size_t length;
    int id;
    int special;
    int lstrip, rstrip;
} AddedToken;

typedef enum { TOKENIZER_FAST_JSON, TOKENIZER_FAST_CONVERTED, TOKENIZER_SLOW, TOKENIZER_SENTENCEPIECE } TokenizerKind;

struct Tokenizer {
    TokenizerKind kind;
    Bpe bpe;
    BpeScratch scratch;
    // id -> piece of the model vocabulary (n_pieces entries, NULL holes)
    char **pieces;
    int n_pieces;
    StrMap piece_ids;  // every piece -> id
    // SentencePiece normalizer (slow and raw SentencePiece kinds)
    int sp_add_dummy_prefix;
    int sp_remove_extra_whitespaces;
    int sp_escape_whitespaces;
    int sp_treat_whitespace_as_suffix;
    int *sp_piece_types;  // SpPieceType per id, for decoding
    // Hugging Face pipeline (fast kinds)
    NormalizerStep *normalizers;
    int n_normalizers;
    int has_metaspace;
    char metaspace_replacement[8];
    int metaspace_prepend;  // PrependScheme
    int metaspace_split;
    DecoderStep *decoders;
    int n_decoders;
    // added tokens, matched on the raw text before anything else
    AddedToken *added;
    int n_added;
    int bos_id, eos_id, pad_id, unk_id;
};

// Builds an empty tokenizer of the given kind.
Tokenizer *tokenizer_new(TokenizerKind kind);
// Registers piece text for id in the id <-> piece tables.
void tokenizer_set_piece(Tokenizer *t, int id, const char *text, size_t length);
// Adds (or updates) an added token.
void tokenizer_add_added_token(Tokenizer *t, const char *content, int id, int special, int lstrip, int rstrip);
// Fills bpe, pieces and SentencePiece flags from a parsed .model.
// hf_vocab: the initial-symbol vocabulary holds every piece (as the HF
// BPE converted from it does) rather than SentencePiece's mergeable ones.
void tokenizer_fill_from_sp(Tokenizer *t, const SpModel *model, int hf_vocab);
// Parses tokenizer.json text into t (a TOKENIZER_FAST_JSON).
int tokenizer_parse_json(Tokenizer *t, const char *json_text, const char *path, Error *err);

#endif
