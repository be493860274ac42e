// tape.c - the activation tape: kept and scratch buffers of a step, all in
// the model's arena (see llava_internal.h).
#include <stdlib.h>

#include "llava_internal.h"

static void note_peak(Tape *t) {
    size_t now = t->kept + t->live_scratch;
    if (now > t->peak) t->peak = now;
}

float *tape_keep(Tape *t, size_t n, int vision) {
    if (t->count == t->capacity) {
        int capacity = t->capacity ? 2 * t->capacity : 256;
        TapeRecord *grown = realloc(t->records, sizeof(TapeRecord) * (size_t)capacity);
        if (grown == NULL) {
            t->failed = 1;
            return NULL;
        }
        t->records = grown;
        t->capacity = capacity;
    }
    size_t bytes = n * sizeof(float);
    float *p = arena_alloc(&t->arena, bytes);
    if (p == NULL) {
        t->failed = 1;
        return NULL;
    }
    t->records[t->count++] = (TapeRecord){p, bytes, vision};
    t->kept += bytes;
    if (vision) t->kept_vision += bytes;
    note_peak(t);
    return p;
}

float *tape_scratch(Tape *t, size_t n) {
    float *p = arena_alloc(&t->arena, n * sizeof(float));
    if (p == NULL) {
        t->failed = 1;
        return NULL;
    }
    t->live_scratch += n * sizeof(float);
    note_peak(t);
    return p;
}

void tape_release_scratch(Tape *t, float *p, size_t n) {
    if (p == NULL) return;
    arena_free(&t->arena, p, n * sizeof(float));
    t->live_scratch -= n * sizeof(float);
}

void *tape_step_bytes(Tape *t, size_t bytes) {
    void *p = arena_alloc(&t->arena, bytes);
    if (p == NULL) t->failed = 1;
    return p;
}

int tape_mark(const Tape *t) { return t->count; }

void tape_release_to(Tape *t, int mark) {
    while (t->count > mark) {
        const TapeRecord *r = &t->records[--t->count];
        arena_free(&t->arena, r->ptr, r->bytes);
        t->kept -= r->bytes;
        if (r->vision) t->kept_vision -= r->bytes;
    }
}

void tape_clear(Tape *t) {
    arena_reset(&t->arena);
    t->count = 0;
    t->kept = t->kept_vision = t->live_scratch = 0;
}

void tape_free(Tape *t) {
    arena_destroy(&t->arena);
    free(t->records);
    t->records = NULL;
    t->count = t->capacity = 0;
}
