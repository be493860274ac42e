// zero_selftest: run under `mpirun -np N` (or alone). ZeRO stages 0-3
// driven as the trainer drives them, by a pretend model of four layers:
//   layer 0 reads a, layer 1 reads b, layer 2 reads c and a again (tied),
//   layer 3 reads nothing (a frozen layer)
// Tensor sizes 7, 1031, 5 (1043 values, prime: never an even split, and b
// is larger than the small bucket). Every update, rank r runs 1 or 2
// micro-batches (ranks differ, so some catch up with empty rounds); in some
// micro-batches a rank skips layer 1 (as a batch without images skips the
// vision tower); every layer adds its own gradient to the tensors it reads.
// The values after several updates must equal what one process computes
// from the summed gradients with clip_grad_norm + adamw_step (tested
// against the AdamW formula in tests/unit/test_optimizer.c). Stage 3 must
// hand the pass exactly the current values of the layer it runs and hold
// no full tensor outside its layer; zero_gather_state must give the
// reference moments. Prints "zero ok rank R of N".
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/dist/comm.h"
#include "../../src/dist/zero.h"

enum { N_TENSORS = 3, N_LAYERS = 4, STEPS = 4 };
static const size_t sizes[N_TENSORS] = {7, 1031, 5};
static const char *names[N_TENSORS] = {"a", "b", "c"};
static int layer_first[N_LAYERS + 1] = {0, 1, 2, 4, 4};
static int layer_members[4] = {0, 1, 2, 0};

// What layer l adds to element j of tensor i in micro-batch m of update t on rank r.
static float grad_of(int rank, int i, size_t j, int t, int m, int l) {
    return (float)(sin(0.37 * (double)j + 1.3 * i + 0.71 * t + 0.29 * m + 0.5 * l) * (1.0 + rank) *
                   (i == 1 ? 3.0 : 0.5));
}

static int micro_batches(int rank, int t) { return 1 + (rank + t) % 2; }
static int skips_layer_1(int rank, int t, int m) { return (rank + m + t) % 3 == 0; }

static double worst_relative(const float *a, const float *b, size_t n) {
    double worst = 0, scale = 1e-30;
    for (size_t j = 0; j < n; j++) scale = fmax(scale, fabs(b[j]));
    for (size_t j = 0; j < n; j++) worst = fmax(worst, fabs((double)a[j] - b[j]) / scale);
    return worst;
}

// ParamStorage over the test's ParamRef array (malloc'd buffers).
static int storage_alloc(void *ctx, int i, int value, int grad, Error *err) {
    ParamRef *p = &((ParamRef *)ctx)[i];
    if (value && !p->value && !(p->value = malloc(p->numel * sizeof(float)))) return error_set(err, "out of memory");
    if (grad && !p->grad && !(p->grad = calloc(p->numel, sizeof(float)))) return error_set(err, "out of memory");
    return 0;
}

static void storage_free(void *ctx, int i, int value, int grad) {
    ParamRef *p = &((ParamRef *)ctx)[i];
    if (value) {
        free(p->value);
        p->value = NULL;
    }
    if (grad) {
        free(p->grad);
        p->grad = NULL;
    }
}

typedef struct {
    Comm *comm;
    int stage, rank, world;
    ParamRef *params, *ref;
    Zero *zero;
    LayerHooks hooks;
    int bad;
} Check;

static int fail(Check *c, const char *what, int t, const char *detail) {
    fprintf(stderr, "zero_selftest rank %d stage %d update %d: %s%s%s\n", c->rank, c->stage, t, what,
            detail ? ": " : "", detail ? detail : "");
    c->bad = 1;
    return -1;
}

