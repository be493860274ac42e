// vlft chat: talk to a model (and its LoRA adapter) as LLaMA-Factory's chat
// does: one answer to a prompt given on the command line, or a REPL with the
// conversation's history, /image, /reset and /exit.
//
// Each turn encodes the whole conversation with the chat template (history,
// the new user message, an empty assistant message: LLaMA-Factory's
// encode_oneturn at inference), prefills what the KV cache does not hold yet
// (the cache keeps the longest prefix shared with the previous turn; images
// at their image tokens), then decodes one token at a time until EOS, a stop word (the template's, added to the tokenizer as
// special tokens) or max_new_tokens. Text is printed as it is produced, in
// whole UTF-8 characters.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../model/generate.h"
#include "../model/llava.h"
#include "../text/mm_plugin.h"
#include "../text/template.h"
#include "../text/token_stream.h"
#include "../text/tokenizer.h"
#include "../vision/clip_preprocess.h"
#include "commands.h"


static void usage(FILE *out) {
    fprintf(out,
            "usage: vlft chat --model DIR [--adapter DIR] [--template NAME] [--image PATH ...] [PROMPT]\n\n"
            "With PROMPT: prints one answer and exits. Without: a conversation on the terminal; type a\n"
            "message, or /image PATH (attach an image to the next message), /reset (forget the history),\n"
            "/exit (or end of input).\n\n"
            "options:\n"
            "  --template NAME            chat template (default yi_vl; %s)\n"
            "  --system TEXT              system message (default: the template's)\n"
            "  --max-new-tokens N         (default: generation_config.json, else 512)\n"
            "  --do-sample | --greedy     sample, or take the most likely token (default: generation_config.json)\n"
            "  --temperature T, --top-p P, --top-k K, --repetition-penalty R   (defaults: generation_config.json)\n"
            "  --seed N                   sampling seed (default 42)\n"
            "  --threads N                compute threads (default: all cores)\n"
            "  --bf16                     bf16 weight products (frozen weights kept as bf16 only: a 6B\n"
            "                             model in ~13 GB instead of ~27), fp32 sums, as training's bf16: true\n"
            "  --print-ids                print 'prompt_ids ...' and 'output_ids ...' lines instead of the text\n"
            "  --stats                    print prefill and decode timings (tokens/s) on stderr\n",
            template_names());
}

typedef struct {
    ModelConfig config;
    LlavaModel *model;
    Tokenizer *tokenizer;
    const ChatTemplate *tpl;
    ClipConfig clip;
    ImageBounds bounds;
    GenerationConfig gen;
    Rng rng;
    LlavaKVCache *cache;
    IntVec cached;  // the ids whose K/V the cache holds, position by position
    const char *system;
    int print_ids;
    int print_stats;  // timings of each turn on stderr
    // the conversation
    Message *history;  // user, assistant, user, ... (n_history even)
    int n_history, history_capacity;
    float *pixels;     // every image of the conversation [n_images, 3, S, S], in order
    int n_images;
    int pending_images;  // attached to the next user message
} Chat;

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int is_stop(const Chat *c, int id) {
    for (int i = 0; i < c->gen.n_eos; i++)
        if (c->gen.eos_ids[i] == id) return 1;
    return 0;
}

// decode(..., skip_special_tokens=True), as LLaMA-Factory's chat decodes
// answers: special ids (BOS, EOS, UNK, PAD, the image token, stop words)
// are neither shown nor kept in the history's text.
static int is_special(const Chat *c, int id) {
    const Tokenizer *t = c->tokenizer;
    if (id == tokenizer_bos_id(t) || id == tokenizer_eos_id(t) || id == tokenizer_unk_id(t) ||
        id == tokenizer_pad_id(t) || (c->config.has_vision && id == c->config.image_token_index))
        return 1;
    return is_stop(c, id);
}

