// tokenizer.h - text <-> token ids exactly as transformers' AutoTokenizer
// would for LLaMA-style SentencePiece BPE tokenizers (Yi, LLaMA, Vicuna).
//
// Two sources, picked as AutoTokenizer picks them (tokenizer_load):
//  - fast (use_fast_tokenizer true, the default): tokenizer.json when the
//    folder has one: added tokens split out first, then per remaining piece
//    the normalizers (Prepend, Replace, Strip), the Metaspace pre-tokenizer
//    when present, and the BPE model (merges, byte_fallback, fuse_unk,
//    ignore_merges). With only tokenizer.model, the fast tokenizer that
//    transformers' LlamaConverter builds from it: legacy normalizer
//    Prepend("▁") + Replace(" ", "▁") (or Metaspace when legacy is false).
//  - slow (use_fast_tokenizer false): LlamaTokenizer (legacy): added tokens
//    split out, each remaining piece encoded by SentencePiece itself
//    (normalizer flags from the .model, user-defined pieces, byte fallback).
// tokenizer_config.json supplies bos/eos/pad/unk tokens and added tokens
// (added_tokens_decoder); special_tokens_map.json is read when it has them.
//
// Added tokens are matched on the raw text, leftmost then longest, with their
// lstrip / rstrip flags; "normalized": true and "single_word" are not
// distinguished (LLaMA-style tokenizers write normalized false, single_word
// false). Normalizers other than Prepend / Replace(String) / Strip, and
// pre-tokenizers other than Metaspace, are refused with an error naming them.
//
// Encoding never adds BOS/EOS (add_special_tokens=False, as LLaMA-Factory
// encodes every template piece). A Tokenizer holds scratch space: use one
// per thread.
#ifndef VLFT_TEXT_TOKENIZER_H
#define VLFT_TEXT_TOKENIZER_H

#include <stddef.h>

#include "../base/error.h"

typedef struct Tokenizer Tokenizer;

// Loads the tokenizer of a Hugging Face model folder.
int tokenizer_load(Tokenizer **out, const char *model_dir, int use_fast_tokenizer, Error *err);
// A tokenizer.json on its own (no tokenizer_config.json).
int tokenizer_load_json_file(Tokenizer **out, const char *path, Error *err);
// A bare SentencePiece model, encoding exactly as SentencePieceProcessor
// .encode does (no added tokens: "<s>" in the text is plain text).
int tokenizer_load_sp_file(Tokenizer **out, const char *path, Error *err);
void tokenizer_free(Tokenizer *t);

// Encodes length bytes of text (any bytes; invalid UTF-8 becomes U+FFFD as
// SentencePiece does) without special tokens. *ids is malloc'd (free it);
// returns the count.
int tokenizer_encode(Tokenizer *t, const char *text, size_t length, int **ids);
// Decodes ids to a malloc'd NUL-terminated string (special tokens written
// out, as decode(..., skip_special_tokens=False)). Ids out of range are
// skipped.
char *tokenizer_decode(const Tokenizer *t, const int *ids, int n_ids);

// The special ids, -1 when the tokenizer has none.
int tokenizer_bos_id(const Tokenizer *t);
int tokenizer_eos_id(const Tokenizer *t);
int tokenizer_pad_id(const Tokenizer *t);
int tokenizer_unk_id(const Tokenizer *t);
// Sets the pad id (LLaMA-Factory pads with EOS when a tokenizer has no pad).
void tokenizer_set_pad_id(Tokenizer *t, int id);
// len(tokenizer): largest id + 1 over the vocabulary and added tokens.
int tokenizer_vocab_size(const Tokenizer *t);
// Id of a token string (added tokens first, then the vocabulary), or -1.
int tokenizer_token_to_id(const Tokenizer *t, const char *token);
// The token string of an id, or NULL.
const char *tokenizer_id_to_token(const Tokenizer *t, int id);
// tokenizer.add_special_tokens for one token: an existing token becomes a
// special added token with its id, a new one gets id len(tokenizer).
// Returns the id.
int tokenizer_add_special_token(Tokenizer *t, const char *content);
// "fast (tokenizer.json)", "fast (converted from tokenizer.model)",
// "slow (tokenizer.model)" or "sentencepiece".
const char *tokenizer_kind(const Tokenizer *t);

#endif
