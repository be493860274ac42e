// The ZeRO stage read from DeepSpeed JSON configs as LLaMA-Factory ships
// them (examples/deepspeed/ds_z*_config.json), and one-line errors naming
// the file for anything else.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/dist/deepspeed_config.h"

// Writes text to a fresh temporary file; its path goes into path.
static void write_temp(char *path, size_t size, const char *text) {
    snprintf(path, size, "/tmp/vlft-ds-XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static int stage_of(const char *text, int *stage, Error *err) {
    char path[64];
    write_temp(path, sizeof path, text);
    int rc = deepspeed_zero_stage(path, stage, err);
    unlink(path);
    return rc;
}

Test(deepspeed_config, stages_of_llama_factory_configs) {
    Error err;
    int stage = -1;
    cr_assert_eq(stage_of("{\"train_batch_size\": \"auto\", \"zero_optimization\": {\"stage\": 3, "
                          "\"overlap_comm\": false, \"stage3_max_live_parameters\": 1e9}}",
                          &stage, &err), 0, "%s", err.message);
    cr_assert_eq(stage, 3);
    cr_assert_eq(stage_of("{\"zero_optimization\": {\"stage\": 2, \"offload_optimizer\": {\"device\": \"cpu\"}}}",
                          &stage, &err), 0);
    cr_assert_eq(stage, 2);
    cr_assert_eq(stage_of("{\"zero_optimization\": {\"stage\": 0}}", &stage, &err), 0);
    cr_assert_eq(stage, 0);
    stage = -1;
    cr_assert_eq(stage_of("{\"bf16\": {\"enabled\": \"auto\"}}", &stage, &err), 0);  // DeepSpeed's default
    cr_assert_eq(stage, 0);
}

Test(deepspeed_config, bad_files_are_errors_naming_the_file) {
    Error err;
    int stage;
    const char *bad[] = {"{\"zero_optimization\": {\"stage\": 4}}", "{\"zero_optimization\": {\"stage\": \"auto\"}}",
                         "{\"zero_optimization\": {\"stage\": 1.5}}", "{\"zero_optimization\": 3}", "[1, 2]",
                         "{not json"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(stage_of(bad[i], &stage, &err), -1, "%s", bad[i]);
        cr_assert(strstr(err.message, "/tmp/vlft-ds-") != NULL, "%s", err.message);
        cr_assert(strchr(err.message, '\n') == NULL);
    }
    cr_assert_eq(deepspeed_zero_stage("/nonexistent/ds_z3_config.json", &stage, &err), -1);
    cr_assert(strstr(err.message, "/nonexistent/ds_z3_config.json") != NULL, "%s", err.message);
}
