#include "comm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef VLFT_MPI
#include <mpi.h>
#endif

struct Comm {
    int rank;
    int size;
    int uses_mpi;
};

Comm *comm_init(int *argc, char ***argv, Error *err) {
    Comm *comm = calloc(1, sizeof *comm);
    if (comm == NULL) {
        error_set(err, "out of memory");
        return NULL;
    }
    comm->size = 1;
    const char *world = getenv("OMPI_COMM_WORLD_SIZE");
    if (world == NULL || atoi(world) <= 1) return comm;
#ifdef VLFT_MPI
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        free(comm);
        error_set(err, "MPI_Init failed");
        return NULL;
    }
    // Errors come back as codes so the message can name what failed.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &comm->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &comm->size);
    comm->uses_mpi = 1;
    return comm;
#else
    (void)argc;
    (void)argv;
    free(comm);
    error_set(err, "started by mpirun with %s processes, but this vlft was built without MPI", world);
    return NULL;
#endif
}

void comm_finalize(Comm *comm) {
    if (comm == NULL) return;
#ifdef VLFT_MPI
    if (comm->uses_mpi) MPI_Finalize();
#endif
    free(comm);
}

int comm_rank(const Comm *comm) { return comm->rank; }
int comm_size(const Comm *comm) { return comm->size; }
int comm_is_distributed(const Comm *comm) { return comm->size > 1; }

#ifdef VLFT_MPI
static int check(int code, const char *what, Error *err) {
    if (code == MPI_SUCCESS) return 0;
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(code, text, &length);
    return error_set(err, "%s failed: %s", what, text);
}

// MPI counts are int; move large buffers in pieces.
#define MPI_CHUNK ((size_t)1 << 30)
#endif

#ifdef VLFT_MPI
// In-place sum of n elements of element_size bytes, in pieces MPI counts hold.
static int allreduce_sum(void *values, size_t n, size_t element_size, MPI_Datatype type, Error *err) {
    for (size_t done = 0; done < n; done += MPI_CHUNK) {
        size_t count = n - done < MPI_CHUNK ? n - done : MPI_CHUNK;
        if (check(MPI_Allreduce(MPI_IN_PLACE, (char *)values + done * element_size, (int)count, type, MPI_SUM,
                                MPI_COMM_WORLD),
                  "all-reduce", err) != 0)
            return -1;
    }
    return 0;
}
#endif

int comm_allreduce_sum_f32(Comm *comm, float *values, size_t n, Error *err) {
    if (!comm->uses_mpi) return 0;
#ifdef VLFT_MPI
    return allreduce_sum(values, n, sizeof(float), MPI_FLOAT, err);
#else
    return 0;
#endif
}

int comm_allreduce_sum_f64(Comm *comm, double *values, size_t n, Error *err) {
    if (!comm->uses_mpi) return 0;
#ifdef VLFT_MPI
    return allreduce_sum(values, n, sizeof(double), MPI_DOUBLE, err);
#else
    return 0;
#endif
}

