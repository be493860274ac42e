// tokenizer_json.c - reads a Hugging Face tokenizer.json (BPE model) into a
// Tokenizer: vocab, merges, added tokens, normalizer, pre-tokenizer, decoder.
// Components vlft does not implement are refused with an error naming them,
// so a tokenizer is never silently half-applied.
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"
#include "utf8.h"

static const char *json_string(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int json_bool(const cJSON *obj, const char *key, int fallback) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return fallback;
}

static int json_int(const cJSON *obj, const char *key, int fallback) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsNumber(v) && v->valuedouble >= -1e9 && v->valuedouble <= 1e9) return (int)v->valuedouble;
    return fallback;
}

static int parse_prepend_scheme(const cJSON *obj) {
    const char *scheme = json_string(obj, "prepend_scheme");
    if (scheme) {
        if (strcmp(scheme, "always") == 0) return PREPEND_ALWAYS;
        if (strcmp(scheme, "first") == 0) return PREPEND_FIRST;
        return PREPEND_NEVER;
    }
    return json_bool(obj, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER;  // older files
}

static int add_normalizer(Tokenizer *t, const cJSON *n, const char *path, Error *err) {
    if (!n || cJSON_IsNull(n)) return 0;
    const char *type = json_string(n, "type");
    if (!type) return error_set(err, "%s: normalizer without a type", path);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        if (!cJSON_IsArray(list)) return error_set(err, "%s: Sequence normalizer without a list", path);
        const cJSON *item;
        cJSON_ArrayForEach(item, list) if (add_normalizer(t, item, path, err)) return -1;
        return 0;
    }
    NormalizerStep step = {0};
    if (strcmp(type, "Prepend") == 0) {
        const char *prefix = json_string(n, "prepend");
        if (!prefix) return error_set(err, "%s: Prepend normalizer without 'prepend'", path);
        step.kind = NORM_PREPEND;
        step.from = xstrndup(prefix, strlen(prefix));
    } else if (strcmp(type, "Replace") == 0) {
        const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(n, "pattern");
        const char *from = json_string(pattern, "String");
        const char *to = json_string(n, "content");
        if (!from || !to)
            return error_set(err, "%s: Replace normalizer needs a String pattern and content (Regex is not supported)", path);
        step.kind = NORM_REPLACE;
        step.from = xstrndup(from, strlen(from));
        step.to = xstrndup(to, strlen(to));
    } else if (strcmp(type, "Strip") == 0) {
        step.kind = NORM_STRIP;
        step.left = json_bool(n, "strip_left", 1);
        step.right = json_bool(n, "strip_right", 1);
    } else {
        return error_set(err, "%s: normalizer '%s' is not supported (vlft handles Prepend, Replace, Strip)", path, type);
    }
    t->normalizers = xrealloc(t->normalizers, (size_t)(t->n_normalizers + 1) * sizeof *t->normalizers);
    t->normalizers[t->n_normalizers++] = step;
    return 0;
}

static int set_pre_tokenizer(Tokenizer *t, const cJSON *p, const char *path, Error *err) {
    if (!p || cJSON_IsNull(p)) return 0;
    const char *type = json_string(p, "type");
    if (!type) return error_set(err, "%s: pre_tokenizer without a type", path);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(list)) return error_set(err, "%s: Sequence pre_tokenizer without a list", path);
        const cJSON *item;
        cJSON_ArrayForEach(item, list) if (set_pre_tokenizer(t, item, path, err)) return -1;
        return 0;
    }
    if (strcmp(type, "Metaspace") != 0)
        return error_set(err, "%s: pre_tokenizer '%s' is not supported (vlft handles Metaspace)", path, type);
    if (t->has_metaspace) return error_set(err, "%s: more than one Metaspace pre_tokenizer", path);
    const char *repl = json_string(p, "replacement");
    if (!repl || strlen(repl) == 0 || strlen(repl) >= sizeof t->metaspace_replacement)
        return error_set(err, "%s: Metaspace pre_tokenizer needs a one-character replacement", path);
    t->has_metaspace = 1;
    strcpy(t->metaspace_replacement, repl);
    t->metaspace_prepend = parse_prepend_scheme(p);
    t->metaspace_split = json_bool(p, "split", 1);
    return 0;
}

