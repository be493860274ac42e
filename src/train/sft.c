#include "sft.h"

#include <stdlib.h>
#include <string.h>

#include "../base/fs.h"
#include "../kernels/kernels.h"

// transformers' save_pretrained default max_shard_size ("5GB").
#define FULL_SHARD_BYTES 5000000000ull

int sft_open(SftSession *s, const Recipe *r, FILE *log, Error *err) {
    memset(s, 0, sizeof *s);
    s->recipe = r;
    s->is_lora = strcmp(r->finetuning_type, "lora") == 0;
    const char *dir = r->model_name_or_path;
    if (!dir_exists(dir)) return error_set(err, "model_name_or_path: %s is not a folder", dir);
    if (model_config_load(&s->config, dir, err) != 0) return -1;
    if (!s->config.has_vision) return error_set(err, "%s: model_type '%s' has no vision tower (vlft trains llava models)", dir, s->config.model_type);
    if (tokenizer_load(&s->tokenizer, dir, r->use_fast_tokenizer, err) != 0) return -1;
    DatasetOptions data;
    dataset_options_from_recipe(&data, r, &s->config);
    if (dataset_load(&s->dataset, &data, s->tokenizer, log, err) != 0) {
        sft_close(s);
        return -1;
    }
    if (s->dataset.train.n_samples == 0) {
        sft_close(s);
        return error_set(err, "dataset '%s': no training samples left", r->dataset);
    }
    // LLaMA-Factory would resize the embeddings for a grown tokenizer; vlft
    // refuses rather than train rows that do not exist.
    int vocab = tokenizer_vocab_size(s->tokenizer);
    if (vocab > s->config.text.vocab_size) {
        sft_close(s);
        return error_set(err, "%s: the tokenizer has %d tokens (with the template's special tokens) but the model's "
                              "embedding has %d rows; resizing embeddings is not supported", dir, vocab,
                         s->config.text.vocab_size);
    }
    s->pad_id = tokenizer_pad_id(s->tokenizer);
    if (clip_config_load(dir, &s->clip, err) != 0) {
        sft_close(s);
        return -1;
    }
    if (!s->clip.do_center_crop || s->clip.crop_height != s->config.vision.image_size ||
        s->clip.crop_width != s->config.vision.image_size) {
        sft_close(s);
        return error_set(err, "%s: preprocessor_config.json must center-crop to the vision tower's %d x %d", dir,
                         s->config.vision.image_size, s->config.vision.image_size);
    }
    image_bounds_defaults(&s->bounds);
    s->bounds.max_pixels = r->image_max_pixels;
    s->bounds.min_pixels = r->image_min_pixels;
    LlavaOptions options;
    if (llava_options_from_recipe(r, &options, err) != 0 || llava_load(dir, &options, &s->model, err) != 0) {
        sft_close(s);
        return -1;
    }
    if (log) {
        int n_params;
        const ParamRef *params = llava_params(s->model, &n_params);
        size_t trainable = 0;
        for (int i = 0; i < n_params; i++) trainable += params[i].numel;
        fprintf(log, "model: %s, %s, %zu trainable parameters in %d tensors, %s products%s%s\n", dir,
                r->finetuning_type, trainable, n_params, r->bf16 ? "bf16" : "fp32", r->bf16 ? " via " : "",
                r->bf16 ? gemm_bf16_impl_name(gemm_bf16_impl()) : "");
        fprintf(log, "data: %d training and %d evaluation samples (template %s, cutoff_len %d)\n",
                s->dataset.train.n_samples, s->dataset.eval.n_samples, r->template_name, r->cutoff_len);
    }
    return 0;
}

static void stop_prefetch(SftSession *s) {
    if (s->prefetcher) prefetch_stop(s->prefetcher);
    s->prefetcher = NULL;
    free(s->planned_ids);
    free(s->planned_sizes);
    free(s->planned_offsets);
    free(s->job_paths);
    s->planned_ids = s->planned_sizes = s->planned_offsets = NULL;
    s->job_paths = NULL;
    s->n_planned = s->next_planned = 0;
}

void sft_close(SftSession *s) {
    stop_prefetch(s);
    if (s->model) llava_free(s->model);
    dataset_free(&s->dataset);
    if (s->tokenizer) tokenizer_free(s->tokenizer);
    free(s->input_ids);
    free(s->labels);
    free(s->attention_mask);
    free(s->pixels);
    memset(s, 0, sizeof *s);
}

static const Sample *sample_of(const SftSession *s, int id, int eval) {
    return eval ? &s->dataset.eval.samples[id] : &s->dataset.train.samples[id];
}

