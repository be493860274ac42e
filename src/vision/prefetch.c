// prefetch.c - a bounded, ordered, multi-threaded image preprocessing queue.
//
// Job i lives in slot i % max_ahead. A worker claims the next unclaimed job
// only while it is fewer than max_ahead jobs ahead of the consumer, so at
// most max_ahead jobs' tensors exist at once and slots never collide.
#include "prefetch.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef enum { SLOT_EMPTY, SLOT_WORKING, SLOT_READY } SlotState;

typedef struct {
    SlotState state;
    int failed;
    Error error;
    PrefetchResult result;
} Slot;

struct Prefetcher {
    ClipConfig config;
    ImageBounds bounds;
    char ***paths;  // [n_jobs][count] copies
    int *counts;
    int n_jobs;
    int max_ahead;
    Slot *slots;
    int next_claim;    // the first job no worker has taken
    int next_deliver;  // the job prefetch_next returns next
    int stopping;
    pthread_mutex_t lock;
    pthread_cond_t work_available;  // a slot freed up or stop requested
    pthread_cond_t result_ready;
    pthread_t *threads;
    int n_threads;
};

static void run_job(Prefetcher *p, int job, Slot *slot) {
    int count = p->counts[job];
    slot->result.job_index = job;
    slot->result.count = count;
    slot->result.tensors = calloc(count > 0 ? (size_t)count : 1, sizeof(ClipTensor));
    if (slot->result.tensors == NULL) {
        slot->failed = 1;
        error_set(&slot->error, "%s: out of memory", count > 0 ? p->paths[job][0] : "prefetch");
        return;
    }
    for (int i = 0; i < count; i++) {
        if (clip_preprocess_file(&p->config, &p->bounds, p->paths[job][i], &slot->result.tensors[i], &slot->error) !=
            0) {
            slot->failed = 1;
            prefetch_result_free(&slot->result);
            return;
        }
    }
}

static void *worker_main(void *arg) {
    Prefetcher *p = arg;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->stopping && p->next_claim < p->n_jobs && p->next_claim >= p->next_deliver + p->max_ahead)
            pthread_cond_wait(&p->work_available, &p->lock);
        if (p->stopping || p->next_claim >= p->n_jobs) break;
        int job = p->next_claim++;
        Slot *slot = &p->slots[job % p->max_ahead];
        slot->state = SLOT_WORKING;
        slot->failed = 0;
        pthread_mutex_unlock(&p->lock);
        run_job(p, job, slot);  // the slot is this worker's alone while WORKING
        pthread_mutex_lock(&p->lock);
        slot->state = SLOT_READY;
        pthread_cond_broadcast(&p->result_ready);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

static void free_paths(Prefetcher *p) {
    if (p->paths == NULL) return;
    for (int j = 0; j < p->n_jobs; j++) {
        if (p->paths[j] == NULL) continue;
        for (int i = 0; i < p->counts[j]; i++) free(p->paths[j][i]);
        free(p->paths[j]);
    }
    free(p->paths);
}

Prefetcher *prefetch_start(const ClipConfig *config, const ImageBounds *bounds, const PrefetchJob *jobs, int n_jobs,
                           int n_threads, int max_ahead, Error *err) {
    if (n_threads < 1 || max_ahead < 1 || n_jobs < 0) {
        error_set(err, "prefetch: need at least one thread and one job ahead (got %d, %d)", n_threads, max_ahead);
        return NULL;
    }
    Prefetcher *p = calloc(1, sizeof *p);
    if (p == NULL) {
        error_set(err, "prefetch: out of memory");
        return NULL;
    }
    p->config = *config;
    p->bounds = *bounds;
    p->n_jobs = n_jobs;
    p->max_ahead = max_ahead;
    p->paths = calloc(n_jobs > 0 ? (size_t)n_jobs : 1, sizeof(char **));
    p->counts = calloc(n_jobs > 0 ? (size_t)n_jobs : 1, sizeof(int));
    p->slots = calloc((size_t)max_ahead, sizeof(Slot));
    p->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    int ok = p->paths && p->counts && p->slots && p->threads;
    for (int j = 0; ok && j < n_jobs; j++) {
        p->counts[j] = jobs[j].count;
        p->paths[j] = calloc(jobs[j].count > 0 ? (size_t)jobs[j].count : 1, sizeof(char *));
        ok = p->paths[j] != NULL;
        for (int i = 0; ok && i < jobs[j].count; i++) ok = (p->paths[j][i] = strdup(jobs[j].paths[i])) != NULL;
    }
    if (!ok) {
        free_paths(p);
        free(p->counts);
        free(p->slots);
        free(p->threads);
        free(p);
        error_set(err, "prefetch: out of memory");
        return NULL;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->work_available, NULL);
    pthread_cond_init(&p->result_ready, NULL);
    for (int t = 0; t < n_threads; t++) {
        if (pthread_create(&p->threads[t], NULL, worker_main, p) != 0) {
            error_set(err, "prefetch: could not start worker thread %d", t);
            prefetch_stop(p);
            return NULL;
        }
        p->n_threads++;
    }
    return p;
}

int prefetch_next(Prefetcher *p, PrefetchResult *out, Error *err) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&p->lock);
    if (p->next_deliver >= p->n_jobs) {
        pthread_mutex_unlock(&p->lock);
        return 1;
    }
    int job = p->next_deliver;
    Slot *slot = &p->slots[job % p->max_ahead];
    while (!(slot->state == SLOT_READY && slot->result.job_index == job))
        pthread_cond_wait(&p->result_ready, &p->lock);
    int failed = slot->failed;
    if (failed) {
        if (err) *err = slot->error;
    } else {
        *out = slot->result;
    }
    memset(&slot->result, 0, sizeof slot->result);
    slot->state = SLOT_EMPTY;
    p->next_deliver++;
    pthread_cond_broadcast(&p->work_available);
    pthread_mutex_unlock(&p->lock);
    return failed ? -1 : 0;
}

void prefetch_result_free(PrefetchResult *result) {
    if (result->tensors != NULL)
        for (int i = 0; i < result->count; i++) clip_tensor_free(&result->tensors[i]);
    free(result->tensors);
    result->tensors = NULL;
    result->count = 0;
}

void prefetch_stop(Prefetcher *p) {
    if (p == NULL) return;
    pthread_mutex_lock(&p->lock);
    p->stopping = 1;
    pthread_cond_broadcast(&p->work_available);
    pthread_mutex_unlock(&p->lock);
    for (int t = 0; t < p->n_threads; t++) pthread_join(p->threads[t], NULL);
    for (int s = 0; s < p->max_ahead; s++)
        if (p->slots[s].state == SLOT_READY) prefetch_result_free(&p->slots[s].result);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->work_available);
    pthread_cond_destroy(&p->result_ready);
    free_paths(p);
    free(p->counts);
    free(p->slots);
    free(p->threads);
    free(p);
}