static int add_decoder(Tokenizer *t, const cJSON *d, const char *path, Error *err) {
    if (!d || cJSON_IsNull(d)) return 0;
    const char *type = json_string(d, "type");
    if (!type) return error_set(err, "%s: decoder without a type", path);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "decoders");
        if (!cJSON_IsArray(list)) return error_set(err, "%s: Sequence decoder without a list", path);
        const cJSON *item;
        cJSON_ArrayForEach(item, list) if (add_decoder(t, item, path, err)) return -1;
        return 0;
    }
    DecoderStep step = {0};
    if (strcmp(type, "Replace") == 0) {
        const char *from = json_string(cJSON_GetObjectItemCaseSensitive(d, "pattern"), "String");
        const char *to = json_string(d, "content");
        if (!from || !to) return error_set(err, "%s: Replace decoder needs a String pattern and content", path);
        step.kind = DECODE_REPLACE;
        step.from = xstrndup(from, strlen(from));
        step.to = xstrndup(to, strlen(to));
    } else if (strcmp(type, "ByteFallback") == 0) {
        step.kind = DECODE_BYTE_FALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        step.kind = DECODE_FUSE;
    } else if (strcmp(type, "Strip") == 0) {
        const char *content = json_string(d, "content");
        if (!content) return error_set(err, "%s: Strip decoder without content", path);
        step.kind = DECODE_STRIP;
        step.content = xstrndup(content, strlen(content));
        step.start = json_int(d, "start", 0);
        step.stop = json_int(d, "stop", 0);
    } else if (strcmp(type, "Metaspace") == 0) {
        const char *repl = json_string(d, "replacement");
        if (!repl) return error_set(err, "%s: Metaspace decoder without replacement", path);
        step.kind = DECODE_METASPACE;
        step.from = xstrndup(repl, strlen(repl));
        step.prepend_scheme = parse_prepend_scheme(d);
    } else {
        return error_set(err, "%s: decoder '%s' is not supported", path, type);
    }
    t->decoders = xrealloc(t->decoders, (size_t)(t->n_decoders + 1) * sizeof *t->decoders);
    t->decoders[t->n_decoders++] = step;
    return 0;
}

