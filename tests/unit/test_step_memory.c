// The activation arena across steps of a real (tiny) model: planned on the
// first step of a shape, reused without growing by steps of the same or a
// smaller shape, planned again only for a larger one; with and without
// activation checkpointing.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../src/base/fs.h"
#include "../../src/model/init_tiny.h"
#include "../../src/model/llava.h"

static char dir[256];

static void make_model(void) {
    snprintf(dir, sizeof dir, "/tmp/vlft-mem-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    TinyOptions o;
    init_tiny_defaults(&o);
    o.seed = 3;
    Error err;
    cr_assert_eq(init_tiny_write(dir, &o, &err), 0, "%s", err.message);
}

static void remove_model(void) {
    Error err;
    cr_assert_eq(remove_tree(dir, &err), 0, "%s", err.message);
}

TestSuite(step_memory, .init = make_model, .fini = remove_model);

// A text-only batch of B rows of L tokens (ids below the image token), the
// last `pad` positions of row 1 padding; returns the step's memory stats.
static LlavaMemoryStats step(LlavaModel *m, int B, int L, int pad) {
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)B * L), *labels = malloc(sizeof(int32_t) * (size_t)B * L);
    int32_t *mask = malloc(sizeof(int32_t) * (size_t)B * L);
    cr_assert(ids && labels && mask);
    for (int i = 0; i < B * L; i++) {
        int padded = i / L == 1 && i % L >= L - pad;
        ids[i] = padded ? 0 : 3 + (i * 37) % 500;
        labels[i] = padded ? -100 : ids[i];
        mask[i] = !padded;
    }
    LlavaBatch b = {.batch_size = B, .seq_len = L, .input_ids = ids, .labels = labels, .attention_mask = mask};
    double loss;
    Error err;
    cr_assert_eq(llava_forward_backward(m, &b, 1.0f, &loss, &err), 0, "%s", err.message);
    cr_assert(loss > 0);
    free(ids);
    free(labels);
    free(mask);
    LlavaMemoryStats s;
    llava_memory_stats(m, &s);
    return s;
}

static void check_plan(int checkpointing) {
    LlavaOptions o;
    llava_options_defaults(&o);
    o.finetuning_type = FINETUNE_FULL;
    o.gradient_checkpointing = checkpointing;
    o.threads = 1;
    LlavaModel *m;
    Error err;
    cr_assert_eq(llava_load(dir, &o, &m, &err), 0, "%s", err.message);
    LlavaMemoryStats first = step(m, 2, 48, 5);
    cr_expect_eq(first.activations_arena_grows, 1);
    cr_expect_geq(first.activations_arena, first.activations_peak);
    // Same shape, then smaller ones (fewer rows, shorter, more padding): the plan holds.
    LlavaMemoryStats again = step(m, 2, 48, 5), shorter = step(m, 2, 30, 9), single = step(m, 1, 48, 0);
    cr_expect_eq(again.activations_arena_grows, 1);
    cr_expect_eq(shorter.activations_arena_grows, 1);
    cr_expect_eq(single.activations_arena_grows, 1);
    cr_expect_eq(single.activations_arena, first.activations_arena);
    cr_expect_eq(again.activations_peak, first.activations_peak);
    cr_expect_lt(shorter.activations_peak, first.activations_peak);
    // A longer sequence is planned anew, once.
    LlavaMemoryStats longer = step(m, 2, 96, 5), longer_again = step(m, 2, 96, 5);
    cr_expect_eq(longer.activations_arena_grows, 2);
    cr_expect_eq(longer_again.activations_arena_grows, 2);
    cr_expect_gt(longer.activations_arena, first.activations_arena);
    llava_free(m);
}

Test(step_memory, arena_planned_per_shape_without_checkpointing) { check_plan(0); }

Test(step_memory, arena_planned_per_shape_with_checkpointing) { check_plan(1); }