// One micro-batch of the pretend model through the hooks.
static int run_micro_batch(Check *c, int t, int m, int reduce) {
    Error err;
    int skip = skips_layer_1(c->rank, t, m);
    if (zero_round_begin(c->zero, reduce, &err) != 0) return fail(c, "round begin", t, err.message);
    for (int l = 0; l < N_LAYERS; l++) {
        if (l == 1 && skip) continue;
        if (c->hooks.before_forward(c->hooks.user, l, &err) != 0) return fail(c, "before_forward", t, err.message);
        for (int k = layer_first[l]; k < layer_first[l + 1]; k++) {
            int i = layer_members[k];
            // the layer sees its tensors' current values, bit for bit (the gather moves them unchanged)
            if (!c->params[i].value || memcmp(c->params[i].value, c->ref[i].value, sizes[i] * sizeof(float)) != 0)
                return fail(c, "a layer's forward does not see its current values", t, names[i]);
        }
        if (c->hooks.after_forward(c->hooks.user, l, &err) != 0) return fail(c, "after_forward", t, err.message);
    }
    for (int i = 0; i < N_TENSORS && c->stage == 3; i++)
        if (c->params[i].value) return fail(c, "a full tensor stays after the forward", t, names[i]);
    for (int l = N_LAYERS - 1; l >= 0; l--) {
        if (l == 1 && skip) continue;
        if (c->hooks.before_backward(c->hooks.user, l, &err) != 0) return fail(c, "before_backward", t, err.message);
        for (int k = layer_first[l]; k < layer_first[l + 1]; k++) {
            int i = layer_members[k];
            if (!c->params[i].value || !c->params[i].grad)
                return fail(c, "a layer's backward lacks its values or gradient", t, names[i]);
            for (size_t j = 0; j < sizes[i]; j++) c->params[i].grad[j] += grad_of(c->rank, i, j, t, m, l);
        }
        if (c->hooks.after_backward(c->hooks.user, l, &err) != 0) return fail(c, "after_backward", t, err.message);
    }
    if (zero_round_end(c->zero, &err) != 0) return fail(c, "round end", t, err.message);
    for (int i = 0; i < N_TENSORS && c->stage == 3; i++)
        if (c->params[i].value || c->params[i].grad)
            return fail(c, "a full tensor stays after the backward", t, names[i]);
    return 0;
}