int comm_reduce_scatter_sum_f32(Comm *comm, const float *values, float *out, size_t shard, Error *err) {
    if (!comm->uses_mpi) {
        memmove(out, values, shard * sizeof(float));
        return 0;
    }
#ifdef VLFT_MPI
    if (shard > (size_t)0x7fffffff) return error_set(err, "reduce-scatter shard of %zu elements is too large", shard);
    return check(MPI_Reduce_scatter_block(values, out, (int)shard, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
                 "reduce-scatter", err);
#else
    return 0;
#endif
}

int comm_allgather_f32(Comm *comm, const float *shard_values, float *out, size_t shard, Error *err) {
    if (!comm->uses_mpi) {
        memmove(out, shard_values, shard * sizeof(float));
        return 0;
    }
#ifdef VLFT_MPI
    if (shard > (size_t)0x7fffffff) return error_set(err, "all-gather shard of %zu elements is too large", shard);
    return check(MPI_Allgather(shard_values, (int)shard, MPI_FLOAT, out, (int)shard, MPI_FLOAT, MPI_COMM_WORLD),
                 "all-gather", err);
#else
    return 0;
#endif
}

int comm_gather_f32(Comm *comm, const float *shard_values, float *out, size_t shard, int root, Error *err) {
    if (!comm->uses_mpi) {
        memmove(out, shard_values, shard * sizeof(float));
        return 0;
    }
#ifdef VLFT_MPI
    if (shard > (size_t)0x7fffffff) return error_set(err, "gather shard of %zu elements is too large", shard);
    return check(MPI_Gather(shard_values, (int)shard, MPI_FLOAT, out, (int)shard, MPI_FLOAT, root, MPI_COMM_WORLD),
                 "gather", err);
#else
    return 0;
#endif
}

int comm_broadcast(Comm *comm, void *data, size_t bytes, int root, Error *err) {
    if (!comm->uses_mpi) return 0;
#ifdef VLFT_MPI
    for (size_t done = 0; done < bytes; done += MPI_CHUNK) {
        size_t count = bytes - done < MPI_CHUNK ? bytes - done : MPI_CHUNK;
        if (check(MPI_Bcast((char *)data + done, (int)count, MPI_BYTE, root, MPI_COMM_WORLD), "broadcast", err) != 0)
            return -1;
    }
#endif
    return 0;
}

struct CommRequest {
#ifdef VLFT_MPI
    MPI_Request mpi;
#endif
    int done;
};

#ifdef VLFT_MPI
static CommRequest *new_request(Error *err) {
    CommRequest *r = calloc(1, sizeof *r);
    if (r == NULL) error_set(err, "out of memory for a communication request");
    return r;
}
#endif

int comm_iallreduce_sum_f32(Comm *comm, float *values, size_t n, CommRequest **request, Error *err) {
    *request = NULL;
    if (!comm->uses_mpi) return 0;
#ifdef VLFT_MPI
    if (n > (size_t)0x7fffffff) return error_set(err, "all-reduce of %zu elements is too large for one request", n);
    CommRequest *r = new_request(err);
    if (r == NULL) return -1;
    if (check(MPI_Iallreduce(MPI_IN_PLACE, values, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r->mpi), "all-reduce",
              err) != 0) {
        free(r);
        return -1;
    }
    *request = r;
#endif
    return 0;
}

int comm_ireduce_scatter_sum_f32(Comm *comm, const float *values, float *out, size_t shard, CommRequest **request,
                                 Error *err) {
    *request = NULL;
    if (!comm->uses_mpi) {
        memmove(out, values, shard * sizeof(float));
        return 0;
    }
#ifdef VLFT_MPI
    if (shard > (size_t)0x7fffffff) return error_set(err, "reduce-scatter shard of %zu elements is too large", shard);
    CommRequest *r = new_request(err);
    if (r == NULL) return -1;
    if (check(MPI_Ireduce_scatter_block(values, out, (int)shard, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r->mpi),
              "reduce-scatter", err) != 0) {
        free(r);
        return -1;
    }
    *request = r;
#endif
    return 0;
}

int comm_wait(Comm *comm, CommRequest *request, Error *err) {
    (void)comm;
    if (request == NULL) return 0;
    int rc = 0;
#ifdef VLFT_MPI
    if (!request->done) rc = check(MPI_Wait(&request->mpi, MPI_STATUS_IGNORE), "waiting for a reduction", err);
#endif
    free(request);
    return rc;
}

int comm_test(Comm *comm, CommRequest *request, int *done, Error *err) {
    (void)comm;
    *done = 1;
    if (request == NULL || request->done) return 0;
#ifdef VLFT_MPI
    int flag = 0;
    if (check(MPI_Test(&request->mpi, &flag, MPI_STATUS_IGNORE), "testing a reduction", err) != 0) return -1;
    request->done = flag;
    *done = flag;
#else
    (void)err;
#endif
    return 0;
}

int comm_barrier(Comm *comm, Error *err) {
    if (!comm->uses_mpi) return 0;
#ifdef VLFT_MPI
    return check(MPI_Barrier(MPI_COMM_WORLD), "barrier", err);
#else
    return 0;
#endif
}

void comm_abort(Comm *comm, int code, const char *message) {
    if (message) fprintf(stderr, "vlft (rank %d of %d): %s\n", comm ? comm->rank : 0, comm ? comm->size : 1, message);
    fflush(stderr);
#ifdef VLFT_MPI
    if (comm && comm->uses_mpi) MPI_Abort(MPI_COMM_WORLD, code);
#endif
    exit(code);
}