static int attach_image(Chat *c, const char *path, Error *err) {
    if (!c->config.has_vision || !c->tpl->llava_plugin)
        return error_set(err, "%s: template '%s' (or this model) takes no images", path, c->tpl->name);
    ClipTensor t;
    if (clip_preprocess_file(&c->clip, &c->bounds, path, &t, err) != 0) return -1;
    int S = c->config.vision.image_size;
    if (t.height != S || t.width != S) {
        clip_tensor_free(&t);
        return error_set(err, "%s: preprocessed to %d x %d but the vision tower takes %d x %d", path, t.height, t.width,
                         S, S);
    }
    size_t per = (size_t)3 * S * S;
    float *grown = realloc(c->pixels, sizeof(float) * per * (size_t)(c->n_images + 1));
    if (!grown) {
        clip_tensor_free(&t);
        return error_set(err, "%s: out of memory", path);
    }
    c->pixels = grown;
    memcpy(c->pixels + per * (size_t)c->n_images, t.data, sizeof(float) * per);
    clip_tensor_free(&t);
    c->n_images++;
    c->pending_images++;
    return 0;
}

static void reset_conversation(Chat *c) {
    for (int i = 0; i < c->n_history; i++) free(c->history[i].content);
    c->n_history = 0;
    c->n_images = 0;
    c->cached.length = 0;
    c->pending_images = 0;
}

static void history_push(Chat *c, MessageRole role, char *content) {
    if (c->n_history == c->history_capacity) {
        c->history_capacity = c->history_capacity ? 2 * c->history_capacity : 8;
        c->history = xrealloc(c->history, sizeof(Message) * (size_t)c->history_capacity);
    }
    c->history[c->n_history++] = (Message){.role = role, .content = content};
}

static void print_ids(const char *label, const int *ids, int n) {
    printf("%s", label);
    for (int i = 0; i < n; i++) printf(" %d", ids[i]);
    printf("\n");
}

// The prompt ids of the conversation plus `user` (encode_oneturn with an
// empty answer). Images attached but not placed go in front of the message,
// as LLaMA-Factory's chat does when the text has no <image>.
static int encode_prompt(Chat *c, const char *user, IntVec *prompt, char **user_content, Error *err) {
    StrBuf content = {0};
    str_buf_append(&content, "", 0);
    if (c->pending_images > 0 && mm_count_images(user) == 0)
        for (int i = 0; i < c->pending_images; i++) str_buf_append_str(&content, IMAGE_PLACEHOLDER);
    str_buf_append_str(&content, user);
    int n = c->n_history + 2, placeholders = 0;
    Message *messages = xcalloc((size_t)n, sizeof *messages);
    for (int i = 0; i < n; i++) {
        const char *text = i < c->n_history ? c->history[i].content : i == n - 2 ? content.data : "";
        messages[i].role = i % 2 == 0 ? ROLE_USER : ROLE_ASSISTANT;
        placeholders += mm_count_images(text);
        messages[i].content = c->tpl->llava_plugin ? mm_expand_images(text, c->config.image_seq_length)
                                                   : xstrndup(text, strlen(text));
    }
    int rc = 0;
    if (placeholders != c->n_images)
        rc = error_set(err, "the conversation has %d <image> placeholders but %d images", placeholders, c->n_images);
    else {
        IntVec *encoded = xcalloc((size_t)n, sizeof *encoded);
        template_encode_messages(c->tpl, c->tokenizer, messages, n, c->system, encoded);
        for (int i = 0; i < n - 1; i++) int_vec_append(prompt, encoded[i].data, encoded[i].length);
        for (int i = 0; i < n; i++) int_vec_free(&encoded[i]);
        free(encoded);
        int image_tokens = 0;
        for (int i = 0; i < prompt->length; i++) image_tokens += prompt->data[i] == c->config.image_token_index;
        if (c->config.has_vision && image_tokens != c->n_images * c->config.image_seq_length)
            rc = error_set(err, "the prompt has %d image tokens for %d images of %d tokens (does the tokenizer encode "
                                "<image> as id %d?)", image_tokens, c->n_images, c->config.image_seq_length,
                           c->config.image_token_index);
    }
    for (int i = 0; i < n; i++) free(messages[i].content);
    free(messages);
    if (rc == 0) *user_content = content.data;
    else str_buf_free(&content);
    return rc;
}

static void emit(char *text) {
    fputs(text, stdout);
    fflush(stdout);
    free(text);
}

