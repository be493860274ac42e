// vlft _tokenize: encodes text with vlft's tokenizer, for parity tests and
// benchmarks (one long-lived process instead of one per string).
//
//   vlft _tokenize (--dir MODEL_DIR [--slow] | --json tokenizer.json | --sp tokenizer.model)
//       reads one JSON string per stdin line; writes per line the ids
//       (space-separated), a tab, and decode(ids) as a JSON string.
//   ... --bench FILE [--repeat N]
//       encodes FILE line by line N times; prints "bytes seconds tokens".
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../base/fs.h"
#include "../text/tokenizer.h"
#include "commands.h"

static int usage(FILE *out) {
    fprintf(out, "usage: vlft _tokenize (--dir MODEL_DIR [--slow] | --json FILE | --sp FILE) [--bench FILE [--repeat N]]\n"
                 "\nReads one JSON string per line on stdin and prints its ids, a tab, and the decoded text as JSON.\n");
    return out == stdout ? EXIT_OK : EXIT_USAGE;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int run_bench(Tokenizer *t, const char *path, int repeat) {
    char *text;
    size_t size;
    Error err;
    if (read_file(path, (size_t)1 << 30, &text, &size, &err)) {
        fprintf(stderr, "vlft _tokenize: %s\n", err.message);
        return EXIT_BAD_INPUT;
    }
    long tokens = 0;
    double start = now_seconds();
    for (int r = 0; r < repeat; r++) {
        size_t pos = 0;
        while (pos < size) {
            char *nl = memchr(text + pos, '\n', size - pos);
            size_t end = nl ? (size_t)(nl - text) : size;
            int *ids;
            tokens += tokenizer_encode(t, text + pos, end - pos, &ids);
            free(ids);
            pos = end + 1;
        }
    }
    double seconds = now_seconds() - start;
    printf("%zu %.6f %ld\n", size * (size_t)repeat, seconds, tokens);
    free(text);
    return EXIT_OK;
}

int command_tokenize(int argc, char **argv) {
    const char *dir = NULL, *json = NULL, *sp = NULL, *bench = NULL;
    int slow = 0, repeat = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return usage(stdout);
        else if (strcmp(argv[i], "--slow") == 0) slow = 1;
        else if (i + 1 < argc && strcmp(argv[i], "--dir") == 0) dir = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--json") == 0) json = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--sp") == 0) sp = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--bench") == 0) bench = argv[++i];
        else if (i + 1 < argc && strcmp(argv[i], "--repeat") == 0) repeat = atoi(argv[++i]);
        else return usage(stderr);
    }
    if ((dir != NULL) + (json != NULL) + (sp != NULL) != 1 || repeat < 1) return usage(stderr);
    Tokenizer *t;
    Error err;
    int rc = dir ? tokenizer_load(&t, dir, !slow, &err) : json ? tokenizer_load_json_file(&t, json, &err)
                                                               : tokenizer_load_sp_file(&t, sp, &err);
    if (rc) {
        fprintf(stderr, "vlft _tokenize: %s\n", err.message);
        return EXIT_BAD_INPUT;
    }
    if (bench) {
        rc = run_bench(t, bench, repeat);
        tokenizer_free(t);
        return rc;
    }
    char *line = NULL;
    size_t capacity = 0;
    ssize_t n;
    long line_no = 0;
    rc = EXIT_OK;
    while ((n = getline(&line, &capacity, stdin)) > 0) {
        line_no++;
        if (line[0] == '\n') continue;
        cJSON *value = cJSON_ParseWithLength(line, (size_t)n);
        if (!cJSON_IsString(value)) {
            fprintf(stderr, "vlft _tokenize: stdin line %ld is not a JSON string\n", line_no);
            cJSON_Delete(value);
            rc = EXIT_BAD_INPUT;
            break;
        }
        int *ids;
        int count = tokenizer_encode(t, value->valuestring, strlen(value->valuestring), &ids);
        for (int i = 0; i < count; i++) printf(i ? " %d" : "%d", ids[i]);
        char *decoded = tokenizer_decode(t, ids, count);
        cJSON *out = cJSON_CreateString(decoded);
        char *printed = cJSON_PrintUnformatted(out);
        printf("\t%s\n", printed);
        free(printed);
        cJSON_Delete(out);
        free(decoded);
        free(ids);
        cJSON_Delete(value);
    }
    free(line);
    tokenizer_free(t);
    return rc;
}
