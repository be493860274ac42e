// zero_selftest: run under `mpirun -np N` (or alone). Tensors whose total
// size does not divide by N (so shards are padded and cut through tensors),
// gradients that differ per rank; for ZeRO stages 0-3, several zero_step
// updates are compared with what one process computes on its own from the
// summed gradients: clip_grad_norm + adamw_step (tested against the AdamW
// formula in tests/unit/test_optimizer.c). zero_gather_state must give the
// reference moments. Prints "zero ok rank R of N".
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/dist/comm.h"
#include "../../src/dist/zero.h"

enum { N_TENSORS = 3, STEPS = 4 };
static const size_t sizes[N_TENSORS] = {7, 1031, 5};  // 1043 values: prime, so never an even split

// The gradient rank r contributes to element j of tensor i at step t.
static float grad_of(int rank, int i, size_t j, int t) {
    return (float)(sin(0.37 * (double)j + 1.3 * i + 0.71 * t) * (1.0 + rank) * (i == 1 ? 3.0 : 0.5));
}

static double worst_relative(const float *a, const float *b, size_t n) {
    double worst = 0, scale = 1e-30;
    for (size_t j = 0; j < n; j++) scale = fmax(scale, fabs(b[j]));
    for (size_t j = 0; j < n; j++) worst = fmax(worst, fabs((double)a[j] - b[j]) / scale);
    return worst;
}

// bucket: elements per collective call (0: the default), small to cut the
// shards into several pieces and the stage-0 tensors into several buckets.
static int check_stage(Comm *comm, int stage, size_t bucket) {
    int rank = comm_rank(comm), world = comm_size(comm);
    Error err;
    float *value[N_TENSORS], *grad[N_TENSORS], *ref_value[N_TENSORS], *ref_grad[N_TENSORS];
    ParamRef params[N_TENSORS], ref[N_TENSORS];
    static const char *names[N_TENSORS] = {"a", "b", "c"};
    for (int i = 0; i < N_TENSORS; i++) {
        value[i] = malloc(sizes[i] * sizeof(float));
        grad[i] = malloc(sizes[i] * sizeof(float));
        ref_value[i] = malloc(sizes[i] * sizeof(float));
        ref_grad[i] = malloc(sizes[i] * sizeof(float));
        for (size_t j = 0; j < sizes[i]; j++) value[i][j] = ref_value[i][j] = (float)cos(0.1 * (double)j + i);
        ParamRef p = {.name = names[i], .numel = sizes[i], .ndim = 1, .shape = {(int64_t)sizes[i]}, .decay = i != 2};
        params[i] = ref[i] = p;
        params[i].value = value[i];
        params[i].grad = grad[i];
        ref[i].value = ref_value[i];
        ref[i].grad = ref_grad[i];
    }
    AdamW full, ref_opt;
    Zero zero;
    int bad = 0;
    if (adamw_init(&full, params, N_TENSORS, 0.9, 0.999, 1e-8, 0.01, &err) != 0 ||
        adamw_init(&ref_opt, ref, N_TENSORS, 0.9, 0.999, 1e-8, 0.01, &err) != 0 ||
        zero_init(&zero, comm, stage, params, N_TENSORS, &full, &err) != 0) {
        fprintf(stderr, "zero_selftest: %s\n", err.message);
        return 1;
    }
    if (bucket) zero.bucket = bucket;
    for (int t = 1; t <= STEPS && !bad; t++) {
        for (int i = 0; i < N_TENSORS; i++)
            for (size_t j = 0; j < sizes[i]; j++) {
                grad[i][j] = grad_of(rank, i, j, t);
                float sum = 0;
                for (int r = 0; r < world; r++) sum += grad_of(r, i, j, t);  // (MPI may add in another order)
                ref_grad[i][j] = sum;
            }
        double lr = 1e-2 * t, norm = 0;
        double max_norm = t % 2 ? 1.0 : 0.0;  // clipping on odd steps only
        if (zero_step(&zero, &full, params, N_TENSORS, max_norm, lr, &norm, &err) != 0) {
            fprintf(stderr, "zero_selftest: %s\n", err.message);
            return 1;
        }
        double ref_norm = clip_grad_norm(ref, N_TENSORS, max_norm);
        adamw_step(&ref_opt, ref, N_TENSORS, lr);
        if (fabs(norm - ref_norm) > 1e-6 * ref_norm) {  // MPI may sum 3+ ranks in another order
            fprintf(stderr, "zero_selftest rank %d stage %d step %d: grad norm %.17g, expected %.17g\n", rank, stage, t,
                    norm, ref_norm);
            bad = 1;
        }
        for (int i = 0; i < N_TENSORS && !bad; i++)
            if (worst_relative(value[i], ref_value[i], sizes[i]) > 1e-6) {
                fprintf(stderr, "zero_selftest rank %d stage %d step %d: tensor %s differs by %g\n", rank, stage, t,
                        names[i], worst_relative(value[i], ref_value[i], sizes[i]));
                bad = 1;
            }
    }
    if (!bad && zero_gather_state(&zero, &full, params, N_TENSORS, &err) != 0) {
        fprintf(stderr, "zero_selftest: %s\n", err.message);
        bad = 1;
    }
    for (int i = 0; i < N_TENSORS && !bad; i++)
        if (worst_relative(full.exp_avg[i], ref_opt.exp_avg[i], sizes[i]) > 1e-6 ||
            worst_relative(full.exp_avg_sq[i], ref_opt.exp_avg_sq[i], sizes[i]) > 1e-6 || full.step != STEPS) {
            fprintf(stderr, "zero_selftest rank %d stage %d: gathered moments of %s differ\n", rank, stage, names[i]);
            bad = 1;
        }
    size_t expected_bytes = stage == 0 ? 2 * 1043 * sizeof(float) : 2 * ((1043 + (size_t)world - 1) / (size_t)world) * sizeof(float);
    if (!bad && zero_state_bytes(&zero) != expected_bytes) {
        fprintf(stderr, "zero_selftest rank %d stage %d: %zu state bytes, expected %zu\n", rank, stage,
                zero_state_bytes(&zero), expected_bytes);
        bad = 1;
    }
    zero_free(&zero);
    adamw_free(&full);
    adamw_free(&ref_opt);
    for (int i = 0; i < N_TENSORS; i++) {
        free(value[i]);
        free(grad[i]);
        free(ref_value[i]);
        free(ref_grad[i]);
    }
    return bad;
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
        bad |= check_stage(comm, stage, 100);  // pieces of 100 / N per rank; tensor b (1031) above a bucket
    }
    if (!bad) printf("zero ok rank %d of %d\n", comm_rank(comm), comm_size(comm));
    fflush(stdout);
    comm_finalize(comm);
    return bad;
}