// bucket: elements per collective call (0: the default), small to cut the
// tensors into several buckets with several in flight.
static int check_stage(Comm *comm, int stage, size_t bucket) {
    Check c = {.comm = comm, .stage = stage, .rank = comm_rank(comm), .world = comm_size(comm)};
    Error err;
    ParamRef params[N_TENSORS], ref[N_TENSORS];
    for (int i = 0; i < N_TENSORS; i++) {
        ParamRef p = {.name = names[i], .numel = sizes[i], .ndim = 1, .shape = {(int64_t)sizes[i]}, .decay = i != 2};
        params[i] = ref[i] = p;
        params[i].value = malloc(sizes[i] * sizeof(float));
        params[i].grad = calloc(sizes[i], sizeof(float));
        ref[i].value = malloc(sizes[i] * sizeof(float));
        ref[i].grad = calloc(sizes[i], sizeof(float));
        for (size_t j = 0; j < sizes[i]; j++) params[i].value[j] = ref[i].value[j] = (float)cos(0.1 * (double)j + i);
    }
    c.params = params;
    c.ref = ref;
    LayerTable layers = {.n_layers = N_LAYERS, .first = layer_first, .members = layer_members};
    ParamStorage storage = {.ctx = params, .alloc = storage_alloc, .free = storage_free};
    AdamW full, ref_opt;
    Zero zero;
    c.zero = &zero;
    if (adamw_init(&full, params, N_TENSORS, 0.9, 0.999, 1e-8, 0.01, &err) != 0 ||
        adamw_init(&ref_opt, ref, N_TENSORS, 0.9, 0.999, 1e-8, 0.01, &err) != 0 ||
        zero_init(&zero, comm, stage, params, N_TENSORS, &full, &layers, &storage, &err) != 0) {
        fprintf(stderr, "zero_selftest: %s\n", err.message);
        return 1;
    }
    if (bucket) zero.bucket = bucket;
    c.hooks = zero_hooks(&zero);
    // stage 3 refuses a pass outside a micro-batch: its values are not there
    if (stage == 3 && c.hooks.before_forward(c.hooks.user, 0, &err) == 0)
        fail(&c, "a pass outside a round ran", 0, NULL);
    for (int t = 1; t <= STEPS && !c.bad; t++) {
        // the reference: one process with every rank's micro-batches
        for (int i = 0; i < N_TENSORS; i++) memset(ref[i].grad, 0, sizes[i] * sizeof(float));
        int most = 0;
        for (int r = 0; r < c.world; r++) {
            int count = micro_batches(r, t);
            most = count > most ? count : most;
            for (int m = 0; m < count; m++)
                for (int l = N_LAYERS - 1; l >= 0; l--) {
                    if (l == 1 && skips_layer_1(r, t, m)) continue;
                    for (int k = layer_first[l]; k < layer_first[l + 1]; k++)
                        for (size_t j = 0; j < sizes[layer_members[k]]; j++)
                            ref[layer_members[k]].grad[j] += grad_of(r, layer_members[k], j, t, m, l);
                }
        }
        int count = micro_batches(c.rank, t);
        for (int m = 0; m < count && !c.bad; m++) run_micro_batch(&c, t, m, m == count - 1);
        if (c.bad) break;
        if (zero_catch_up(&zero, most, &err) != 0) {
            fail(&c, "catch up", t, err.message);
            break;
        }
        double lr = 1e-2 * t, norm = 0;
        double max_norm = t % 2 ? 1.0 : 0.0;  // clipping on odd updates only
        if (zero_step(&zero, &full, max_norm, lr, &norm, &err) != 0) {
            fail(&c, "step", t, err.message);
            break;
        }
        for (int i = 0; i < N_TENSORS; i++)  // the trainer's zero_grad
            if (params[i].grad) memset(params[i].grad, 0, sizes[i] * sizeof(float));
        double ref_norm = clip_grad_norm(ref, N_TENSORS, max_norm);
        adamw_step(&ref_opt, ref, N_TENSORS, lr);
        if (fabs(norm - ref_norm) > 1e-6 * ref_norm) {  // MPI and the rounds may add in another order
            char detail[128];
            snprintf(detail, sizeof detail, "%.17g, expected %.17g", norm, ref_norm);
            fail(&c, "grad norm", t, detail);
        }
        if (zero_gather_all(&zero, &err) != 0) {  // stage 3: the values to compare, on rank 0
            fail(&c, "gather all", t, err.message);
            break;
        }
        int holds_values = stage != 3 || c.rank == 0;
        if (stage == 3 && c.rank != 0 && params[0].value) fail(&c, "gather all gave values to a rank but 0", t, NULL);
        for (int i = 0; i < N_TENSORS && !c.bad && holds_values; i++) {
            double worst = worst_relative(params[i].value, ref[i].value, sizes[i]);
            if (worst > 1e-6) {
                char detail[128];
                snprintf(detail, sizeof detail, "tensor %s differs by %g", names[i], worst);
                fail(&c, "values", t, detail);
            }
            // from here on the pass compares against the values the ranks hold
            memcpy(ref[i].value, params[i].value, sizes[i] * sizeof(float));
        }
        for (int i = 0; i < N_TENSORS && stage == 3 && !c.bad; i++)
            if (comm_broadcast(comm, ref[i].value, sizes[i] * sizeof(float), 0, &err) != 0)
                fail(&c, "broadcast", t, err.message);
        zero_release_all(&zero);
    }
    // the full state is gathered on rank 0
    if (!c.bad && zero_gather_state(&zero, c.rank == 0 ? &full : NULL, &err) != 0)
        fail(&c, "gather state", STEPS, err.message);
    for (int i = 0; i < N_TENSORS && !c.bad && (stage == 0 || c.rank == 0); i++)
        if (worst_relative(full.exp_avg[i], ref_opt.exp_avg[i], sizes[i]) > 1e-6 ||
            worst_relative(full.exp_avg_sq[i], ref_opt.exp_avg_sq[i], sizes[i]) > 1e-6 || full.step != STEPS)
            fail(&c, "gathered moments differ", STEPS, names[i]);
    size_t parts = 0;
    for (int i = 0; i < N_TENSORS; i++) parts += (sizes[i] + (size_t)c.world - 1) / (size_t)c.world;
    size_t expected_bytes = stage == 0 ? 2 * 1043 * sizeof(float) : 2 * parts * sizeof(float);
    if (!c.bad && zero_state_bytes(&zero) != expected_bytes) fail(&c, "state bytes", STEPS, NULL);
    ZeroMemory mem;
    zero_memory(&zero, &mem);
    if (!c.bad && stage == 3 && (mem.values != parts * sizeof(float) || mem.grads != parts * sizeof(float)))
        fail(&c, "stage 3 holds more than its parts", STEPS, NULL);
    zero_free(&zero);
    adamw_free(&full);
    adamw_free(&ref_opt);
    for (int i = 0; i < N_TENSORS; i++) {
        free(params[i].value);
        free(params[i].grad);
        free(ref[i].value);
        free(ref[i].grad);
    }
    return c.bad;
}

int main(int argc, char **argv) {
    Error err;
    Comm *comm = comm_init(&argc, &argv, &err);
    if (comm == NULL) {
        fprintf(stderr, "zero_selftest: %s\n", err.message);
        return 1;
    }
    int bad = 0;
    for (int stage = 0; stage <= 3; stage++) {
        bad |= check_stage(comm, stage, 0);
        bad |= check_stage(comm, stage, 100);  // several buckets in flight; tensor b (1031) above a bucket
    }
    if (!bad) printf("zero ok rank %d of %d\n", comm_rank(comm), comm_size(comm));
    fflush(stdout);
    comm_finalize(comm);
    return bad;
}
