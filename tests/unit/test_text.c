// Unit checks of the text pipeline's parsers and edge cases; the parity and
// golden tests against independent references are in tests/python.
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/base/fs.h"
#include "../../src/text/sp_model.h"
#include "../../src/text/template.h"
#include "../../src/text/tiny_tokenizer.h"
#include "../../src/text/tokenizer.h"
#include "../../src/text/utf8.h"

static const char *root(void) {
    const char *r = getenv("VLFT_ROOT");
    return r ? r : ".";
}

static void fixture(char *out, size_t size, const char *rel) { snprintf(out, size, "%s/%s", root(), rel); }

Test(text_utf8, lengths_and_rejections) {
    cr_assert_eq(utf8_char_length("a", 1), 1);
    cr_assert_eq(utf8_char_length("\xc3\xa9", 2), 2);
    cr_assert_eq(utf8_char_length("\xe4\xbd\xa0", 3), 3);
    cr_assert_eq(utf8_char_length("\xf0\x9f\x98\x80", 4), 4);
    cr_assert_eq(utf8_char_length("\xc3", 1), 0, "truncated");
    cr_assert_eq(utf8_char_length("\xc0\xaf", 2), 0, "overlong");
    cr_assert_eq(utf8_char_length("\xed\xa0\x80", 3), 0, "surrogate");
    cr_assert_eq(utf8_char_length("\xf4\x90\x80\x80", 4), 0, "above U+10FFFF");
    cr_assert_eq(utf8_char_length("\x80", 1), 0, "stray continuation");
}

Test(text_sp_model, truncated_and_corrupted_files_are_errors) {
    char path[4096];
    fixture(path, sizeof path, "tests/data/tokenizers/yi_like/tokenizer.model");
    char *data;
    size_t size;
    Error err = {{0}};
    cr_assert_eq(read_file(path, 1 << 24, &data, &size, &err), 0, "%s", err.message);
    SpModel m;
    cr_assert_eq(sp_model_parse(&m, (unsigned char *)data, size, path, &err), 0, "%s", err.message);
    cr_assert_eq(m.n_pieces, 1000);
    cr_assert_eq(m.add_dummy_prefix, 0);
    cr_assert_eq(m.byte_fallback, 1);
    cr_assert_eq(m.split_digits, 1);
    cr_assert_str_eq(m.pieces[1].text, "<|startoftext|>");
    sp_model_free(&m);
    int failures = 0;
    for (size_t cut = 1; cut < size; cut += size / 97 + 1) {
        err.message[0] = 0;
        if (sp_model_parse(&m, (unsigned char *)data, cut, "cut.model", &err) == 0) sp_model_free(&m);
        else {
            failures++;
            cr_assert(strstr(err.message, "cut.model") != NULL, "message names the file: %s", err.message);
        }
    }
    cr_assert_gt(failures, 0);
    cr_assert_neq(sp_model_parse(&m, (const unsigned char *)"\x0a\xff\xff\xff\xff\x0f", 6, "x.model", &err), 0);
    cr_assert_neq(sp_model_parse(&m, (const unsigned char *)"", 0, "empty.model", &err), 0);
    free(data);
}

static int load_json_text(const char *text, Error *err) {
    char path[] = "/tmp/vlft-tok-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    Tokenizer *t;
    int rc = tokenizer_load_json_file(&t, path, err);
    if (rc == 0) tokenizer_free(t);
    unlink(path);
    return rc;
}

Test(text_tokenizer_json, bad_files_are_one_line_errors) {
    const char *bad[] = {
        "not json",
        "[]",
        "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [[\"a\"]]}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -3}}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {}}, \"normalizer\": {\"type\": \"NFKC\"}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {}}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"unk_token\": \"<unk>\"}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {}}, \"added_tokens\": [{\"content\": \"x\"}]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        Error err = {{0}};
        cr_assert_neq(load_json_text(bad[i], &err), 0, "accepted: %s", bad[i]);
        cr_assert(strstr(err.message, "/tmp/vlft-tok-") != NULL, "names the file: %s", err.message);
        cr_assert(strchr(err.message, '\n') == NULL);
    }
    Error err = {{0}};
    cr_assert_eq(load_json_text("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, "
                                "\"merges\": [\"a b\"]}}", &err), 0, "%s", err.message);
}

