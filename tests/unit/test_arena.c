// The step arena (src/base/arena.h): placement, reuse of holes, overflow past
// the block, regrowth to the high-water mark, and a random workload checked
// against a simple model of what must hold (no two live buffers overlap, a
// buffer keeps its contents, and after one planning step a replay of the same
// sequence allocates nothing outside the block).
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "../../src/base/arena.h"
#include "../../src/base/rng.h"

static int inside(const Arena *a, const void *p) {
    const unsigned char *c = p;
    return a->block && c >= a->block && c < a->block + a->capacity;
}

Test(arena, first_step_overflows_then_the_block_holds_it) {
    Arena a = {0};
    void *x = arena_alloc(&a, 1000), *y = arena_alloc(&a, 3000);
    cr_assert(x && y);
    cr_assert_eq(a.capacity, 0);
    cr_assert_eq(a.n_overflow, 2);  // no block yet: each buffer is its own malloc
    cr_assert_eq((uintptr_t)x % ARENA_ALIGN, 0);
    cr_assert_eq(a.high_water, 1024 + 3008);  // sizes rounded to 64 bytes
    arena_free(&a, x, 1000);
    arena_free(&a, y, 3000);
    cr_assert_eq(a.n_overflow, 0);
    cr_assert_eq(a.top, 0);
    arena_reset(&a);
    cr_assert_geq(a.capacity, 1024 + 3008);
    cr_assert_eq(a.grows, 1);
    // The same sequence again: inside the block, at the offsets the first step planned.
    x = arena_alloc(&a, 1000), y = arena_alloc(&a, 3000);
    cr_assert(inside(&a, x) && inside(&a, y));
    cr_assert_eq((unsigned char *)x, a.block);
    cr_assert_eq((unsigned char *)y, a.block + 1024);
    cr_assert_eq(a.n_overflow, 0);
    arena_reset(&a);
    cr_assert_eq(a.grows, 1);  // nothing new to plan
    arena_destroy(&a);
}

Test(arena, holes_are_reused_best_fit_and_merge) {
    Arena a = {0};
    void *p[5];
    for (int i = 0; i < 5; i++) p[i] = arena_alloc(&a, 64 * (size_t)(i + 1));  // offsets 0, 64, 192, 384, 640
    arena_reset(&a);  // plan a block for 960 bytes
    for (int i = 0; i < 5; i++) p[i] = arena_alloc(&a, 64 * (size_t)(i + 1));
    cr_assert_eq(a.top, 960);
    arena_free(&a, p[1], 128);  // hole [64, 192)
    arena_free(&a, p[3], 256);  // hole [384, 640)
    cr_assert_eq(a.n_holes, 2);
    void *q = arena_alloc(&a, 100);  // 128 bytes: the smaller hole fits exactly
    cr_assert_eq((unsigned char *)q, a.block + 64);
    cr_assert_eq(a.n_holes, 1);
    arena_free(&a, q, 100);
    arena_free(&a, p[2], 192);  // [64, 640) is now one hole
    cr_assert_eq(a.n_holes, 1);
    cr_assert_eq(a.holes[0].offset, 64);
    cr_assert_eq(a.holes[0].size, 576);
    arena_free(&a, p[4], 320);  // the top buffer: top falls past the merged hole
    cr_assert_eq(a.top, 64);
    cr_assert_eq(a.n_holes, 0);
    arena_free(&a, p[0], 64);
    cr_assert_eq(a.top, 0);
    arena_destroy(&a);
}

Test(arena, foreign_pointers_are_ignored_and_zero_bytes_work) {
    Arena a = {0};
    int local = 0;
    arena_free(&a, &local, sizeof local);  // not the arena's: nothing happens
    arena_free(&a, NULL, 10);
    void *z1 = arena_alloc(&a, 0), *z2 = arena_alloc(&a, 0);
    cr_assert(z1 && z2 && z1 != z2);
    cr_assert_eq(a.top, 2 * ARENA_ALIGN);
    arena_destroy(&a);
    cr_assert_eq(a.block, NULL);
}

// A random workload: buffers filled with a pattern derived from their id,
// checked before release; no live buffers may overlap.
typedef struct {
    unsigned char *p;
    size_t n;
    uint8_t tag;
} Live;

static void run_workload(Arena *a, uint64_t seed, int *overflowed) {
    Rng rng;
    rng_seed(&rng, seed);
    Live live[64];
    int n_live = 0;
    *overflowed = 0;
    for (int step = 0; step < 2000; step++) {
        int do_alloc = n_live == 0 || (n_live < 64 && rng_uniform(&rng) < 0.55);
        if (do_alloc) {
            size_t n = 1 + rng_below(&rng, rng_uniform(&rng) < 0.1 ? 100000 : 3000);
            unsigned char *p = arena_alloc(a, n);
            cr_assert(p);
            cr_assert_eq((uintptr_t)p % ARENA_ALIGN, 0);
            *overflowed |= !inside(a, p);
            for (int i = 0; i < n_live; i++)
                cr_assert(p + n <= live[i].p || live[i].p + live[i].n <= p, "live buffers overlap");
            uint8_t tag = (uint8_t)(step * 31 + 7);
            memset(p, tag, n);
            live[n_live++] = (Live){p, n, tag};
        } else {
            int i = (int)rng_below(&rng, (uint64_t)n_live);
            for (size_t k = 0; k < live[i].n; k++) cr_assert_eq(live[i].p[k], live[i].tag, "contents changed");
            arena_free(a, live[i].p, live[i].n);
            live[i] = live[--n_live];
        }
    }
    while (n_live > 0) {
        n_live--;
        arena_free(a, live[n_live].p, live[n_live].n);
    }
    cr_assert_eq(a->top, 0, "everything released: top back at 0");
    cr_assert_eq(a->n_holes, 0);
    cr_assert_eq(a->n_overflow, 0);
}

Test(arena, random_workload_replays_inside_the_planned_block) {
    Arena a = {0};
    int overflowed;
    run_workload(&a, 1234, &overflowed);
    cr_assert(overflowed, "the first run has no block: it must have overflowed");
    size_t planned = a.high_water;
    arena_reset(&a);
    cr_assert_geq(a.capacity, planned);
    run_workload(&a, 1234, &overflowed);  // the same sequence: the planned block holds it all
    cr_assert_not(overflowed);
    cr_assert_eq(a.high_water, planned);
    arena_reset(&a);
    cr_assert_eq(a.grows, 1);
    arena_destroy(&a);
}
