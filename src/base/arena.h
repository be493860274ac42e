// arena.h - one block of memory for the buffers of a training step, planned
// once per shape and reused by every later step.
//
// Buffers are placed at byte offsets inside the block. Allocation takes the
// smallest free hole that fits (a buffer released out of order leaves a hole;
// holes next to each other merge) or else bumps the top. Nothing moves while
// buffers are live, so a request that does not fit in the block is served by
// its own mapping (an "overflow") at the offset it would have had, and the
// arena remembers how high the offsets went (the high-water mark). At
// arena_reset, when no buffer is live, the block is regrown to that mark: the
// first step of a larger shape plans the block, and later steps of the same
// or a smaller shape allocate nothing (no calloc, no page faults, no zeroing).
//
// Memory from the arena is NOT zeroed. Every buffer is 64-byte aligned (the
// same alignment for every buffer, so kernel results never depend on where a
// buffer landed).
#ifndef VLFT_ARENA_H
#define VLFT_ARENA_H

#include <stddef.h>

#define ARENA_ALIGN 64

typedef struct {
    size_t offset, size;
} ArenaRange;

typedef struct {
    void *ptr;  // its own mapping
    size_t offset, size;
} ArenaOverflow;

typedef struct {
    unsigned char *block;
    size_t capacity;    // bytes of block
    size_t top;         // end of the highest live buffer (offsets may pass capacity)
    size_t high_water;  // highest top ever reached: what the block is planned for
    ArenaRange *holes;  // free ranges below top, sorted by offset, never adjacent
    int n_holes, holes_capacity;
    ArenaOverflow *overflow;  // live buffers that did not fit in block
    int n_overflow, overflow_capacity;
    int grows;  // times arena_reset (re)allocated the block
} Arena;

// NULL when out of memory. bytes 0 gives a valid distinct buffer.
void *arena_alloc(Arena *a, size_t bytes);
// bytes: the size given to arena_alloc. Pointers the arena did not hand out are ignored.
void arena_free(Arena *a, void *p, size_t bytes);
// Drops every buffer at once and, when the offsets went past the block, grows
// the block to the high-water mark (kept when that allocation fails: requests
// then overflow as before).
void arena_reset(Arena *a);
// Frees everything, including the block.
void arena_destroy(Arena *a);

#endif