// One turn: answer `user`, streaming the text; on success the turn joins the history.
static int reply(Chat *c, const char *user, Error *err) {
    IntVec prompt = {0}, seen = {0};
    char *user_content = NULL;
    if (encode_prompt(c, user, &prompt, &user_content, err) != 0) return -1;
    int V = c->config.text.vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)V);
    TokenStream stream;
    token_stream_init(&stream, c->tokenizer);
    int rc = logits ? 0 : error_set(err, "out of memory");
    // The conversation so far is usually still in the cache: prefill only
    // what follows the longest shared prefix (cut back to an image's first
    // token, so each image's rows are computed whole).
    int keep = 0, image = c->config.image_token_index;
    while (keep < c->cached.length && keep < prompt.length - 1 && c->cached.data[keep] == prompt.data[keep]) keep++;
    while (keep > 0 && keep < prompt.length && prompt.data[keep] == image && prompt.data[keep - 1] == image) keep--;
    int images_before = 0, per_image = c->config.image_seq_length > 0 ? c->config.image_seq_length : 1;
    for (int i = 0; c->config.has_vision && i < keep; i++) images_before += prompt.data[i] == image;
    images_before /= per_image;
    llava_kv_cache_truncate(c->cache, keep);
    c->cached.length = keep;
    size_t image_floats = (size_t)3 * c->config.vision.image_size * c->config.vision.image_size;
    double t0 = now_seconds();
    if (rc == 0)
        rc = llava_decode(c->model, c->cache, prompt.data + keep, prompt.length - keep, c->n_images - images_before,
                          c->pixels ? c->pixels + image_floats * (size_t)images_before : NULL, logits, err);
    if (rc == 0) int_vec_append(&c->cached, prompt.data + keep, prompt.length - keep);
    else {
        c->cached.length = 0;
        llava_kv_cache_reset(c->cache);
    }
    double t1 = now_seconds();
    int decoded = 0;
    int_vec_append(&seen, prompt.data, prompt.length);
    for (int step = 0; rc == 0 && step < c->gen.max_new_tokens; step++) {
        int next = generation_next_token(&c->gen, logits, V, seen.data, seen.length, &c->rng);
        if (is_stop(c, next)) break;
        int_vec_push(&seen, next);
        if (!is_special(c, next)) {
            char *text = token_stream_push(&stream, next);
            if (c->print_ids) free(text);
            else emit(text);
        }
        if (step + 1 == c->gen.max_new_tokens) break;
        rc = llava_decode(c->model, c->cache, &next, 1, 0, NULL, logits, err);
        if (rc == 0) int_vec_push(&c->cached, next);
        decoded++;
    }
    double t2 = now_seconds();
    if (rc == 0 && c->print_stats)
        fprintf(stderr, "stats: prompt %d tokens, %d reused from the cache; prefill %d tokens (%d images) %.3f s, "
                        "decode %d tokens %.3f s, %.2f tokens/s\n",
                prompt.length, keep, prompt.length - keep, c->n_images - images_before, t1 - t0, decoded, t2 - t1,
                decoded > 0 ? decoded / (t2 - t1) : 0.0);
    if (rc == 0) {
        if (c->print_ids) {
            print_ids("prompt_ids", prompt.data, prompt.length);
            print_ids("output_ids", seen.data + prompt.length, seen.length - prompt.length);
        } else {
            emit(token_stream_finish(&stream));
            printf("\n");
            fflush(stdout);
        }
        history_push(c, ROLE_USER, user_content);
        history_push(c, ROLE_ASSISTANT, token_stream_text(&stream));
        user_content = NULL;
        c->pending_images = 0;
    }
    free(user_content);
    free(logits);
    token_stream_free(&stream);
    int_vec_free(&prompt);
    int_vec_free(&seen);
    return rc;
}

static void trim_newline(char *line) {
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
}

