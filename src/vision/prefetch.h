// prefetch.h - decode and preprocess images in worker threads ahead of the
// training step, so the step never waits on JPEG decoding.
//
// The caller gives an ordered list of jobs (one job = the image paths of one
// sample or batch). N pthreads take jobs in order, at most `max_ahead` jobs
// beyond the one the consumer is waiting for, and prefetch_next hands the
// results back strictly in job order. A failing image fails its job with an
// error naming the file; later jobs are still delivered. prefetch_stop may be
// called at any time (also mid-stream) and joins every worker.
#ifndef VLFT_PREFETCH_H
#define VLFT_PREFETCH_H

#include "../base/error.h"
#include "clip_preprocess.h"

typedef struct {
    const char *const *paths;  // copied by prefetch_start
    int count;                 // may be 0 (a text-only sample)
} PrefetchJob;

typedef struct {
    int job_index;
    int count;            // == the job's path count
    ClipTensor *tensors;  // count tensors, each 3 x height x width
} PrefetchResult;

typedef struct Prefetcher Prefetcher;

// Starts n_threads (>= 1) workers; max_ahead >= 1 bounds the jobs held in
// memory. The config and bounds are copied.
Prefetcher *prefetch_start(const ClipConfig *config, const ImageBounds *bounds, const PrefetchJob *jobs, int n_jobs,
                           int n_threads, int max_ahead, Error *err);

// Blocks until the next job in order is ready. Returns 0 with *out filled
// (free with prefetch_result_free), 1 when every job has been delivered, or
// -1 when this job failed (err names the file; the next call moves on).
int prefetch_next(Prefetcher *prefetcher, PrefetchResult *out, Error *err);

void prefetch_result_free(PrefetchResult *result);

// Stops the workers (finishing at most the images they are on), frees all.
void prefetch_stop(Prefetcher *prefetcher);

#endif