static int parse_model(Tokenizer *t, const cJSON *model, const char *path, Error *err) {
    const char *type = json_string(model, "type");
    if (!cJSON_IsObject(model) || !type) return error_set(err, "%s: no \"model\" object", path);
    if (strcmp(type, "BPE") != 0) return error_set(err, "%s: model type '%s' is not supported (vlft handles BPE)", path, type);
    const cJSON *prefix = cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix");
    const cJSON *suffix = cJSON_GetObjectItemCaseSensitive(model, "end_of_word_suffix");
    if ((cJSON_IsString(prefix) && prefix->valuestring[0]) || (cJSON_IsString(suffix) && suffix->valuestring[0]))
        return error_set(err, "%s: BPE continuing_subword_prefix / end_of_word_suffix are not supported", path);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0)
        return error_set(err, "%s: BPE dropout is not supported", path);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab)) return error_set(err, "%s: BPE model without a vocab object", path);
    int n = cJSON_GetArraySize(vocab);
    bpe_init(&t->bpe, (size_t)n);
    const cJSON *item;
    cJSON_ArrayForEach(item, vocab) {
        if (!cJSON_IsNumber(item) || item->valuedouble < 0 || item->valuedouble > 16777216 ||
            item->valuedouble != (double)(int)item->valuedouble)
            return error_set(err, "%s: vocab entry '%.64s' has an invalid id", path, item->string);
        int id = (int)item->valuedouble;
        if (id < t->n_pieces && t->pieces[id])
            return error_set(err, "%s: vocab id %d is given twice", path, id);
        tokenizer_set_piece(t, id, item->string, strlen(item->string));
    }
    for (int id = 0; id < t->n_pieces; id++) {
        if (!t->pieces[id]) continue;
        str_map_put(&t->bpe.vocab, t->pieces[id], strlen(t->pieces[id]), id);
        const char *p = t->pieces[id];
        if (strlen(p) == 6 && strncmp(p, "<0x", 3) == 0 && p[5] == '>') {
            char *end;
            long v = strtol(p + 3, &end, 16);
            if (end == p + 5 && v >= 0 && v < 256) t->bpe.byte_ids[v] = id;
        }
    }
    const char *unk = json_string(model, "unk_token");
    if (unk) {
        t->bpe.unk_id = str_map_get(&t->piece_ids, unk, strlen(unk));
        if (t->bpe.unk_id < 0) return error_set(err, "%s: unk_token '%.64s' is not in the vocab", path, unk);
    }
    t->bpe.byte_fallback = json_bool(model, "byte_fallback", 0);
    t->bpe.fuse_unk = json_bool(model, "fuse_unk", 0);
    t->bpe.ignore_merges = json_bool(model, "ignore_merges", 0);
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (merges && !cJSON_IsArray(merges)) return error_set(err, "%s: BPE merges is not a list", path);
    int rank = 0;
    StrBuf joined = {0};
    cJSON_ArrayForEach(item, merges) {
        const char *left = NULL, *right = NULL;
        size_t left_len = 0, right_len = 0;
        if (cJSON_IsString(item)) {  // "a b"
            const char *space = strchr(item->valuestring, ' ');
            if (!space || strchr(space + 1, ' ')) {
                str_buf_free(&joined);
                return error_set(err, "%s: merge %d '%.64s' is not two tokens", path, rank, item->valuestring);
            }
            left = item->valuestring;
            left_len = (size_t)(space - left);
            right = space + 1;
            right_len = strlen(right);
        } else if (cJSON_IsArray(item) && cJSON_GetArraySize(item) == 2 && cJSON_IsString(cJSON_GetArrayItem(item, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(item, 1))) {
            left = cJSON_GetArrayItem(item, 0)->valuestring;
            right = cJSON_GetArrayItem(item, 1)->valuestring;
            left_len = strlen(left);
            right_len = strlen(right);
        } else {
            str_buf_free(&joined);
            return error_set(err, "%s: merge %d is neither \"a b\" nor [a, b]", path, rank);
        }
        int l = str_map_get(&t->piece_ids, left, left_len);
        int r = str_map_get(&t->piece_ids, right, right_len);
        joined.length = 0;
        str_buf_append(&joined, left, left_len);
        str_buf_append(&joined, right, right_len);
        int m = str_map_get(&t->piece_ids, joined.data, joined.length);
        if (l < 0 || r < 0 || m < 0) {
            str_buf_free(&joined);
            return error_set(err, "%s: merge %d uses a token missing from the vocab", path, rank);
        }
        bpe_add_merge(&t->bpe, l, r, rank, m);
        rank++;
    }
    str_buf_free(&joined);
    return 0;
}

int tokenizer_parse_json(Tokenizer *t, const char *json_text, const char *path, Error *err) {
    cJSON *root = cJSON_Parse(json_text);
    if (!root) return error_set(err, "%s: not valid JSON", path);
    int rc = -1;
    if (!cJSON_IsObject(root)) {
        error_set(err, "%s: not a tokenizer.json object", path);
        goto done;
    }
    if (parse_model(t, cJSON_GetObjectItemCaseSensitive(root, "model"), path, err)) goto done;
    if (add_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), path, err)) goto done;
    if (set_pre_tokenizer(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), path, err)) goto done;
    if (add_decoder(t, cJSON_GetObjectItemCaseSensitive(root, "decoder"), path, err)) goto done;
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added)) {
        error_set(err, "%s: added_tokens is not a list", path);
        goto done;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, added) {
        const char *content = json_string(item, "content");
        int id = json_int(item, "id", -1);
        if (!content || !content[0] || id < 0 || id > 16777216) {
            error_set(err, "%s: an added token lacks content or a valid id", path);
            goto done;
        }
        tokenizer_add_added_token(t, content, id, json_bool(item, "special", 0), json_bool(item, "lstrip", 0),
                                  json_bool(item, "rstrip", 0));
    }
    t->unk_id = t->bpe.unk_id;
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}