static int repl(Chat *c) {
    printf("vlft chat: type a message; /image PATH attaches an image, /reset clears the history, /exit quits.\n");
    char *line = NULL;
    size_t capacity = 0;
    for (;;) {
        printf("\nUser: ");
        fflush(stdout);
        if (getline(&line, &capacity, stdin) < 0) {
            printf("\n");
            break;
        }
        trim_newline(line);
        const char *text = line;
        while (*text == ' ' || *text == '\t') text++;
        if (*text == '\0') continue;
        Error err;
        if (strcmp(text, "/exit") == 0 || strcmp(text, "/quit") == 0) break;
        if (strcmp(text, "/reset") == 0) {
            reset_conversation(c);
            printf("(history cleared)\n");
            continue;
        }
        if (strncmp(text, "/image", 6) == 0 && (text[6] == ' ' || text[6] == '\0')) {
            const char *path = text + 6;
            while (*path == ' ') path++;
            if (*path == '\0') printf("usage: /image PATH\n");
            else if (attach_image(c, path, &err) != 0) printf("error: %s\n", err.message);
            else printf("(image attached to the next message: %s)\n", path);
            continue;
        }
        printf("Assistant: ");
        fflush(stdout);
        if (reply(c, text, &err) != 0) printf("\nerror: %s\n", err.message);
    }
    free(line);
    fflush(stdout);
    return EXIT_OK;
}

static int parse_int(const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno || v < -2147483647L || v > 2147483647L) return -1;
    *out = (int)v;
    return 0;
}

static int parse_double(const char *s, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0') return -1;
    *out = v;
    return 0;
}

static void chat_close(Chat *c) {
    reset_conversation(c);
    free(c->history);
    free(c->pixels);
    int_vec_free(&c->cached);
    llava_kv_cache_free(c->cache);
    if (c->model) llava_free(c->model);
    if (c->tokenizer) tokenizer_free(c->tokenizer);
}

