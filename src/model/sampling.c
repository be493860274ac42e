// generation_config.json and the choice of the next token (generate.h), in
// the order transformers' generate applies its logits processors.
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/fs.h"
#include "generate.h"

void generation_config_defaults(GenerationConfig *g) {
    memset(g, 0, sizeof *g);
    g->do_sample = 0;
    g->temperature = 1.0;
    g->top_p = 1.0;
    g->top_k = 50;
    g->repetition_penalty = 1.0;
    g->max_new_tokens = 512;
}

void generation_config_add_eos(GenerationConfig *g, int id) {
    if (id < 0) return;
    for (int i = 0; i < g->n_eos; i++)
        if (g->eos_ids[i] == id) return;
    if (g->n_eos < (int)(sizeof g->eos_ids / sizeof g->eos_ids[0])) g->eos_ids[g->n_eos++] = id;
}

static int number(const cJSON *root, const char *key, double *out) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, key);
    if (item == NULL || cJSON_IsNull(item)) return 0;
    if (!cJSON_IsNumber(item)) return -1;
    *out = item->valuedouble;
    return 0;
}

int generation_config_load(const char *model_dir, GenerationConfig *g, Error *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/generation_config.json", model_dir);
    FILE *probe = fopen(path, "rb");
    if (probe == NULL) return 0;  // transformers' defaults
    fclose(probe);
    char *text = NULL;
    size_t size = 0;
    if (read_file(path, (size_t)1 << 20, &text, &size, err) != 0) return -1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (root == NULL || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return error_set(err, "%s: not a JSON object", path);
    }
    int rc = 0;
    const cJSON *sample = cJSON_GetObjectItemCaseSensitive(root, "do_sample");
    if (sample && cJSON_IsBool(sample)) g->do_sample = cJSON_IsTrue(sample);
    else if (sample && !cJSON_IsNull(sample)) rc = error_set(err, "%s: do_sample must be true or false", path);
    double top_k = g->top_k, max_new = g->max_new_tokens;
    const char *bad = NULL;
    if (number(root, "temperature", &g->temperature)) bad = "temperature";
    if (number(root, "top_p", &g->top_p)) bad = "top_p";
    if (number(root, "top_k", &top_k)) bad = "top_k";
    if (number(root, "repetition_penalty", &g->repetition_penalty)) bad = "repetition_penalty";
    if (number(root, "max_new_tokens", &max_new)) bad = "max_new_tokens";
    if (bad && rc == 0) rc = error_set(err, "%s: %s must be a number", path, bad);
    g->top_k = (int)top_k;
    g->max_new_tokens = (int)max_new;
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    if (cJSON_IsNumber(eos)) generation_config_add_eos(g, eos->valueint);
    else if (cJSON_IsArray(eos)) {
        const cJSON *id;
        cJSON_ArrayForEach(id, eos) if (cJSON_IsNumber(id)) generation_config_add_eos(g, id->valueint);
    }
    cJSON_Delete(root);
    return rc;
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static int compare_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

typedef struct {
    float value;
    int index;
} Scored;

static int compare_scored_asc(const void *a, const void *b) {
    const Scored *x = a, *y = b;
    if (x->value != y->value) return (x->value > y->value) - (x->value < y->value);
    return (x->index > y->index) - (x->index < y->index);
}

int generation_next_token(const GenerationConfig *g, float *logits, int V, const int32_t *seen, int n_seen, Rng *rng) {
    // RepetitionPenaltyLogitsProcessor: each id seen once or more is
    // penalised once (gather then scatter).
    if (g->repetition_penalty != 1.0 && n_seen > 0) {
        unsigned char *done = calloc((size_t)V, 1);
        float p = (float)g->repetition_penalty;
        for (int i = 0; done && i < n_seen; i++) {
            int id = seen[i];
            if (id < 0 || id >= V || done[id]) continue;
            done[id] = 1;
            logits[id] = logits[id] < 0 ? logits[id] * p : logits[id] / p;
        }
        free(done);
    }
    if (!g->do_sample || g->temperature <= 0.0) return argmax(logits, V);
    if (g->temperature != 1.0) {
        float t = (float)g->temperature;
        for (int i = 0; i < V; i++) logits[i] /= t;
    }
    // TopKLogitsWarper: drop scores below the k-th largest (ties kept).
    if (g->top_k > 0 && g->top_k < V) {
        float *sorted = malloc(sizeof(float) * (size_t)V);
        if (sorted) {
            memcpy(sorted, logits, sizeof(float) * (size_t)V);
            qsort(sorted, (size_t)V, sizeof(float), compare_desc);
            float kth = sorted[g->top_k - 1];
            for (int i = 0; i < V; i++)
                if (logits[i] < kth) logits[i] = -INFINITY;
            free(sorted);
        }
    }
    // TopPLogitsWarper: ascending sort, drop the tokens whose cumulative
    // probability stays <= 1 - top_p, always keep the most likely one.
    if (g->top_p < 1.0) {
        Scored *s = malloc(sizeof(Scored) * (size_t)V);
        if (s) {
            for (int i = 0; i < V; i++) s[i] = (Scored){logits[i], i};
            qsort(s, (size_t)V, sizeof(Scored), compare_scored_asc);
            float m = s[V - 1].value;
            double total = 0;
            for (int i = 0; i < V; i++) total += s[i].value == -INFINITY ? 0.0 : exp((double)(s[i].value - m));
            double cumulative = 0;
            for (int i = 0; i < V - 1; i++) {
                cumulative += s[i].value == -INFINITY ? 0.0 : exp((double)(s[i].value - m)) / total;
                if (cumulative <= 1.0 - g->top_p) logits[s[i].index] = -INFINITY;
            }
            free(s);
        }
    }
    // Multinomial draw from the softmax.
    float m = logits[argmax(logits, V)];
    double total = 0;
    for (int i = 0; i < V; i++) total += logits[i] == -INFINITY ? 0.0 : exp((double)(logits[i] - m));
    double u = rng_uniform(rng) * total, cumulative = 0;
    int last = 0;
    for (int i = 0; i < V; i++) {
        if (logits[i] == -INFINITY) continue;
        cumulative += exp((double)(logits[i] - m));
        last = i;
        if (u < cumulative) return i;
    }
    return last;
}
