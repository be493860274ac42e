// arena.c - see arena.h.
#include "arena.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#endif

// Blocks of at least this size are offered to the kernel for transparent
// huge pages: fewer TLB misses when GEMMs sweep activations.
#define ARENA_HUGE_PAGE ((size_t)2 << 20)

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// Under AddressSanitizer (make asan) every byte of the arena that no live
// buffer owns is poisoned, the rounding after each buffer included, so a
// kernel that reads or writes past its buffer is caught as it would be with
// one malloc per buffer. Elsewhere these do nothing.
static void mark_usable(void *p, size_t n) {
#ifdef __SANITIZE_ADDRESS__
    ASAN_UNPOISON_MEMORY_REGION(p, n);
#else
    (void)p, (void)n;
#endif
}

static void mark_unusable(void *p, size_t n) {
#ifdef __SANITIZE_ADDRESS__
    ASAN_POISON_MEMORY_REGION(p, n);
#else
    (void)p, (void)n;
#endif
}

// The block and the overflow buffers are mapped and unmapped directly (page
// aligned), so that memory given back really leaves the process: malloc would
// keep the first step's overflow buffers in its heap next to the new block.
static void *map_bytes(size_t size) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    mark_unusable(p, size);
    return p;
}

static void unmap_bytes(void *p, size_t size) {
    if (p == NULL) return;
    mark_usable(p, size);  // a later mapping at this address must not inherit the poison
    munmap(p, size);
}

static int grow_array(void **items, int *capacity, size_t item_size) {
    int grown = *capacity ? 2 * *capacity : 32;
    void *p = realloc(*items, item_size * (size_t)grown);
    if (p == NULL) return -1;
    *items = p;
    *capacity = grown;
    return 0;
}

static void remove_hole(Arena *a, int i) {
    memmove(&a->holes[i], &a->holes[i + 1], sizeof(ArenaRange) * (size_t)(a->n_holes - i - 1));
    a->n_holes--;
}

// Returns the range's place in the free structure to the arena: merged with
// the holes around it, or lowering top when it is the highest range.
// Returns -1 only when the holes array could not grow (the range then stays
// unused until arena_reset).
static int release_range(Arena *a, size_t offset, size_t size) {
    int i = 0;
    while (i < a->n_holes && a->holes[i].offset < offset) i++;
    int merge_prev = i > 0 && a->holes[i - 1].offset + a->holes[i - 1].size == offset;
    int merge_next = i < a->n_holes && offset + size == a->holes[i].offset;
    if (merge_prev) {
        a->holes[i - 1].size += size;
        if (merge_next) {
            a->holes[i - 1].size += a->holes[i].size;
            remove_hole(a, i);
        }
        i--;
    } else if (merge_next) {
        a->holes[i].offset = offset;
        a->holes[i].size += size;
    } else {
        if (a->n_holes == a->holes_capacity &&
            grow_array((void **)&a->holes, &a->holes_capacity, sizeof(ArenaRange)) != 0)
            return -1;
        memmove(&a->holes[i + 1], &a->holes[i], sizeof(ArenaRange) * (size_t)(a->n_holes - i));
        a->holes[i] = (ArenaRange){offset, size};
        a->n_holes++;
    }
    if (a->holes[i].offset + a->holes[i].size == a->top) {
        a->top = a->holes[i].offset;
        remove_hole(a, i);
    }
    return 0;
}

void *arena_alloc(Arena *a, size_t bytes) {
    size_t size = round_up(bytes ? bytes : 1, ARENA_ALIGN);
    // Best fit among the holes, else on top.
    int best = -1;
    for (int i = 0; i < a->n_holes; i++)
        if (a->holes[i].size >= size && (best < 0 || a->holes[i].size < a->holes[best].size)) best = i;
    size_t offset;
    if (best >= 0) {
        offset = a->holes[best].offset;
        a->holes[best].offset += size;
        a->holes[best].size -= size;
        if (a->holes[best].size == 0) remove_hole(a, best);
    } else {
        offset = a->top;
        a->top += size;
        if (a->top > a->high_water) a->high_water = a->top;
    }
    if (offset + size <= a->capacity) {
        mark_usable(a->block + offset, bytes);
        return a->block + offset;
    }
    // Past the block: a buffer of its own until arena_reset regrows the block.
    void *p = NULL;
    if ((a->n_overflow < a->overflow_capacity ||
         grow_array((void **)&a->overflow, &a->overflow_capacity, sizeof(ArenaOverflow)) == 0) &&
        (p = map_bytes(size)) != NULL) {
        a->overflow[a->n_overflow++] = (ArenaOverflow){p, offset, size};
        mark_usable(p, bytes);
        return p;
    }
    release_range(a, offset, size);
    return NULL;
}

void arena_free(Arena *a, void *p, size_t bytes) {
    if (p == NULL) return;
    size_t size = round_up(bytes ? bytes : 1, ARENA_ALIGN), offset;
    unsigned char *c = p;
    if (a->block && c >= a->block && c < a->block + a->capacity) {
        offset = (size_t)(c - a->block);
        mark_unusable(c, size);
    } else {
        int i = 0;
        while (i < a->n_overflow && a->overflow[i].ptr != p) i++;
        if (i == a->n_overflow) return;  // not ours
        offset = a->overflow[i].offset;
        unmap_bytes(p, a->overflow[i].size);
        a->overflow[i] = a->overflow[--a->n_overflow];
    }
    release_range(a, offset, size);
}

void arena_reset(Arena *a) {
    for (int i = 0; i < a->n_overflow; i++) unmap_bytes(a->overflow[i].ptr, a->overflow[i].size);
    a->n_overflow = 0;
    a->n_holes = 0;
    a->top = 0;
    if (a->block) mark_unusable(a->block, a->capacity);
    if (a->high_water <= a->capacity) return;
    size_t capacity = round_up(a->high_water, a->high_water >= ARENA_HUGE_PAGE ? ARENA_HUGE_PAGE : ARENA_ALIGN);
    void *p = map_bytes(capacity);
    if (p == NULL) return;  // keep the old block; requests past it overflow as before
    unmap_bytes(a->block, a->capacity);
    a->block = p;
    a->capacity = capacity;
    a->grows++;
#ifdef MADV_HUGEPAGE
    if (capacity >= ARENA_HUGE_PAGE) madvise(p, capacity, MADV_HUGEPAGE);  // a hint; failure changes nothing
#endif
}

void arena_destroy(Arena *a) {
    for (int i = 0; i < a->n_overflow; i++) unmap_bytes(a->overflow[i].ptr, a->overflow[i].size);
    unmap_bytes(a->block, a->capacity);
    free(a->holes);
    free(a->overflow);
    memset(a, 0, sizeof *a);
}