int command_chat(int argc, char **argv) {
    const char *model_dir = NULL, *adapter_dir = NULL, *template_name = "yi_vl", *prompt = NULL;
    const char **images = calloc((size_t)argc + 1, sizeof(char *));
    int n_image_args = 0, threads = 0, seed = 42, print = 0, stats = 0, bf16 = 0;
    int max_new = -1, top_k = -1, sample = -1;
    double temperature = -1, top_p = -1, repetition_penalty = -1;
    const char *system = NULL;
    if (!images) return EXIT_BAD_INPUT;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0, takes_value = 1;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            free(images);
            return EXIT_OK;
        } else if (strcmp(a, "--print-ids") == 0) print = 1, takes_value = 0;
        else if (strcmp(a, "--stats") == 0) stats = 1, takes_value = 0;
        else if (strcmp(a, "--bf16") == 0) bf16 = 1, takes_value = 0;
        else if (strcmp(a, "--do-sample") == 0) sample = 1, takes_value = 0;
        else if (strcmp(a, "--greedy") == 0) sample = 0, takes_value = 0;
        else if (a[0] == '-' && a[1] == '-' && v == NULL) bad = 1;
        else if (strcmp(a, "--model") == 0) model_dir = v;
        else if (strcmp(a, "--adapter") == 0) adapter_dir = v;
        else if (strcmp(a, "--template") == 0) template_name = v;
        else if (strcmp(a, "--system") == 0) system = v;
        else if (strcmp(a, "--image") == 0) images[n_image_args++] = v;
        else if (strcmp(a, "--threads") == 0) bad = parse_int(v, &threads) || threads < 0;
        else if (strcmp(a, "--seed") == 0) bad = parse_int(v, &seed);
        else if (strcmp(a, "--max-new-tokens") == 0) bad = parse_int(v, &max_new) || max_new < 1;
        else if (strcmp(a, "--top-k") == 0) bad = parse_int(v, &top_k) || top_k < 0;
        else if (strcmp(a, "--temperature") == 0) bad = parse_double(v, &temperature) || !(temperature > 0);
        else if (strcmp(a, "--top-p") == 0) bad = parse_double(v, &top_p) || !(top_p > 0 && top_p <= 1);
        else if (strcmp(a, "--repetition-penalty") == 0)
            bad = parse_double(v, &repetition_penalty) || !(repetition_penalty > 0);
        else if (a[0] != '-' && prompt == NULL) prompt = a, takes_value = 0;
        else {
            fprintf(stderr, "vlft chat: unexpected argument '%s' (see 'vlft chat --help')\n", a);
            free(images);
            return EXIT_USAGE;
        }
        if (bad) {
            fprintf(stderr, "vlft chat: bad or missing value for %s%s%s\n", a, v ? ": " : "", v ? v : "");
            free(images);
            return EXIT_USAGE;
        }
        if (takes_value) i++;
    }
    if (model_dir == NULL) {
        usage(stderr);
        free(images);
        return EXIT_USAGE;
    }
    Chat c = {0};
    c.system = system;
    c.print_ids = print;
    c.print_stats = stats;
    Error err;
    int rc = 0;
    c.tpl = template_find(template_name);
    if (c.tpl == NULL) rc = error_set(&err, "unknown template '%s' (known: %s)", template_name, template_names());
    if (rc == 0) rc = model_config_load(&c.config, model_dir, &err);
    if (rc == 0) rc = tokenizer_load(&c.tokenizer, model_dir, 1, &err);
    if (rc == 0) rc = template_fix_tokenizer(c.tpl, c.tokenizer, &err);
    if (rc == 0 && c.config.has_vision) rc = clip_config_load(model_dir, &c.clip, &err);
    image_bounds_defaults(&c.bounds);
    generation_config_defaults(&c.gen);
    if (rc == 0) rc = generation_config_load(model_dir, &c.gen, &err);
    if (rc == 0) {
        // LLaMA-Factory stops on the tokenizer's EOS and its additional
        // special tokens (the template's stop words).
        c.gen.n_eos = 0;
        generation_config_add_eos(&c.gen, tokenizer_eos_id(c.tokenizer));
        for (int i = 0; c.tpl->stop_words[i]; i++)
            generation_config_add_eos(&c.gen, tokenizer_token_to_id(c.tokenizer, c.tpl->stop_words[i]));
        if (sample >= 0) c.gen.do_sample = sample;
        if (temperature > 0) c.gen.temperature = temperature;
        if (top_p > 0) c.gen.top_p = top_p;
        if (top_k >= 0) c.gen.top_k = top_k;
        if (repetition_penalty > 0) c.gen.repetition_penalty = repetition_penalty;
        if (max_new > 0) c.gen.max_new_tokens = max_new;
        rng_seed(&c.rng, (uint64_t)seed);
        LlavaOptions options;
        llava_options_defaults(&options);
        options.finetuning_type = FINETUNE_NONE;
        options.threads = threads;
        if (adapter_dir) rc = llava_options_from_adapter_config(adapter_dir, &options, &err);
        options.bf16 = bf16;
        // Nothing trains here: an adapter that reaches into the vision tower
        // or the projector (trained with them unfrozen) must find them open.
        if (adapter_dir && (strstr(options.lora_target, "vision_tower") || strstr(options.additional_target, "vision_tower")))
            options.freeze_vision_tower = 0;
        if (adapter_dir && (strstr(options.lora_target, "multi_modal_projector") ||
                            strstr(options.additional_target, "multi_modal_projector")))
            options.freeze_multi_modal_projector = 0;
        if (rc == 0) rc = llava_load(model_dir, &options, &c.model, &err);
        if (rc == 0 && adapter_dir) rc = llava_load_adapter(c.model, adapter_dir, &err);
        if (rc == 0) rc = llava_kv_cache_new(c.model, &c.cache, &err);
        if (rc == 0 && stats) {
            LlavaMemoryStats ms;
            llava_memory_stats(c.model, &ms);
            fprintf(stderr, "stats: weights %zu B used in place from the checkpoint, %zu B converted or owned (%s)\n",
                    ms.weights_mapped, ms.weights_owned, bf16 ? "bf16 products" : "fp32");
        }
    }
    for (int i = 0; rc == 0 && i < n_image_args; i++) rc = attach_image(&c, images[i], &err);
    free(images);
    if (rc != 0) {
        fprintf(stderr, "vlft chat: %s\n", err.message);
        chat_close(&c);
        return EXIT_BAD_INPUT;
    }
    int exit_code = EXIT_OK;
    if (prompt) {
        if (reply(&c, prompt, &err) != 0) {
            fprintf(stderr, "vlft chat: %s\n", err.message);
            exit_code = EXIT_BAD_INPUT;
        }
    } else {
        exit_code = repl(&c);
    }
    chat_close(&c);
    return exit_code;
}
