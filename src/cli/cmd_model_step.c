// vlft _model-step: one forward/backward of a model on a batch read from a
// safetensors file, results written as safetensors. The parity tests and the
// benchmark drive the model through it; the trainer uses src/model/llava.h.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../io/safetensors.h"
#include "../kernels/kernels.h"
#include "../model/llava.h"
#include "commands.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: vlft _model-step MODEL_DIR BATCH.safetensors [OUT.safetensors] [options]\n\n"
            "Runs one forward + backward pass (testing and benchmarking aid).\n"
            "BATCH holds input_ids, labels, attention_mask (I32 [B,L]) and pixel_values (F32 [n,3,S,S]).\n"
            "OUT receives logits [B,L,V], loss [1] (F64) and grad:<param> for every trainable tensor.\n\n"
            "  --finetuning-type lora|full|freeze|none   (default lora)\n"
            "  --lora-rank N --lora-alpha A --lora-dropout P --lora-target all|a,b\n"
            "  --additional-target a,b\n"
            "  --freeze-vision-tower 0|1 --freeze-projector 0|1 --freeze-language-model 0|1\n"
            "  --freeze-trainable-layers N --freeze-trainable-modules a,b\n"
            "  --load-adapter DIR      LoRA/extra values from a PEFT adapter folder\n"
            "  --adapter-options DIR   LoRA options (r, alpha, targets) from DIR/adapter_config.json\n"
            "  --bf16                  bf16 products with fp32 accumulation (a recipe's bf16: true)\n"
            "  --grad-scale F          (default 1)\n"
            "  --gradient-checkpointing 0|1   recompute each decoder layer in the backward (default 0 here;\n"
            "                          training recipes default to 1 as LLaMA-Factory)\n"
            "  --device cpu|cuda|auto  where the step runs (default cpu; cuda needs `make CUDA=1`)\n"
            "  --update                after each step also run the AdamW update (lr 1e-5, clipping 1.0), as a\n"
            "                          training step does (timed with it; on the GPU only)\n"
            "  --seed N --threads N\n"
            "  --repeat N              run the step N times and report the mean time\n"
            "  --save-full DIR --save-adapter DIR   save after the step (values unchanged)\n"
            "  --list-params           print the trainable parameter names and exit\n");
}

typedef struct {
    Safetensors st;
    int32_t *input_ids, *labels, *mask;
    float *pixels;
    LlavaBatch batch;
} BatchFile;

static int read_tensor(BatchFile *bf, const char *name, DType dtype, int required, void **out, const TensorInfo **info,
                       Error *err) {
    const TensorInfo *t = safetensors_get(&bf->st, name);
    *out = NULL;
    if (t == NULL) return required ? error_set(err, "%s: missing tensor '%s'", bf->st.files[0].path, name) : 0;
    if (t->dtype != dtype)
        return error_set(err, "%s: tensor '%s' is %s, %s expected", bf->st.files[0].path, name, dtype_name(t->dtype),
                         dtype_name(dtype));
    *out = malloc(t->nbytes ? t->nbytes : 1);
    if (*out == NULL) return error_set(err, "out of memory");
    memcpy(*out, t->data, t->nbytes);
    *info = t;
    return 0;
}

static int load_batch(BatchFile *bf, const char *path, Error *err) {
    memset(bf, 0, sizeof *bf);
    if (safetensors_open_file(&bf->st, path, err) != 0) return -1;
    const TensorInfo *ids, *labels, *mask, *pixels = NULL;
    if (read_tensor(bf, "input_ids", DTYPE_I32, 1, (void **)&bf->input_ids, &ids, err) != 0 ||
        read_tensor(bf, "labels", DTYPE_I32, 1, (void **)&bf->labels, &labels, err) != 0 ||
        read_tensor(bf, "attention_mask", DTYPE_I32, 1, (void **)&bf->mask, &mask, err) != 0 ||
        read_tensor(bf, "pixel_values", DTYPE_F32, 0, (void **)&bf->pixels, &pixels, err) != 0)
        return -1;
    if (ids->ndim != 2 || labels->numel != ids->numel || mask->numel != ids->numel)
        return error_set(err, "%s: input_ids, labels, attention_mask must all be [B, L]", path);
    bf->batch = (LlavaBatch){.batch_size = (int)ids->shape[0], .seq_len = (int)ids->shape[1],
                             .input_ids = bf->input_ids, .labels = bf->labels, .attention_mask = bf->mask,
                             .n_images = pixels ? (int)pixels->shape[0] : 0, .pixel_values = bf->pixels};
    return 0;
}