Test(text_tokenizer, merges_apply_by_rank_and_ignore_merges) {
    // "abc": rank 0 merges b+c first, so a + bc, not ab + c.
    char path[] = "/tmp/vlft-tok-XXXXXX";
    int fd = mkstemp(path);
    const char *json = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"ab\": 3, \"bc\": 4, "
                       "\"abc\": 5}, \"merges\": [\"b c\", \"a b\", \"a bc\"]}}";
    cr_assert_eq(write(fd, json, strlen(json)), (ssize_t)strlen(json));
    close(fd);
    Tokenizer *t;
    Error err;
    cr_assert_eq(tokenizer_load_json_file(&t, path, &err), 0, "%s", err.message);
    int *ids;
    int n = tokenizer_encode(t, "abcab", 5, &ids);
    cr_assert_eq(n, 2);
    cr_assert_eq(ids[0], 5);
    cr_assert_eq(ids[1], 3);
    free(ids);
    n = tokenizer_encode(t, "x", 1, &ids);
    cr_assert_eq(n, 0, "no unk token and no byte fallback: dropped");
    free(ids);
    tokenizer_free(t);
    unlink(path);
}

Test(text_tokenizer, missing_folder_is_an_error) {
    Tokenizer *t;
    Error err = {{0}};
    cr_assert_neq(tokenizer_load(&t, "/nonexistent/model", 1, &err), 0);
    cr_assert(strstr(err.message, "/nonexistent/model") != NULL, "%s", err.message);
}

Test(text_tiny_tokenizer, written_files_load_with_the_contract_ids) {
    char dir[] = "/tmp/vlft-tiny-tok-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    Error err = {{0}};
    cr_assert_eq(tiny_tokenizer_write(dir, &err), 0, "%s", err.message);
    for (int fast = 0; fast <= 1; fast++) {
        Tokenizer *t;
        cr_assert_eq(tokenizer_load(&t, dir, fast, &err), 0, "%s", err.message);
        cr_assert_eq(tokenizer_bos_id(t), 1);
        cr_assert_eq(tokenizer_eos_id(t), 2);
        cr_assert_eq(tokenizer_pad_id(t), 0);
        cr_assert_eq(tokenizer_unk_id(t), 0);
        cr_assert_eq(tokenizer_token_to_id(t, "<image>"), TINY_TOKENIZER_IMAGE_TOKEN_ID);
        cr_assert_eq(tokenizer_vocab_size(t), 1001);
        // "###" is a piece already: it keeps its id; a new word gets 1001.
        int hash = tokenizer_token_to_id(t, "###");
        cr_assert_geq(hash, 3);
        cr_assert_eq(tokenizer_add_special_token(t, "###"), hash);
        cr_assert_eq(tokenizer_add_special_token(t, "<new>"), 1001);
        int *ids;
        int n = tokenizer_encode(t, "a<image>b", 9, &ids);
        cr_assert_eq(n, 3);
        cr_assert_eq(ids[1], 1000);
        char *text = tokenizer_decode(t, ids, n);
        cr_assert_str_eq(text, "a<image>b");
        free(text);
        free(ids);
        tokenizer_free(t);
    }
    const char *names[] = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"};
    for (int i = 0; i < 4; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

Test(text_template, known_and_unknown_names) {
    cr_assert_not_null(template_find("yi_vl"));
    cr_assert_not_null(template_find("llava"));
    cr_assert_null(template_find("nope"));
    cr_assert(template_find("yi_vl")->efficient_eos);
    cr_assert_str_eq(template_find("yi_vl")->stop_words[0], "###");
}

// Fuzz seeds and saved regressions of the text targets, replayed here so a
// crash once found stays fixed.
static int replay(const char *name, int (*fn)(const char *path)) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/%s", root(), name);
    DIR *d = opendir(dir);
    int count = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        fn(path);
        count++;
    }
    if (d) closedir(d);
    return count;
}

static int replay_sp(const char *path) {
    Tokenizer *t;
    Error err = {{0}};
    if (tokenizer_load_sp_file(&t, path, &err) != 0) {
        cr_assert(err.message[0]);
        return 0;
    }
    int *ids;
    int n = tokenizer_encode(t, "Hello \xe4\xbd\xa0 42", 12, &ids);
    free(tokenizer_decode(t, ids, n));
    free(ids);
    tokenizer_free(t);
    return 0;
}

static int replay_json(const char *path) {
    Tokenizer *t;
    Error err = {{0}};
    if (tokenizer_load_json_file(&t, path, &err) != 0) {
        cr_assert(err.message[0]);
        return 0;
    }
    int *ids;
    int n = tokenizer_encode(t, "Hello \xe4\xbd\xa0 42", 12, &ids);
    free(tokenizer_decode(t, ids, n));
    free(ids);
    tokenizer_free(t);
    return 0;
}

Test(text_fuzz_corpus, tokenizer_seeds) {
    cr_assert_gt(replay("sp_model", replay_sp), 0);
    cr_assert_gt(replay("tokenizer_json", replay_json), 0);
}
