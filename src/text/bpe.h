// bpe.h - byte-pair encoding of one pre-tokenized word, in O(n log n).
//
// One engine serves both tokenizer kinds:
//  - SentencePiece BPE (tokenizer.model): two adjacent symbols merge when
//    their concatenation is a piece; the piece with the highest score merges
//    first, ties to the leftmost pair (bpe_model.cc's agenda).
//  - Hugging Face BPE (tokenizer.json): pairs merge by their rank in the
//    merges list, lowest first, ties to the leftmost pair.
// Both become a table (left id, right id) -> (priority, merged id). Symbols
// live in a doubly linked list and candidate pairs in a binary heap; a popped
// pair whose symbols changed since it was pushed is skipped.
//
// Characters (or, for SentencePiece, user-defined pieces matched as a whole)
// that are not in the vocabulary become byte tokens <0xXX> when byte fallback
// is on, else the unknown id (consecutive unknowns fused into one when
// fuse_unk is set; SentencePiece always fuses).
#ifndef VLFT_TEXT_BPE_H
#define VLFT_TEXT_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "str_buf.h"

// string -> id, open addressing; keys point into storage owned elsewhere.
typedef struct {
    const char **keys;
    size_t *key_lengths;
    int *values;
    size_t capacity;  // power of two
    size_t count;
} StrMap;

void str_map_init(StrMap *m, size_t expected);
// Inserts or overwrites.
void str_map_put(StrMap *m, const char *key, size_t length, int value);
// Returns the id, or -1.
int str_map_get(const StrMap *m, const char *key, size_t length);
void str_map_free(StrMap *m);

typedef struct {
    uint64_t *keys;  // (left << 32 | right) + 1; 0 = empty
    int *priority;
    int *merged;
    size_t capacity;
    size_t count;
} PairMap;

typedef struct {
    StrMap vocab;          // symbol text -> id for the initial symbols
    PairMap merges;
    int byte_ids[256];     // <0xXX> ids, -1 where absent
    int byte_fallback;
    int unk_id;            // -1 when there is none
    int fuse_unk;
    int ignore_merges;     // HF: a word that is itself in the vocabulary is one token
    const char **frozen;   // SentencePiece user-defined pieces: matched whole, never merged
    size_t *frozen_lengths;
    int n_frozen;
} Bpe;

void bpe_init(Bpe *bpe, size_t vocab_hint);
// Adds a merge rule; an existing (left, right) keeps its first (better) rule.
void bpe_add_merge(Bpe *bpe, int left, int right, int priority, int merged);
void bpe_free(Bpe *bpe);

// Scratch space reused between calls (no allocation per word once warm).
typedef struct {
    struct BpeSymbol *symbols;
    int symbols_capacity;
    struct BpePair *heap;
    int heap_capacity;
} BpeScratch;

void bpe_scratch_free(BpeScratch *scratch);

// Appends the ids of word[0..length) to out.
void bpe_encode(const Bpe *bpe, const char *word, size_t length, BpeScratch *scratch, IntVec *out);

#endif
