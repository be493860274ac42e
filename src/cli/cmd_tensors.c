// vlft tensors PATH [--copy-to OUT]: list the tensors of a safetensors file
// or model folder, or copy them through vlft's own writer (a round trip the
// tests compare against an independent reader).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/fs.h"
#include "../io/safetensors.h"
#include "commands.h"

static void usage(FILE *out) {
    fprintf(out, "usage: vlft tensors FILE.safetensors|MODEL_DIR [--copy-to OUT.safetensors]\n\n"
                 "Lists name, dtype and shape of every tensor (after checking the header), or copies them.\n");
}

int command_tensors(int argc, char **argv) {
    const char *path = NULL, *copy_to = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return EXIT_OK;
        }
        if (strcmp(argv[i], "--copy-to") == 0 && i + 1 < argc) copy_to = argv[++i];
        else if (argv[i][0] == '-' || path != NULL) {
            fprintf(stderr, "vlft tensors: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        } else path = argv[i];
    }
    if (path == NULL) {
        usage(stderr);
        return EXIT_USAGE;
    }
    Safetensors st;
    Error err;
    int rc = dir_exists(path) ? safetensors_open_dir(&st, path, NULL, &err) : safetensors_open_file(&st, path, &err);
    if (rc != 0) {
        fprintf(stderr, "vlft tensors: %s\n", err.message);
        return EXIT_BAD_INPUT;
    }
    if (copy_to) {
        TensorRef *refs = calloc((size_t)st.n_tensors + 1, sizeof(TensorRef));
        for (int i = 0; i < st.n_tensors; i++) {
            const TensorInfo *t = &st.tensors[i];
            refs[i] = (TensorRef){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
            memcpy(refs[i].shape, t->shape, sizeof t->shape);
        }
        rc = safetensors_write(copy_to, refs, st.n_tensors, (const char *const[]){"format", "pt", NULL}, &err);
        free(refs);
        if (rc != 0) fprintf(stderr, "vlft tensors: %s\n", err.message);
    } else {
        for (int i = 0; i < st.n_tensors; i++) {
            const TensorInfo *t = &st.tensors[i];
            printf("%s\t%s\t[", t->name, dtype_name(t->dtype));
            for (int d = 0; d < t->ndim; d++) printf(d ? ", %lld" : "%lld", (long long)t->shape[d]);
            printf("]\n");
        }
    }
    safetensors_close(&st);
    return rc == 0 ? EXIT_OK : EXIT_BAD_INPUT;
}