static int grow_batch(SftSession *s, size_t tokens, size_t pixels, Error *err) {
    if (tokens > s->batch_capacity) {
        free(s->input_ids);
        free(s->labels);
        free(s->attention_mask);
        s->input_ids = malloc(tokens * sizeof(int32_t));
        s->labels = malloc(tokens * sizeof(int32_t));
        s->attention_mask = malloc(tokens * sizeof(int32_t));
        s->batch_capacity = tokens;
        if (!s->input_ids || !s->labels || !s->attention_mask) {
            s->batch_capacity = 0;
            return error_set(err, "out of memory for a batch of %zu tokens", tokens);
        }
    }
    if (pixels > s->pixel_capacity) {
        free(s->pixels);
        s->pixels = malloc(pixels * sizeof(float));
        s->pixel_capacity = s->pixels ? pixels : 0;
        if (s->pixels == NULL) return error_set(err, "out of memory for %zu pixel values", pixels);
    }
    return 0;
}

static int plan_epoch(void *ctx, const int *ids, const int *sizes, int n_batches, Error *err) {
    SftSession *s = ctx;
    stop_prefetch(s);
    int total = 0, n_paths = 0;
    for (int b = 0; b < n_batches; b++) total += sizes[b];
    for (int i = 0; i < total; i++) n_paths += sample_of(s, ids[i], 0)->n_images;
    s->planned_ids = malloc(sizeof(int) * (size_t)(total + 1));
    s->planned_sizes = malloc(sizeof(int) * (size_t)(n_batches + 1));
    s->planned_offsets = malloc(sizeof(int) * (size_t)(n_batches + 1));
    s->job_paths = malloc(sizeof(char *) * (size_t)(n_paths + 1));
    PrefetchJob *jobs = malloc(sizeof(PrefetchJob) * (size_t)(n_batches + 1));
    if (!s->planned_ids || !s->planned_sizes || !s->planned_offsets || !s->job_paths || !jobs) {
        free(jobs);
        stop_prefetch(s);
        return error_set(err, "out of memory planning image prefetch");
    }
    memcpy(s->planned_ids, ids, sizeof(int) * (size_t)total);
    memcpy(s->planned_sizes, sizes, sizeof(int) * (size_t)n_batches);
    int offset = 0, path = 0;
    for (int b = 0; b < n_batches; b++) {
        s->planned_offsets[b] = offset;
        jobs[b].paths = (const char *const *)&s->job_paths[path];
        jobs[b].count = 0;
        for (int i = 0; i < sizes[b]; i++) {
            const Sample *sample = sample_of(s, ids[offset + i], 0);
            for (int k = 0; k < sample->n_images; k++) s->job_paths[path++] = sample->image_paths[k];
            jobs[b].count += sample->n_images;
        }
        offset += sizes[b];
    }
    s->n_planned = n_batches;
    s->next_planned = 0;
    // One worker is enough to stay ahead; the cores belong to the model.
    s->prefetcher = prefetch_start(&s->clip, &s->bounds, jobs, n_batches, 1, 4, err);
    free(jobs);
    if (s->prefetcher == NULL) {
        stop_prefetch(s);
        return -1;
    }
    return 0;
}

// Copies n preprocessed images into the pixel buffer at image index first.
static int place_images(SftSession *s, const ClipTensor *tensors, int n, int first, Error *err) {
    int size = s->config.vision.image_size;
    size_t per_image = (size_t)3 * size * size;
    for (int k = 0; k < n; k++) {
        if (tensors[k].height != size || tensors[k].width != size)
            return error_set(err, "an image preprocessed to %d x %d, the vision tower needs %d x %d", tensors[k].height,
                             tensors[k].width, size, size);
        memcpy(s->pixels + (size_t)(first + k) * per_image, tensors[k].data, per_image * sizeof(float));
    }
    return 0;
}

