// tokenizer_load.c - picks and builds a Tokenizer from a model folder the
// way transformers' AutoTokenizer does for LLaMA-style tokenizers.
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "../base/fs.h"
#include "tokenizer_internal.h"
#include "utf8.h"

static const char SPACE_SYMBOL[] = "\xe2\x96\x81";

static int is_mergeable(SpPieceType type) { return type == SP_NORMAL || type == SP_USER_DEFINED || type == SP_UNUSED; }

typedef struct {
    float score;
    int id;
} ScoreId;

static int by_score_then_id(const void *a, const void *b) {
    const ScoreId *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->id - y->id;
}

typedef struct {
    int left, right;
} Split;

static int by_left_then_right(const void *a, const void *b) {
    const Split *x = a, *y = b;
    if (x->left != y->left) return x->left - y->left;
    return x->right - y->right;
}

void tokenizer_fill_from_sp(Tokenizer *t, const SpModel *m, int hf_vocab) {
    bpe_init(&t->bpe, (size_t)m->n_pieces);
    t->sp_piece_types = xcalloc((size_t)m->n_pieces, sizeof(int));
    for (int i = 0; i < m->n_pieces; i++) {
        const SpPiece *p = &m->pieces[i];
        tokenizer_set_piece(t, i, p->text, p->length);
        t->sp_piece_types[i] = p->type;
        if (p->type == SP_BYTE && p->length == 6 && strncmp(p->text, "<0x", 3) == 0) {
            char *end;
            long v = strtol(p->text + 3, &end, 16);
            if (end == p->text + 5 && v >= 0 && v < 256) t->bpe.byte_ids[v] = i;
        }
    }
    for (int i = 0; i < m->n_pieces; i++)
        if (hf_vocab || is_mergeable(m->pieces[i].type))
            str_map_put(&t->bpe.vocab, t->pieces[i], m->pieces[i].length, i);
    t->bpe.byte_fallback = m->byte_fallback;
    t->bpe.unk_id = m->unk_id;
    t->bpe.fuse_unk = 1;
    // Merge rules: every split of a piece into two pieces. SentencePiece
    // ranks a merge by the merged piece's score (all splits alike, leftmost
    // first); the converted HF BPE also orders the splits of one piece by
    // the ids of their halves.
    ScoreId *order = xmalloc((size_t)m->n_pieces * sizeof *order);
    int n_order = 0;
    for (int i = 0; i < m->n_pieces; i++)
        if (hf_vocab || is_mergeable(m->pieces[i].type)) order[n_order++] = (ScoreId){m->pieces[i].score, i};
    qsort(order, (size_t)n_order, sizeof *order, by_score_then_id);
    Split *splits = NULL;
    int splits_capacity = 0;
    for (int rank = 0; rank < n_order; rank++) {
        const SpPiece *p = &m->pieces[order[rank].id];
        int n_splits = 0;
        for (size_t cut = utf8_char_length(p->text, p->length); cut > 0 && cut < p->length;) {
            int l = str_map_get(&t->bpe.vocab, p->text, cut);
            int r = str_map_get(&t->bpe.vocab, p->text + cut, p->length - cut);
            if (l >= 0 && r >= 0) {
                if (n_splits == splits_capacity) {
                    splits_capacity = splits_capacity ? splits_capacity * 2 : 16;
                    splits = xrealloc(splits, (size_t)splits_capacity * sizeof *splits);
                }
                splits[n_splits++] = (Split){l, r};
            }
            size_t step = utf8_char_length(p->text + cut, p->length - cut);
            cut += step ? step : 1;
        }
        if (n_splits > 1) qsort(splits, (size_t)n_splits, sizeof *splits, by_left_then_right);
        for (int k = 0; k < n_splits; k++)
            bpe_add_merge(&t->bpe, splits[k].left, splits[k].right, rank * 64 + (hf_vocab ? (k < 63 ? k : 63) : 0),
                          order[rank].id);
    }
    free(splits);
    free(order);
    t->sp_add_dummy_prefix = m->add_dummy_prefix;
    t->sp_remove_extra_whitespaces = m->remove_extra_whitespaces;
    t->sp_escape_whitespaces = m->escape_whitespaces;
    t->sp_treat_whitespace_as_suffix = m->treat_whitespace_as_suffix;
    t->unk_id = m->unk_id;
    t->bos_id = m->bos_id >= 0 && m->bos_id < m->n_pieces ? m->bos_id : -1;
    t->eos_id = m->eos_id >= 0 && m->eos_id < m->n_pieces ? m->eos_id : -1;
    t->pad_id = m->pad_id >= 0 && m->pad_id < m->n_pieces ? m->pad_id : -1;
}

