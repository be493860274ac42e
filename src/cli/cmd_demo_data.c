// vlft demo-data DIR: write the procedurally drawn demo dataset.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../vision/demo_data.h"
#include "commands.h"

static void usage(FILE *out) {
    fprintf(out, "usage: vlft demo-data DIR [--n N] [--seed S]\n\n"
                 "Writes N (default 200) samples of drawn shapes with questions and answers in LLaMA-Factory's\n"
                 "mllm_demo format: DIR/images/, DIR/mllm_demo.json and DIR/dataset_info.json. The same seed\n"
                 "(default 0) gives the same files.\n");
}

int command_demo_data(int argc, char **argv) {
    const char *dir = NULL;
    long n = 200;
    unsigned long long seed = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        char *end = NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return EXIT_OK;
        } else if (strcmp(a, "--n") == 0 && has_value) {
            n = strtol(argv[++i], &end, 10);
            if (*end != '\0' || argv[i][0] == '\0' || n < 1 || n > 1000000) {
                fprintf(stderr, "vlft demo-data: --n needs a count from 1 to 1000000, got '%s'\n", argv[i]);
                return EXIT_USAGE;
            }
        } else if (strcmp(a, "--seed") == 0 && has_value) {
            seed = strtoull(argv[++i], &end, 10);
            if (*end != '\0' || argv[i][0] == '-' || argv[i][0] == '\0') {
                fprintf(stderr, "vlft demo-data: --seed needs a non-negative integer, got '%s'\n", argv[i]);
                return EXIT_USAGE;
            }
        } else if (a[0] == '-') {
            fprintf(stderr, "vlft demo-data: unknown or incomplete option '%s'\n", a);
            return EXIT_USAGE;
        } else if (dir == NULL) dir = a;
        else {
            fprintf(stderr, "vlft demo-data: unexpected argument '%s'\n", a);
            return EXIT_USAGE;
        }
    }
    if (dir == NULL) {
        usage(stderr);
        return EXIT_USAGE;
    }
    Error err;
    if (demo_data_write(dir, (int)n, seed, &err) != 0) {
        fprintf(stderr, "vlft demo-data: %s\n", err.message);
        return EXIT_BAD_INPUT;
    }
    printf("wrote %ld samples to %s\n", n, dir);
    return EXIT_OK;
}
