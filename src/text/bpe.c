#include "bpe.h"

#include <stdlib.h>
#include <string.h>

#include "utf8.h"

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static size_t round_up_pow2(size_t n) {
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

void str_map_init(StrMap *m, size_t expected) {
    m->capacity = round_up_pow2(expected * 2 + 1);
    m->count = 0;
    m->keys = xcalloc(m->capacity, sizeof *m->keys);
    m->key_lengths = xcalloc(m->capacity, sizeof *m->key_lengths);
    m->values = xcalloc(m->capacity, sizeof *m->values);
}

static void str_map_grow(StrMap *m) {
    StrMap bigger;
    str_map_init(&bigger, m->capacity);
    for (size_t i = 0; i < m->capacity; i++)
        if (m->keys[i]) str_map_put(&bigger, m->keys[i], m->key_lengths[i], m->values[i]);
    str_map_free(m);
    *m = bigger;
}

void str_map_put(StrMap *m, const char *key, size_t length, int value) {
    if ((m->count + 1) * 2 > m->capacity) str_map_grow(m);
    size_t mask = m->capacity - 1;
    for (size_t i = hash_bytes(key, length) & mask;; i = (i + 1) & mask) {
        if (!m->keys[i]) {
            m->keys[i] = key;
            m->key_lengths[i] = length;
            m->values[i] = value;
            m->count++;
            return;
        }
        if (m->key_lengths[i] == length && memcmp(m->keys[i], key, length) == 0) {
            m->values[i] = value;
            return;
        }
    }
}

int str_map_get(const StrMap *m, const char *key, size_t length) {
    if (!m->capacity) return -1;
    size_t mask = m->capacity - 1;
    for (size_t i = hash_bytes(key, length) & mask;; i = (i + 1) & mask) {
        if (!m->keys[i]) return -1;
        if (m->key_lengths[i] == length && memcmp(m->keys[i], key, length) == 0) return m->values[i];
    }
}

void str_map_free(StrMap *m) {
    free(m->keys);
    free(m->key_lengths);
    free(m->values);
    memset(m, 0, sizeof *m);
}

static uint64_t pair_key(int left, int right) { return (((uint64_t)(uint32_t)left << 32) | (uint32_t)right) + 1; }

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static void pair_map_init(PairMap *m, size_t expected) {
    m->capacity = round_up_pow2(expected * 2 + 1);
    m->count = 0;
    m->keys = xcalloc(m->capacity, sizeof *m->keys);
    m->priority = xcalloc(m->capacity, sizeof *m->priority);
    m->merged = xcalloc(m->capacity, sizeof *m->merged);
}

static void pair_map_free(PairMap *m) {
    free(m->keys);
    free(m->priority);
    free(m->merged);
    memset(m, 0, sizeof *m);
}

// Returns the slot of key (filled or the empty one where it would go).
static size_t pair_map_slot(const PairMap *m, uint64_t key) {
    size_t mask = m->capacity - 1;
    size_t i = hash_u64(key) & mask;
    while (m->keys[i] && m->keys[i] != key) i = (i + 1) & mask;
    return i;
}

static void pair_map_insert(PairMap *m, uint64_t key, int priority, int merged) {
    if ((m->count + 1) * 2 > m->capacity) {
        PairMap bigger;
        pair_map_init(&bigger, m->capacity);
        for (size_t i = 0; i < m->capacity; i++)
            if (m->keys[i]) pair_map_insert(&bigger, m->keys[i], m->priority[i], m->merged[i]);
        pair_map_free(m);
        *m = bigger;
    }
    size_t slot = pair_map_slot(m, key);
    if (m->keys[slot]) return;  // first rule wins
    m->keys[slot] = key;
    m->priority[slot] = priority;
    m->merged[slot] = merged;
    m->count++;
}

void bpe_init(Bpe *bpe, size_t vocab_hint) {
    memset(bpe, 0, sizeof *bpe);
    str_map_init(&bpe->vocab, vocab_hint);
    pair_map_init(&bpe->merges, vocab_hint * 2);
    for (int i = 0; i < 256; i++) bpe->byte_ids[i] = -1;
    bpe->unk_id = -1;
}

void bpe_add_merge(Bpe *bpe, int left, int right, int priority, int merged) {
    pair_map_insert(&bpe->merges, pair_key(left, right), priority, merged);
}

void bpe_free(Bpe *bpe) {
    free(bpe->frozen);  // the strings belong to the tokenizer's piece table
    free(bpe->frozen_lengths);
    str_map_free(&bpe->vocab);
    pair_map_free(&bpe->merges);
    memset(bpe, 0, sizeof *bpe);
}

typedef struct BpeSymbol {
    size_t start;
    size_t length;  // 0 once merged into its left neighbour
    int id;         // -1: not in the vocabulary
    int prev, next; // -1 at the ends
    int frozen;
} BpeSymbol;

typedef struct BpePair {
    int priority;
    int left, right;
    int left_id, right_id;
    int merged;
} BpePair;

void bpe_scratch_free(BpeScratch *scratch) {
    free(scratch->symbols);
    free(scratch->heap);
    memset(scratch, 0, sizeof *scratch);
}

// Heap order: lower priority first, then the leftmost pair.
static int pair_before(const BpePair *a, const BpePair *b) {
    if (a->priority != b->priority) return a->priority < b->priority;
    return a->left < b->left;
}

static void heap_push(BpeScratch *s, int *count, BpePair pair) {
    if (*count == s->heap_capacity) {
        s->heap_capacity = s->heap_capacity ? s->heap_capacity * 2 : 64;
        s->heap = xrealloc(s->heap, (size_t)s->heap_capacity * sizeof *s->heap);
    }
    int i = (*count)++;
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (!pair_before(&pair, &s->heap[parent])) break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = pair;
}

static BpePair heap_pop(BpeScratch *s, int *count) {
    BpePair top = s->heap[0];
    BpePair last = s->heap[--(*count)];
    int i = 0;
    for (;;) {
        int child = 2 * i + 1;
        if (child >= *count) break;
        if (child + 1 < *count && pair_before(&s->heap[child + 1], &s->heap[child])) child++;
        if (!pair_before(&s->heap[child], &last)) break;
        s->heap[i] = s->heap[child];
        i = child;
    }
    if (*count > 0) s->heap[i] = last;
    return top;
}

static void maybe_push_pair(const Bpe *bpe, BpeScratch *s, int *heap_count, int left, int right) {
    if (left < 0 || right < 0) return;
    const BpeSymbol *l = &s->symbols[left], *r = &s->symbols[right];
    if (l->id < 0 || r->id < 0 || l->frozen || r->frozen) return;
    const PairMap *m = &bpe->merges;
    size_t slot = pair_map_slot(m, pair_key(l->id, r->id));
    if (!m->keys[slot]) return;
    BpePair pair = {m->priority[slot], left, right, l->id, r->id, m->merged[slot]};
    heap_push(s, heap_count, pair);
}

// Length of the frozen (user-defined) piece at text, longest first, or 0.
static size_t frozen_match(const Bpe *bpe, const char *text, size_t n) {
    size_t best = 0;
    for (int i = 0; i < bpe->n_frozen; i++)
        if (bpe->frozen_lengths[i] > best && bpe->frozen_lengths[i] <= n &&
            memcmp(text, bpe->frozen[i], bpe->frozen_lengths[i]) == 0)
            best = bpe->frozen_lengths[i];
    return best;
}

static void emit_unknown(const Bpe *bpe, const char *text, size_t length, int *last_was_unk, IntVec *out) {
    if (bpe->byte_fallback) {
        int all_bytes = 1;
        for (size_t i = 0; i < length; i++)
            if (bpe->byte_ids[(unsigned char)text[i]] < 0) all_bytes = 0;
        if (all_bytes) {
            for (size_t i = 0; i < length; i++) int_vec_push(out, bpe->byte_ids[(unsigned char)text[i]]);
            *last_was_unk = 0;
            return;
        }
    }
    if (bpe->unk_id < 0) return;  // no unknown token: the text is dropped, as in HF
    if (*last_was_unk && bpe->fuse_unk) return;
    int_vec_push(out, bpe->unk_id);
    *last_was_unk = 1;
}

void bpe_encode(const Bpe *bpe, const char *word, size_t length, BpeScratch *s, IntVec *out) {
    if (length == 0) return;
    if (bpe->ignore_merges) {
        int id = str_map_get(&bpe->vocab, word, length);
        if (id >= 0) {
            int_vec_push(out, id);
            return;
        }
    }
    // Initial symbols: one per character (invalid bytes stand alone).
    int n = 0;
    for (size_t pos = 0; pos < length;) {
        size_t len = frozen_match(bpe, word + pos, length - pos);
        int frozen = len > 0;
        if (!len) len = utf8_char_length(word + pos, length - pos);
        if (!len) len = 1;
        if (n == s->symbols_capacity) {
            s->symbols_capacity = s->symbols_capacity ? s->symbols_capacity * 2 : 256;
            s->symbols = xrealloc(s->symbols, (size_t)s->symbols_capacity * sizeof *s->symbols);
        }
        s->symbols[n] = (BpeSymbol){pos, len, str_map_get(&bpe->vocab, word + pos, len), n - 1, -1, frozen};
        if (n > 0) s->symbols[n - 1].next = n;
        n++;
        pos += len;
    }
    int heap_count = 0;
    for (int i = 0; i + 1 < n; i++) maybe_push_pair(bpe, s, &heap_count, i, i + 1);
    while (heap_count > 0) {
        BpePair top = heap_pop(s, &heap_count);
        BpeSymbol *l = &s->symbols[top.left];
        BpeSymbol *r = &s->symbols[top.right];
        // Stale: either side merged away or changed since the pair was pushed.
        if (l->length == 0 || r->length == 0 || l->next != top.right || l->id != top.left_id || r->id != top.right_id)
            continue;
        l->length += r->length;
        l->id = top.merged;
        l->next = r->next;
        if (r->next >= 0) s->symbols[r->next].prev = top.left;
        r->length = 0;
        maybe_push_pair(bpe, s, &heap_count, l->prev, top.left);
        maybe_push_pair(bpe, s, &heap_count, top.left, l->next);
    }
    int last_was_unk = 0;
    for (int i = 0; i >= 0 && n > 0; i = s->symbols[i].next) {
        const BpeSymbol *sym = &s->symbols[i];
        if (sym->id >= 0) {
            int_vec_push(out, sym->id);
            last_was_unk = 0;
        } else {
            emit_unknown(bpe, word + sym->start, sym->length, &last_was_unk, out);
        }
    }
}