// User-defined pieces are matched whole by SentencePiece's normalizer and
// never merged.
static void set_frozen_user_defined(Tokenizer *t, const SpModel *m) {
    for (int i = 0; i < m->n_pieces; i++)
        if (m->pieces[i].type == SP_USER_DEFINED && m->pieces[i].length > 0) t->bpe.n_frozen++;
    t->bpe.frozen = xcalloc((size_t)t->bpe.n_frozen + 1, sizeof(char *));
    t->bpe.frozen_lengths = xcalloc((size_t)t->bpe.n_frozen + 1, sizeof(size_t));
    int k = 0;
    for (int i = 0; i < m->n_pieces; i++)
        if (m->pieces[i].type == SP_USER_DEFINED && m->pieces[i].length > 0) {
            t->bpe.frozen[k] = t->pieces[i];
            t->bpe.frozen_lengths[k] = m->pieces[i].length;
            k++;
        }
}

static int load_sp_checked(SpModel *m, const char *path, Error *err) {
    if (sp_model_load(m, path, err)) return -1;
    if (m->model_type != SP_MODEL_BPE) {
        sp_model_free(m);
        return error_set(err, "%s: SentencePiece model type %d is not supported (vlft handles BPE models)", path,
                         (int)m->model_type);
    }
    if (m->has_charsmap) {
        sp_model_free(m);
        return error_set(err, "%s: normalizer '%s' with a precompiled charsmap is not supported (vlft handles identity)",
                         path, m->normalizer_name);
    }
    return 0;
}

int tokenizer_load_sp_file(Tokenizer **out, const char *path, Error *err) {
    SpModel m;
    if (load_sp_checked(&m, path, err)) return -1;
    Tokenizer *t = tokenizer_new(TOKENIZER_SENTENCEPIECE);
    tokenizer_fill_from_sp(t, &m, 0);
    set_frozen_user_defined(t, &m);
    sp_model_free(&m);
    *out = t;
    return 0;
}

int tokenizer_load_json_file(Tokenizer **out, const char *path, Error *err) {
    char *text;
    size_t size;
    if (read_file(path, (size_t)1 << 30, &text, &size, err)) return -1;
    Tokenizer *t = tokenizer_new(TOKENIZER_FAST_JSON);
    int rc = tokenizer_parse_json(t, text, path, err);
    free(text);
    if (rc) {
        tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

// tokenizer_config.json / special_tokens_map.json values: a token is a
// string or {"content": ...}.
static const char *token_string(const cJSON *v) {
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsString(c)) return c->valuestring;
    }
    return NULL;
}

static cJSON *read_json_optional(const char *dir, const char *name, Error *err, int *failed) {
    char path[4096];
    *failed = 0;
    if (path_join(path, sizeof path, dir, name, err)) {
        *failed = 1;
        return NULL;
    }
    if (!file_exists(path)) return NULL;
    char *text;
    size_t size;
    if (read_file(path, (size_t)64 << 20, &text, &size, err)) {
        *failed = 1;
        return NULL;
    }
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        *failed = 1;
        error_set(err, "%s: not a JSON object", path);
        return NULL;
    }
    return root;
}

static const char *special_name(const cJSON *config, const cJSON *map, const char *key) {
    const char *s = token_string(cJSON_GetObjectItemCaseSensitive(config, key));
    if (!s) s = token_string(cJSON_GetObjectItemCaseSensitive(map, key));
    return s;
}

static int config_bool(const cJSON *config, const char *key, int fallback) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(config, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : fallback;
}

// The fast tokenizer transformers' LlamaConverter builds from a .model.
static void convert_from_sp(Tokenizer *t, const SpModel *m, int legacy, int add_prefix_space) {
    tokenizer_fill_from_sp(t, m, 1);
    if (legacy) {
        if (add_prefix_space) {
            t->normalizers = xrealloc(t->normalizers, (size_t)(t->n_normalizers + 1) * sizeof *t->normalizers);
            t->normalizers[t->n_normalizers++] = (NormalizerStep){NORM_PREPEND, xstrndup(SPACE_SYMBOL, 3), NULL, 0, 0};
        }
        t->normalizers = xrealloc(t->normalizers, (size_t)(t->n_normalizers + 1) * sizeof *t->normalizers);
        t->normalizers[t->n_normalizers++] =
            (NormalizerStep){NORM_REPLACE, xstrndup(" ", 1), xstrndup(SPACE_SYMBOL, 3), 0, 0};
    } else {
        t->has_metaspace = 1;
        strcpy(t->metaspace_replacement, SPACE_SYMBOL);
        t->metaspace_prepend = add_prefix_space ? PREPEND_FIRST : PREPEND_NEVER;
        t->metaspace_split = 0;
    }
    t->decoders = xcalloc(4, sizeof *t->decoders);
    t->decoders[0] = (DecoderStep){.kind = DECODE_REPLACE, .from = xstrndup(SPACE_SYMBOL, 3), .to = xstrndup(" ", 1)};
    t->decoders[1] = (DecoderStep){.kind = DECODE_BYTE_FALLBACK};
    t->decoders[2] = (DecoderStep){.kind = DECODE_FUSE};
    t->n_decoders = 3;
    if (add_prefix_space) t->decoders[t->n_decoders++] = (DecoderStep){.kind = DECODE_STRIP, .content = xstrndup(" ", 1), .start = 1};
    // unk / control pieces are special added tokens, user-defined pieces
    // plain added tokens.
    for (int i = 0; i < m->n_pieces; i++) {
        SpPieceType type = m->pieces[i].type;
        if (type == SP_UNKNOWN || type == SP_CONTROL) tokenizer_add_added_token(t, m->pieces[i].text, i, 1, 0, 0);
        if (type == SP_USER_DEFINED) tokenizer_add_added_token(t, m->pieces[i].text, i, 0, 0, 0);
    }
}