static void free_batch(BatchFile *bf) {
    free(bf->input_ids);
    free(bf->labels);
    free(bf->mask);
    free(bf->pixels);
    safetensors_close(&bf->st);
}

// CPU time of the whole process (all threads): less sensitive than wall time
// to other work on a shared machine.
static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Peak resident memory of this process image (VmHWM). getrusage's ru_maxrss
// would also count the parent's memory from before exec.
static long peak_rss_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL) return -1;
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld kB", &kib) == 1) break;
    fclose(f);
    return kib < 0 ? -1 : kib * 1024;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int write_results(LlavaModel *model, const BatchFile *bf, const char *out_path, double loss, Error *err) {
    const ModelConfig *c = llava_config(model);
    const LlavaBatch *b = &bf->batch;
    size_t n_logits = (size_t)b->batch_size * b->seq_len * c->text.vocab_size;
    float *logits = malloc(n_logits * sizeof(float));
    if (logits == NULL) return error_set(err, "out of memory");
    if (llava_logits(model, b, logits, err) != 0) {
        free(logits);
        return -1;
    }
    int n_params;
    const ParamRef *params = llava_params(model, &n_params);
    if (llava_device_pull(model, LLAVA_SYNC_GRADS, NULL, err) != 0) {
        free(logits);
        return -1;
    }
    TensorRef *refs = calloc((size_t)n_params + 2, sizeof(TensorRef));
    char **names = calloc((size_t)n_params + 1, sizeof(char *));
    refs[0] = (TensorRef){.name = "logits", .dtype = DTYPE_F32, .ndim = 3,
                          .shape = {b->batch_size, b->seq_len, c->text.vocab_size}, .data = logits};
    refs[1] = (TensorRef){.name = "loss", .dtype = DTYPE_F64, .ndim = 1, .shape = {1}, .data = &loss};
    for (int i = 0; i < n_params; i++) {
        size_t len = strlen(params[i].name) + 8;
        names[i] = malloc(len);
        snprintf(names[i], len, "grad:%s", params[i].name);
        refs[2 + i] = (TensorRef){.name = names[i], .dtype = DTYPE_F32, .ndim = params[i].ndim, .data = params[i].grad};
        for (int d = 0; d < params[i].ndim; d++) refs[2 + i].shape[d] = params[i].shape[d];
    }
    int rc = safetensors_write(out_path, refs, n_params + 2, NULL, err);
    for (int i = 0; i < n_params; i++) free(names[i]);
    free(names);
    free(refs);
    free(logits);
    return rc;
}

static int parse_int(const char *s, int *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0') return -1;
    *out = (int)v;
    return 0;
}

static int parse_double(const char *s, double *out) {
    char *end;
    *out = strtod(s, &end);
    return (*s == '\0' || *end != '\0') ? -1 : 0;
}

