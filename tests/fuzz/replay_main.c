// replay_main.c - a main() for any fuzz target, so the normal (and ASan)
// build can run its seeds and saved regressions without libFuzzer:
//   replay_NAME PATH...   (files, or folders whose files are replayed)
// Prints "replayed N inputs"; a crash or sanitizer report fails the run.
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../../src/base/fs.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path) {
    char *data;
    size_t size;
    Error err;
    if (read_file(path, (size_t)64 << 20, &data, &size, &err) != 0) {
        fprintf(stderr, "replay: %s\n", err.message);
        return -1;
    }
    LLVMFuzzerTestOneInput((const uint8_t *)data, size);
    free(data);
    return 0;
}

static int compare_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// Replays the files of a folder in name order; returns how many, or -1.
static int replay_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (d == NULL) return 0;
    char **names = NULL;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char **grown = realloc(names, sizeof *names * (size_t)(n + 1));
        if (grown == NULL) break;
        names = grown;
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, compare_names);
    int count = 0;
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (count >= 0 && replay_file(path) == 0) count++;
        else count = -1;
        free(names[i]);
    }
    free(names);
    return count;
}

int main(int argc, char **argv) {
    int total = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) continue;  // a target without regressions yet
        int n = S_ISDIR(st.st_mode) ? replay_dir(argv[i]) : (replay_file(argv[i]) == 0 ? 1 : -1);
        if (n < 0) return 1;
        total += n;
    }
    printf("replayed %d inputs\n", total);
    return 0;
}