int tokenizer_load(Tokenizer **out, const char *dir, int use_fast, Error *err) {
    char json_path[4096], model_path[4096];
    if (path_join(json_path, sizeof json_path, dir, "tokenizer.json", err)) return -1;
    if (path_join(model_path, sizeof model_path, dir, "tokenizer.model", err)) return -1;
    int failed;
    cJSON *config = read_json_optional(dir, "tokenizer_config.json", err, &failed);
    if (failed) return -1;
    cJSON *map = read_json_optional(dir, "special_tokens_map.json", err, &failed);
    if (failed) {
        cJSON_Delete(config);
        return -1;
    }
    int legacy = config_bool(config, "legacy", 1);
    int add_prefix_space = config_bool(config, "add_prefix_space", 1);
    Tokenizer *t = NULL;
    int has_json = file_exists(json_path), has_model = file_exists(model_path);
    // LlamaTokenizerFast rebuilds itself from the .model (from_slow) when
    // tokenizer_config.json sets add_prefix_space.
    int from_slow = cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(config, "add_prefix_space")) && has_model;
    if (use_fast && has_json && !from_slow) {
        if (tokenizer_load_json_file(&t, json_path, err)) goto fail;
    } else if (has_model) {
        SpModel m;
        if (load_sp_checked(&m, model_path, err)) goto fail;
        if (use_fast) {
            t = tokenizer_new(TOKENIZER_FAST_CONVERTED);
            convert_from_sp(t, &m, legacy, add_prefix_space);
        } else {
            if (!legacy) {
                sp_model_free(&m);
                error_set(err, "%s: the slow tokenizer with legacy=false is not supported; use the fast one", dir);
                goto fail;
            }
            t = tokenizer_new(TOKENIZER_SLOW);
            tokenizer_fill_from_sp(t, &m, 0);
            set_frozen_user_defined(t, &m);
        }
        sp_model_free(&m);
    } else {
        error_set(err, "%s: no tokenizer.json or tokenizer.model", dir);
        goto fail;
    }
    // Added tokens listed in tokenizer_config.json.
    const cJSON *decoder = cJSON_GetObjectItemCaseSensitive(config, "added_tokens_decoder");
    const cJSON *entry;
    cJSON_ArrayForEach(entry, decoder) {
        const char *content = token_string(entry);
        char *end;
        long id = strtol(entry->string, &end, 10);
        if (!content || !content[0] || *end || id < 0 || id > 16777216) {
            error_set(err, "%s/tokenizer_config.json: bad added_tokens_decoder entry '%.32s'", dir, entry->string);
            goto fail;
        }
        const cJSON *special = cJSON_GetObjectItemCaseSensitive(entry, "special");
        tokenizer_add_added_token(t, content, (int)id, cJSON_IsTrue(special),
                                  cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(entry, "lstrip")),
                                  cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(entry, "rstrip")));
    }
    // Special tokens: named in the config (LlamaTokenizer's defaults
    // otherwise), each becomes a special added token.
    const char *keys[4] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    int *ids[4] = {&t->bos_id, &t->eos_id, &t->unk_id, &t->pad_id};
    const char *defaults[4] = {"<s>", "</s>", "<unk>", NULL};
    for (int k = 0; k < 4; k++) {
        const char *name = special_name(config, map, keys[k]);
        const cJSON *explicit_value = cJSON_GetObjectItemCaseSensitive(config, keys[k]);
        if (!name && cJSON_IsNull(explicit_value)) {
            *ids[k] = -1;
            continue;
        }
        // A token the config names is added when the vocabulary lacks it (as
        // transformers does); a default name only when it is there.
        int named = name != NULL;
        if (!name && *ids[k] >= 0) name = tokenizer_id_to_token(t, *ids[k]);
        if (!name) name = defaults[k];
        if (!name || (!named && tokenizer_token_to_id(t, name) < 0)) {
            *ids[k] = -1;
            continue;
        }
        *ids[k] = tokenizer_add_special_token(t, name);
    }
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(config, "additional_special_tokens");
    if (!extra) extra = cJSON_GetObjectItemCaseSensitive(map, "additional_special_tokens");
    cJSON_ArrayForEach(entry, extra) {
        const char *name = token_string(entry);
        if (name && name[0]) tokenizer_add_special_token(t, name);
    }
    cJSON_Delete(config);
    cJSON_Delete(map);
    *out = t;
    return 0;
fail:
    tokenizer_free(t);
    cJSON_Delete(config);
    cJSON_Delete(map);
    return -1;
}
