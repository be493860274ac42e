// comm_selftest: run under `mpirun -np N`; checks every collective against
// values each rank can compute on its own, prints "comm ok rank R of N".
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/dist/comm.h"

static int fail(Comm *comm, const char *what) {
    fprintf(stderr, "comm_selftest rank %d: %s wrong\n", comm_rank(comm), what);
    return 1;
}

int main(int argc, char **argv) {
    Error err;
    Comm *comm = comm_init(&argc, &argv, &err);
    if (comm == NULL) {
        fprintf(stderr, "comm_selftest: %s\n", err.message);
        return 1;
    }
    int rank = comm_rank(comm), size = comm_size(comm), bad = 0;
    enum { SHARD = 1000 };
    size_t n = (size_t)SHARD * (size_t)size;
    float *values = malloc(n * sizeof(float)), *out = malloc(n * sizeof(float));
    double sums[2] = {rank + 1.0, 0.5};
    for (size_t i = 0; i < n; i++) values[i] = (float)(i % 97) * (float)(rank + 1);
    float triangle = (float)size * (float)(size + 1) / 2.0f;  // sum of (rank + 1)
    if (comm_allreduce_sum_f32(comm, values, n, &err) != 0) bad |= fail(comm, err.message);
    for (size_t i = 0; i < n && !bad; i++)
        if (values[i] != (float)(i % 97) * triangle) bad |= fail(comm, "allreduce f32");
    if (comm_allreduce_sum_f64(comm, sums, 2, &err) != 0 || sums[0] != triangle || sums[1] != 0.5 * size)
        bad |= fail(comm, "allreduce f64");
    for (size_t i = 0; i < n; i++) values[i] = (float)i + (float)rank;
    if (comm_reduce_scatter_sum_f32(comm, values, out, SHARD, &err) != 0) bad |= fail(comm, err.message);
    float rank_sum = (float)size * (float)(size - 1) / 2.0f;
    for (size_t i = 0; i < SHARD && !bad; i++)
        if (out[i] != (float)size * (float)((size_t)rank * SHARD + i) + rank_sum) bad |= fail(comm, "reduce-scatter");
    float shard[SHARD];
    for (int i = 0; i < SHARD; i++) shard[i] = (float)(rank * SHARD + i);
    if (comm_allgather_f32(comm, shard, out, SHARD, &err) != 0) bad |= fail(comm, err.message);
    for (size_t i = 0; i < n && !bad; i++)
        if (out[i] != (float)i) bad |= fail(comm, "all-gather");
    char message[32] = "";
    if (rank == size - 1) strcpy(message, "from the last rank");
    if (comm_broadcast(comm, message, sizeof message, size - 1, &err) != 0 || strcmp(message, "from the last rank") != 0)
        bad |= fail(comm, "broadcast");
    if (comm_barrier(comm, &err) != 0) bad |= fail(comm, "barrier");
    if (argc > 1 && strcmp(argv[1], "--abort-on-rank-1") == 0 && rank == 1) comm_abort(comm, 3, "deliberate failure");
    if (argc > 1 && strcmp(argv[1], "--abort-on-rank-1") == 0) {
        // the others wait in a collective; the abort on rank 1 must end them too
        comm_barrier(comm, &err);
    }
    if (!bad) printf("comm ok rank %d of %d\n", rank, size);
    free(values);
    free(out);
    comm_finalize(comm);
    return bad;
}