int command_model_step(int argc, char **argv) {
    const char *positional[3] = {NULL, NULL, NULL};
    int n_positional = 0, repeat = 1, list_params = 0, update = 0;
    const char *load_adapter = NULL, *save_full = NULL, *save_adapter = NULL;
    double grad_scale = 1.0;
    LlavaOptions o;
    llava_options_defaults(&o);
    o.gradient_checkpointing = 0;  // like for like with the PyTorch reference, which does not checkpoint
    int alpha_given = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0, iv = 0;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return EXIT_OK;
        } else if (strcmp(a, "--list-params") == 0) {
            list_params = 1;
            continue;
        } else if (strcmp(a, "--bf16") == 0) {
            o.bf16 = 1;
            continue;
        } else if (strcmp(a, "--update") == 0) {
            update = 1;
            continue;
        } else if (a[0] != '-') {
            if (n_positional == 3) {
                fprintf(stderr, "vlft _model-step: unexpected argument '%s'\n", a);
                return EXIT_USAGE;
            }
            positional[n_positional++] = a;
            continue;
        }
        if (v == NULL) {
            fprintf(stderr, "vlft _model-step: option '%s' needs a value\n", a);
            return EXIT_USAGE;
        }
        i++;
        if (strcmp(a, "--finetuning-type") == 0) {
            if (strcmp(v, "lora") == 0) o.finetuning_type = FINETUNE_LORA;
            else if (strcmp(v, "full") == 0) o.finetuning_type = FINETUNE_FULL;
            else if (strcmp(v, "freeze") == 0) o.finetuning_type = FINETUNE_FREEZE;
            else if (strcmp(v, "none") == 0) o.finetuning_type = FINETUNE_NONE;
            else bad = 1;
        } else if (strcmp(a, "--lora-rank") == 0) bad = parse_int(v, &o.lora_rank);
        else if (strcmp(a, "--lora-alpha") == 0) bad = parse_double(v, &o.lora_alpha), alpha_given = 1;
        else if (strcmp(a, "--lora-dropout") == 0) bad = parse_double(v, &o.lora_dropout);
        else if (strcmp(a, "--lora-target") == 0) snprintf(o.lora_target, sizeof o.lora_target, "%s", v);
        else if (strcmp(a, "--additional-target") == 0) snprintf(o.additional_target, sizeof o.additional_target, "%s", v);
        else if (strcmp(a, "--freeze-vision-tower") == 0) bad = parse_int(v, &o.freeze_vision_tower);
        else if (strcmp(a, "--freeze-projector") == 0) bad = parse_int(v, &o.freeze_multi_modal_projector);
        else if (strcmp(a, "--freeze-language-model") == 0) bad = parse_int(v, &o.freeze_language_model);
        else if (strcmp(a, "--freeze-trainable-layers") == 0) bad = parse_int(v, &o.freeze_trainable_layers);
        else if (strcmp(a, "--freeze-trainable-modules") == 0)
            snprintf(o.freeze_trainable_modules, sizeof o.freeze_trainable_modules, "%s", v);
        else if (strcmp(a, "--load-adapter") == 0) load_adapter = v;
        else if (strcmp(a, "--adapter-options") == 0) {
            Error e;
            if (llava_options_from_adapter_config(v, &o, &e) != 0) {
                fprintf(stderr, "vlft _model-step: %s\n", e.message);
                return EXIT_BAD_INPUT;
            }
            alpha_given = 1;
        }
        else if (strcmp(a, "--save-full") == 0) save_full = v;
        else if (strcmp(a, "--save-adapter") == 0) save_adapter = v;
        else if (strcmp(a, "--grad-scale") == 0) bad = parse_double(v, &grad_scale);
        else if (strcmp(a, "--gradient-checkpointing") == 0)
            bad = parse_int(v, &o.gradient_checkpointing) || (o.gradient_checkpointing != 0 && o.gradient_checkpointing != 1);
        else if (strcmp(a, "--seed") == 0) bad = parse_int(v, &iv), o.seed = (uint64_t)iv;
        else if (strcmp(a, "--threads") == 0) bad = parse_int(v, &o.threads);
        else if (strcmp(a, "--device") == 0) {
            bad = strcmp(v, "cpu") != 0 && strcmp(v, "cuda") != 0 && strcmp(v, "auto") != 0;
            snprintf(o.device, sizeof o.device, "%s", v);
        }
        else if (strcmp(a, "--repeat") == 0) bad = parse_int(v, &repeat) || repeat < 1;
        else {
            fprintf(stderr, "vlft _model-step: unknown option '%s'\n", a);
            return EXIT_USAGE;
        }
        if (bad) {
            fprintf(stderr, "vlft _model-step: bad value '%s' for %s\n", v, a);
            return EXIT_USAGE;
        }
    }
    if (!alpha_given) o.lora_alpha = 2.0 * o.lora_rank;
    if (n_positional < (list_params ? 1 : 2)) {
        usage(stderr);
        return EXIT_USAGE;
    }
    Error err;
    LlavaModel *model = NULL;
    double t0 = now_seconds();
    if (llava_load(positional[0], &o, &model, &err) != 0) {
        fprintf(stderr, "vlft _model-step: %s\n", err.message);
        return EXIT_BAD_INPUT;
    }
    double load_seconds = now_seconds() - t0;
    int n_params;
    const ParamRef *params = llava_params(model, &n_params);
    if (list_params) {
        for (int i = 0; i < n_params; i++) printf("%s\n", params[i].name);
        llava_free(model);
        return EXIT_OK;
    }
    if (load_adapter && llava_load_adapter(model, load_adapter, &err) != 0) {
        fprintf(stderr, "vlft _model-step: %s\n", err.message);
        llava_free(model);
        return EXIT_BAD_INPUT;
    }
    BatchFile bf;
    if (load_batch(&bf, positional[1], &err) != 0) {
        fprintf(stderr, "vlft _model-step: %s\n", err.message);
        free_batch(&bf);
        llava_free(model);
        return EXIT_BAD_INPUT;
    }
    int rc = EXIT_OK;
    double loss = 0, step_seconds = 0, step_min = 0, cpu_min = 0;
    for (int r = 0; r < repeat && rc == EXIT_OK; r++) {
        llava_zero_grad(model);
        double s0 = now_seconds(), c0 = cpu_seconds();
        int fail = n_params ? llava_forward_backward(model, &bf.batch, (float)grad_scale, &loss, &err)
                            : llava_forward_loss(model, &bf.batch, &loss, NULL, &err);
        if (!fail && update && n_params) {
            AdamWScalars sc = adamw_scalars(0.9, 0.999, 1e-8, 0.0, r + 1, 1e-5);
            double norm;
            fail = llava_device_optimizer_step(model, &sc, 1.0, &norm, &err);
        }
        double seconds = now_seconds() - s0, cpu = cpu_seconds() - c0;
        if (r == 0 || cpu < cpu_min) cpu_min = cpu;
        step_seconds += seconds;
        if (r == 0 || seconds < step_min) step_min = seconds;
        if (fail) rc = EXIT_BAD_INPUT;
    }
    LlavaMemoryStats ms;
    llava_memory_stats(model, &ms);
    size_t gpu_weights = 0, gpu_peak = 0;
    llava_device_memory(model, &gpu_weights, &gpu_peak);
    if (rc == EXIT_OK) {
        printf("{\"loss\": %.9g, \"step_seconds\": %.6f, \"step_seconds_min\": %.6f, \"step_cpu_seconds_min\": %.6f, \"load_seconds\": %.3f, \"repeat\": %d, "
               "\"gradient_checkpointing\": %d, \"activations_peak\": %zu, \"activations_kept_vision\": %zu, "
               "\"activations_kept_total\": %zu, \"activations_arena\": %zu, \"activations_arena_grows\": %d, "
               "\"weights_owned\": %zu, \"weights_mapped\": %zu, \"grads\": %zu, \"max_rss\": %ld, \"compute\": \"%s\", "
               "\"device\": \"%s\", \"gpu_weights_bytes\": %zu, \"gpu_peak_bytes\": %zu, \"update\": %d}\n",
               loss, step_seconds / repeat, step_min, cpu_min, load_seconds, repeat, o.gradient_checkpointing,
               ms.activations_peak, ms.activations_kept_vision, ms.activations_kept_total, ms.activations_arena,
               ms.activations_arena_grows, ms.weights_owned, ms.weights_mapped, ms.grads, peak_rss_bytes(),
               llava_on_device(model) ? "bf16-cuda"
               : o.bf16               ? (gemm_bf16_impl() == BF16_GEMM_ONEDNN ? "bf16-onednn" : "bf16-fallback")
                                      : "fp32",
               llava_device_name(model), gpu_weights, gpu_peak, update);
    }
    if (rc == EXIT_OK && positional[2] && write_results(model, &bf, positional[2], loss, &err) != 0) rc = EXIT_BAD_INPUT;
    if (rc == EXIT_OK && (save_full || save_adapter) && llava_device_pull(model, LLAVA_SYNC_VALUES, NULL, &err) != 0)
        rc = EXIT_BAD_INPUT;
    if (rc == EXIT_OK && save_full && llava_save_full(model, save_full, 0, &err) != 0) rc = EXIT_BAD_INPUT;
    if (rc == EXIT_OK && save_adapter && llava_save_adapter(model, save_adapter, positional[0], &err) != 0)
        rc = EXIT_BAD_INPUT;
    if (rc != EXIT_OK) fprintf(stderr, "vlft _model-step: %s\n", err.message);
    free_batch(&bf);
    llava_free(model);
    return rc;
}
