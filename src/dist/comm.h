// comm.h - the collectives data-parallel training needs, over MPI when the
// process was started by mpirun (OpenMPI), and trivially for one process.
//
// Rank r of N processes; every collective is called by all ranks in the same
// order. A failure on one rank ends all of them (comm_abort) so no rank hangs
// in a collective waiting for a dead peer.
#ifndef VLFT_COMM_H
#define VLFT_COMM_H

#include <stddef.h>

#include "../base/error.h"

typedef struct Comm Comm;

// Starts MPI when launched under mpirun (OMPI_COMM_WORLD_SIZE set), else a
// single-process communicator. Returns NULL with err filled on failure.
Comm *comm_init(int *argc, char ***argv, Error *err);
void comm_finalize(Comm *comm);
int comm_rank(const Comm *comm);
int comm_size(const Comm *comm);
int comm_is_distributed(const Comm *comm);

// In-place sums across ranks.
int comm_allreduce_sum_f32(Comm *comm, float *values, size_t n, Error *err);
int comm_allreduce_sum_f64(Comm *comm, double *values, size_t n, Error *err);
// Sums `values` (n = size * shard) across ranks; rank r receives elements
// [r*shard, (r+1)*shard) of the sum in out (ZeRO-2 gradients).
int comm_reduce_scatter_sum_f32(Comm *comm, const float *values, float *out, size_t shard, Error *err);
// Each rank contributes shard elements; everyone receives all size*shard.
int comm_allgather_f32(Comm *comm, const float *shard_values, float *out, size_t shard, Error *err);
// The same, received by root only (out is ignored elsewhere and may be NULL).
int comm_gather_f32(Comm *comm, const float *shard_values, float *out, size_t shard, int root, Error *err);
int comm_broadcast(Comm *comm, void *data, size_t bytes, int root, Error *err);

// Non-blocking forms (gradient reductions overlapped with the backward
// pass): they start the collective and return; the buffers must stay
// untouched until comm_wait says it is done. With one process they complete
// at once and *request is NULL (comm_wait / comm_test accept that). Counts
// must fit an int (a bucket of gradients does).
typedef struct CommRequest CommRequest;
int comm_iallreduce_sum_f32(Comm *comm, float *values, size_t n, CommRequest **request, Error *err);
int comm_ireduce_scatter_sum_f32(Comm *comm, const float *values, float *out, size_t shard, CommRequest **request,
                                 Error *err);
// Blocks until the request is done, then frees it.
int comm_wait(Comm *comm, CommRequest *request, Error *err);
// Lets a pending request progress (OpenMPI advances non-blocking
// collectives only inside MPI calls); *done = 1 once it has finished (it
// still needs its comm_wait).
int comm_test(Comm *comm, CommRequest *request, int *done, Error *err);
int comm_barrier(Comm *comm, Error *err);
// Ends every rank with exit code `code` after printing message on this one.
void comm_abort(Comm *comm, int code, const char *message);

#endif
