// Replays every fuzz seed and every saved regression input through its
// parser in the normal test run (and under ASan in `make test-asan`), so a
// crash once found by the fuzzer stays fixed.
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/base/fs.h"
#include "../../src/io/safetensors.h"
#include "../../src/model/config.h"
#include "../../src/train/recipe.h"

typedef void (*ReplayFn)(const char *path);

static int replay_dir(const char *dir, ReplayFn fn) {
    DIR *d = opendir(dir);
    if (d == NULL) return 0;
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[8192];  // dir (< 4096) + "/" + a file name (< 256)
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        fn(path);
        count++;
    }
    closedir(d);
    return count;
}

static void replay_safetensors(const char *path) {
    Safetensors st;
    Error err = {{0}};
    if (safetensors_open_file(&st, path, &err) == 0) safetensors_close(&st);
    else cr_assert(err.message[0] != '\0', "%s: rejected without a message", path);
}

static void replay_config(const char *path) {
    char *text;
    Error err = {{0}};
    cr_assert_eq(read_file(path, 1 << 20, &text, NULL, &err), 0, "%s", err.message);
    ModelConfig c;
    if (model_config_parse(&c, text, path, &err) != 0) cr_assert(err.message[0] != '\0');
    free(text);
}

static void replay_recipe(const char *path) {
    Recipe r;
    Error err = {{0}};
    if (recipe_load(&r, path, NULL, &err) == 0) recipe_free(&r);
    else cr_assert(err.message[0] != '\0');
}

static const char *root(void) {
    const char *r = getenv("VLFT_ROOT");
    return r ? r : ".";
}

Test(fuzz_corpus, safetensors_seeds_and_regressions) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/safetensors", root());
    cr_assert_gt(replay_dir(dir, replay_safetensors), 0, "no seeds found in %s", dir);
    snprintf(dir, sizeof dir, "%s/tests/fuzz/regressions/safetensors", root());
    replay_dir(dir, replay_safetensors);
}

Test(fuzz_corpus, config_seeds_and_regressions) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/config", root());
    cr_assert_gt(replay_dir(dir, replay_config), 0, "no seeds found in %s", dir);
    snprintf(dir, sizeof dir, "%s/tests/fuzz/regressions/config", root());
    replay_dir(dir, replay_config);
}

Test(fuzz_corpus, recipe_seeds_and_regressions) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/recipe", root());
    cr_assert_gt(replay_dir(dir, replay_recipe), 0, "no seeds found in %s", dir);
    snprintf(dir, sizeof dir, "%s/tests/fuzz/regressions/recipe", root());
    replay_dir(dir, replay_recipe);
}