// Builds the right-padded batch of these samples with their images.
static int build_batch(SftSession *s, const int *ids, int n, int eval, LlavaBatch *batch, Error *err) {
    int length = 1, n_images = 0;
    for (int i = 0; i < n; i++) {
        const Sample *sample = sample_of(s, ids[i], eval);
        if (sample->length > length) length = sample->length;
        n_images += sample->n_images;
    }
    int size = s->config.vision.image_size;
    if (grow_batch(s, (size_t)n * length, (size_t)n_images * 3 * size * size, err) != 0) return -1;
    for (int i = 0; i < n; i++) {
        const Sample *sample = sample_of(s, ids[i], eval);
        for (int j = 0; j < length; j++) {
            int real = j < sample->length;
            s->input_ids[i * length + j] = real ? sample->input_ids[j] : s->pad_id;
            s->labels[i * length + j] = real ? sample->labels[j] : IGNORE_INDEX;
            s->attention_mask[i * length + j] = real;
        }
    }
    // Images: from the prefetcher when this is the micro-batch it was told
    // comes next, else decoded here.
    int from_prefetch = 0;
    if (!eval && s->prefetcher && s->next_planned < s->n_planned && s->planned_sizes[s->next_planned] == n &&
        memcmp(&s->planned_ids[s->planned_offsets[s->next_planned]], ids, sizeof(int) * (size_t)n) == 0) {
        PrefetchResult result;
        int rc = prefetch_next(s->prefetcher, &result, err);
        s->next_planned++;
        if (rc != 0) return rc == 1 ? error_set(err, "image prefetch ended early") : -1;
        rc = place_images(s, result.tensors, result.count, 0, err);
        prefetch_result_free(&result);
        if (rc != 0) return -1;
        from_prefetch = 1;
    }
    if (!from_prefetch) {
        int placed = 0;
        for (int i = 0; i < n; i++) {
            const Sample *sample = sample_of(s, ids[i], eval);
            for (int k = 0; k < sample->n_images; k++) {
                ClipTensor tensor;
                if (clip_preprocess_file(&s->clip, &s->bounds, sample->image_paths[k], &tensor, err) != 0) return -1;
                int rc = place_images(s, &tensor, 1, placed++, err);
                clip_tensor_free(&tensor);
                if (rc != 0) return -1;
            }
        }
    }
    *batch = (LlavaBatch){.batch_size = n, .seq_len = length, .input_ids = s->input_ids, .labels = s->labels,
                          .attention_mask = s->attention_mask, .n_images = n_images, .pixel_values = s->pixels};
    return 0;
}

static int forward_backward(void *ctx, const int *ids, int n, float grad_scale, double *loss, Error *err) {
    SftSession *s = ctx;
    LlavaBatch batch;
    if (build_batch(s, ids, n, 0, &batch, err) != 0) return -1;
    return llava_forward_backward(s->model, &batch, grad_scale, loss, err);
}

static int eval_loss(void *ctx, const int *ids, int n, double *loss, Error *err) {
    SftSession *s = ctx;
    LlavaBatch batch;
    if (build_batch(s, ids, n, 1, &batch, err) != 0) return -1;
    int tokens;
    return llava_forward_loss(s->model, &batch, loss, &tokens, err);
}

static void zero_grad(void *ctx) { llava_zero_grad(((SftSession *)ctx)->model); }

static void set_layer_hooks(void *ctx, const LayerHooks *hooks) {
    llava_set_layer_hooks(((SftSession *)ctx)->model, hooks);
}

static int device_update(void *ctx, const AdamWScalars *scalars, double max_norm, double *grad_norm, Error *err) {
    return llava_device_optimizer_step(((SftSession *)ctx)->model, scalars, max_norm, grad_norm, err);
}

static int device_sync(void *ctx, int to_host, AdamW *opt, Error *err) {
    LlavaModel *m = ((SftSession *)ctx)->model;
    int what = LLAVA_SYNC_VALUES | (opt && opt->exp_avg ? LLAVA_SYNC_MOMENTS : 0);
    return to_host ? llava_device_pull(m, what, opt, err) : llava_device_push(m, what, opt, err);
}

static int save_weights(void *ctx, const char *dir, Error *err) {
    SftSession *s = ctx;
    // (on a GPU the host values are brought up to date first)
    if (llava_device_pull(s->model, LLAVA_SYNC_VALUES, NULL, err) != 0) return -1;
    if (s->is_lora) return llava_save_adapter(s->model, dir, s->recipe->model_name_or_path, err);
    return llava_save_full(s->model, dir, FULL_SHARD_BYTES, err);
}

TrainModel sft_train_model(SftSession *s) {
    int n_params;
    const ParamRef *params = llava_params(s->model, &n_params);
    return (TrainModel){
        .ctx = s,
        .params = (ParamRef *)params,
        .n_params = n_params,
        .rng = llava_dropout_rng(s->model),
        .forward_backward = forward_backward,
        .eval_loss = eval_loss,
        .zero_grad = zero_grad,
        .save_weights = save_weights,
        .load_weights = NULL,
        .plan_epoch = plan_epoch,
        .layers = llava_layer_table(s->model),
        .set_layer_hooks = set_layer_hooks,
        .storage = llava_param_storage(s->model),
        .device_update = llava_on_device(s->model) ? device_update : NULL,
        .device_sync = llava_on_device(s->model) ? device_sync : NULL,
    };
}
