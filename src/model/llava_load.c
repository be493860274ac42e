// Loading a LLaVA folder: config, mmap'd weights checked against the layout,
// the trainable selection, and the fp32 buffers compute reads.
//
// A frozen F32 tensor is read in place from the mapping (no copy); a frozen
// BF16/F16 one is converted once to fp32; a trainable one gets an fp32
// master copy and a gradient buffer.
//
// bf16 mode (options.bf16, the recipe's `bf16: true`), as torch autocast
// runs a model: the products of the GEMM weights (every Linear weight,
// embed_tokens, lm_head, the patch embedding) take bf16 inputs and
// accumulate in fp32 (kernels.h, gemm_bf16). Such a weight, when frozen, is
// stored only as bf16: read in place from the mapping when the checkpoint
// holds it as BF16, else converted once to an owned bf16 copy; it has no
// fp32 copy at all, which is what lets a 6B model's 13 GB of bf16 weights fit.
// A trainable one keeps its fp32 master (what the optimizer updates) and is
// rounded to bf16 as each product reads it, rather than through a bf16 copy
// refreshed after every update: the master is also written by checkpoint
// resume, adapter loading and ZeRO gathers, and rounding on the fly cannot
// go stale after any of them, costs no memory, and costs one pass over the
// weight per product (a product does N such passes of arithmetic). LoRA A/B
// stay fp32 and their rank-r products run in fp32. Everything else stays
// fp32: norm weights, biases, position and class embeddings, activations
// between products, RMSNorm/LayerNorm, softmax and attention, the loss,
// gradients and Adam moments.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "llava_internal.h"
#ifdef VLFT_CUDA
#include "../kernels/cuda/cuda.h"
#endif

static Weight *find_weight(LlavaModel *m, const char *fmt, int index) {
    char name[200];
    snprintf(name, sizeof name, fmt, index);
    for (int i = 0; i < m->n_weights; i++)
        if (strcmp(m->weights[i].entry->name, name) == 0) return &m->weights[i];
    return NULL;
}

static LoraAdapter *find_lora(LlavaModel *m, const char *module) {
    for (int i = 0; i < m->n_loras; i++)
        if (strcmp(m->loras[i].module, module) == 0) return &m->loras[i];
    return NULL;
}

// Wires a Linear from "<module>.weight" / "<module>.bias".
static int bind_linear(LlavaModel *m, Linear *l, const char *module_fmt, int index, Error *err) {
    char module[200], name[220];
    snprintf(module, sizeof module, module_fmt, index);
    snprintf(name, sizeof name, "%s.weight", module);
    l->w = NULL;
    for (int i = 0; i < m->n_weights; i++) {
        if (strcmp(m->weights[i].entry->name, name) == 0) l->w = &m->weights[i];
    }
    if (l->w == NULL) return error_set(err, "%s: model has no tensor '%s'", m->model_dir, name);
    snprintf(name, sizeof name, "%s.bias", module);
    l->b = NULL;
    for (int i = 0; i < m->n_weights; i++)
        if (strcmp(m->weights[i].entry->name, name) == 0) l->b = &m->weights[i];
    l->out = (int)l->w->entry->shape[0];
    l->in = (int)l->w->entry->shape[1];
    l->lora = find_lora(m, module);
    if (l->lora && l->lora->unused) l->lora = NULL;  // never runs
    return 0;
}

// The weights products read in bf16 mode: 2-D ones (Linear weights,
// embed_tokens, lm_head) except the position table, which is only added,
// and the patch embedding (a Conv2d weight, a Linear over patches).
static int is_gemm_weight(const LayoutEntry *e) {
    if (strstr(e->name, "patch_embedding.weight")) return 1;
    return e->ndim == 2 && strstr(e->name, "position_embedding") == NULL;
}

// The mapped pages wholly inside [p, p + n) leave this process's resident
// memory (they are clean file pages: touched again, they are read again).
// After a conversion the source is not needed, and would otherwise count in
// the process's peak RSS next to its copy.
static void release_mapped_pages(const void *p, size_t n) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t begin = ((uintptr_t)p + page - 1) / page * page, end = ((uintptr_t)p + n) / page * page;
    if (end > begin) madvise((void *)begin, end - begin, MADV_DONTNEED);
}

// bf16 mode, frozen GEMM weight: bf16 only (see the top of the file).
static int materialize_bf16(LlavaModel *m, Weight *w, Error *err) {
    if (safetensors_is_zero_copy(w->source, DTYPE_BF16)) {
        w->bf16 = w->source->data;
        m->stats.weights_mapped += w->numel * sizeof(uint16_t);
        return 0;
    }
    if (w->source->dtype != DTYPE_F32 && w->source->dtype != DTYPE_F16 && w->source->dtype != DTYPE_BF16 &&
        w->source->dtype != DTYPE_F64)
        return error_set(err, "%s: tensor '%s' is %s, not a floating type", m->model_dir, w->entry->name,
                         dtype_name(w->source->dtype));
    w->owned_bf16 = kernel_alloc_bf16(w->numel);
    if (w->owned_bf16 == NULL) return error_set(err, "%s: out of memory for '%s'", m->model_dir, w->entry->name);
    // Through fp32 in chunks (the mapped data may be unaligned): F32 and F16
    // values convert exactly to fp32, then round once to bf16.
    enum { CHUNK = 1 << 16 };
    size_t element = dtype_size(w->source->dtype);
    double *raw = malloc(CHUNK * sizeof(double));  // aligned for any element type
    float *values = malloc(CHUNK * sizeof(float));
    const unsigned char *src = w->source->data;
    for (size_t i = 0; raw && values && i < w->numel; i += CHUNK) {
        size_t n = w->numel - i < CHUNK ? w->numel - i : CHUNK;
        memcpy(raw, src + i * element, n * element);
        dtype_convert(values, DTYPE_F32, raw, w->source->dtype, n);
        bf16_from_f32(w->owned_bf16 + i, values, n);
    }
    int converted = raw && values;
    free(raw);
    free(values);
    if (!converted) return error_set(err, "%s: out of memory converting '%s'", m->model_dir, w->entry->name);
    release_mapped_pages(w->source->data, w->source->nbytes);
    w->bf16 = w->owned_bf16;
    m->stats.weights_owned += w->numel * sizeof(uint16_t);
    return 0;
}

static int materialize(LlavaModel *m, Weight *w, Error *err) {
    w->numel = w->source->numel;
    w->compute_bf16 = m->options.bf16 && is_gemm_weight(w->entry);
    if (w->compute_bf16 && !w->trainable) return materialize_bf16(m, w, err);
    if (!w->trainable && safetensors_is_zero_copy(w->source, DTYPE_F32)) {
        w->data = w->source->data;
        m->stats.weights_mapped += w->numel * sizeof(float);
        return 0;
    }
    w->owned = kernel_alloc(w->numel);
    if (w->owned == NULL) return error_set(err, "%s: out of memory for '%s'", m->model_dir, w->entry->name);
    if (safetensors_read_f32(&m->weights_file, w->source, w->owned, err) != 0) return -1;
    w->data = w->owned;
    m->stats.weights_owned += w->numel * sizeof(float);
    if (w->trainable) {
        w->grad = kernel_alloc(w->numel);
        if (w->grad == NULL) return error_set(err, "%s: out of memory for the gradient of '%s'", m->model_dir, w->entry->name);
        m->stats.grads += w->numel * sizeof(float);
    }
    return 0;
}

static int add_param(LlavaModel *m, const char *name, float *value, float *grad, size_t numel, int ndim,
                     const int64_t *shape, int decay) {
    ParamRef *p = &m->params[m->n_params];
    m->param_names[m->n_params] = strdup(name);
    if (m->param_names[m->n_params] == NULL) return -1;
    p->name = m->param_names[m->n_params];
    p->value = value;
    p->grad = grad;
    p->numel = numel;
    p->ndim = ndim;
    for (int d = 0; d < ndim && d < 4; d++) p->shape[d] = shape[d];
    p->decay = decay;
    m->n_params++;
    return 0;
}

static int build_params(LlavaModel *m, Error *err) {
    int capacity = 2 * m->n_loras + m->n_weights;
    m->params = calloc((size_t)capacity + 1, sizeof(ParamRef));
    m->param_names = calloc((size_t)capacity + 1, sizeof(char *));
    if (!m->params || !m->param_names) return error_set(err, "out of memory");
    for (int i = 0; i < m->n_loras; i++) {
        LoraAdapter *a = &m->loras[i];
        if (a->unused) continue;
        int64_t sa[2] = {a->rank, a->in}, sb[2] = {a->out, a->rank};
        if (add_param(m, a->name_A, a->A, a->dA, (size_t)a->rank * a->in, 2, sa, 1) != 0 ||
            add_param(m, a->name_B, a->B, a->dB, (size_t)a->out * a->rank, 2, sb, 1) != 0)
            return error_set(err, "out of memory");
        m->stats.grads += 2 * sizeof(float) * ((size_t)a->rank * a->in + (size_t)a->out * a->rank);
    }
    for (int i = 0; i < m->n_weights; i++) {
        Weight *w = &m->weights[i];
        if (!w->trainable) continue;
        char name[256];
        // LoRA runs save extra trained modules under PEFT's prefix; full runs
        // keep the checkpoint's own names.
        if (m->options.finetuning_type == FINETUNE_LORA) snprintf(name, sizeof name, "base_model.model.%s", w->entry->name);
        else snprintf(name, sizeof name, "%s", w->source->name);
        // transformers' Trainer: no weight decay for biases and norm weights.
        int decay = w->entry->init != INIT_ONE && strstr(w->entry->name, "bias") == NULL;
        if (add_param(m, name, w->owned, w->grad, w->numel, w->entry->ndim, w->entry->shape, decay) != 0)
            return error_set(err, "out of memory");
    }
    return 0;
}

static int wire(LlavaModel *m, Error *err) {
    const ModelConfig *c = &m->config;
    const char *lm = c->has_vision ? "language_model." : "";
    char fmt[200];
    if (c->has_vision) {
        m->class_embedding = find_weight(m, "vision_tower.vision_model.embeddings.class_embedding", 0);
        m->patch_embedding = find_weight(m, "vision_tower.vision_model.embeddings.patch_embedding.weight", 0);
        m->position_embedding = find_weight(m, "vision_tower.vision_model.embeddings.position_embedding.weight", 0);
        m->pre_ln_w = find_weight(m, "vision_tower.vision_model.pre_layrnorm.weight", 0);
        m->pre_ln_b = find_weight(m, "vision_tower.vision_model.pre_layrnorm.bias", 0);
        m->vision_layers_run = model_config_vision_layers_needed(c);
        if (m->vision_layers_run < 0 || m->vision_layers_run > c->vision.num_hidden_layers)
            return error_set(err, "%s/config.json: vision_feature_layer %d is out of range for %d layers", m->model_dir,
                             c->vision_feature_layer, c->vision.num_hidden_layers);
        m->vision_layers = calloc((size_t)c->vision.num_hidden_layers + 1, sizeof(VisionLayer));
        if (!m->vision_layers) return error_set(err, "out of memory");
        for (int i = 0; i < c->vision.num_hidden_layers; i++) {
            VisionLayer *v = &m->vision_layers[i];
            const char *base = "vision_tower.vision_model.encoder.layers.%d.";
            const char *parts[6] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                                    "mlp.fc1", "mlp.fc2"};
            Linear *ls[6] = {&v->q, &v->k, &v->v, &v->o, &v->fc1, &v->fc2};
            for (int j = 0; j < 6; j++) {
                snprintf(fmt, sizeof fmt, "%s%s", base, parts[j]);
                if (bind_linear(m, ls[j], fmt, i, err) != 0) return -1;
            }
            v->ln1_w = find_weight(m, "vision_tower.vision_model.encoder.layers.%d.layer_norm1.weight", i);
            v->ln1_b = find_weight(m, "vision_tower.vision_model.encoder.layers.%d.layer_norm1.bias", i);
            v->ln2_w = find_weight(m, "vision_tower.vision_model.encoder.layers.%d.layer_norm2.weight", i);
            v->ln2_b = find_weight(m, "vision_tower.vision_model.encoder.layers.%d.layer_norm2.bias", i);
        }
        if (bind_linear(m, &m->proj1, "multi_modal_projector.linear_1", 0, err) != 0) return -1;
        if (m->projector == PROJECTOR_YIVL) {
            if (bind_linear(m, &m->proj3, "multi_modal_projector.linear_3", 0, err) != 0) return -1;
            m->proj_ln2_w = find_weight(m, "multi_modal_projector.linear_2.weight", 0);
            m->proj_ln2_b = find_weight(m, "multi_modal_projector.linear_2.bias", 0);
            m->proj_ln4_w = find_weight(m, "multi_modal_projector.linear_4.weight", 0);
            m->proj_ln4_b = find_weight(m, "multi_modal_projector.linear_4.bias", 0);
        } else if (bind_linear(m, &m->proj3, "multi_modal_projector.linear_2", 0, err) != 0)
            return -1;
        if (activation_from_name(c->vision.hidden_act, &m->vision_act) != 0)
            return error_set(err, "%s/config.json: vision hidden_act '%s' is not supported", m->model_dir, c->vision.hidden_act);
        if (activation_from_name(c->projector_hidden_act, &m->projector_act) != 0)
            return error_set(err, "%s/config.json: projector_hidden_act '%s' is not supported", m->model_dir,
                             c->projector_hidden_act);
    }
    snprintf(fmt, sizeof fmt, "%smodel.embed_tokens.weight", lm);
    m->embed_tokens = find_weight(m, fmt, 0);
    snprintf(fmt, sizeof fmt, "%smodel.norm.weight", lm);
    m->final_norm = find_weight(m, fmt, 0);
    if (c->text.tie_word_embeddings) {
        m->lm_head = (Linear){.w = m->embed_tokens, .b = NULL, .lora = NULL, .in = c->text.hidden_size,
                              .out = c->text.vocab_size};
    } else {
        snprintf(fmt, sizeof fmt, "%slm_head", lm);
        if (bind_linear(m, &m->lm_head, fmt, 0, err) != 0) return -1;
    }
    m->text_layers = calloc((size_t)c->text.num_hidden_layers + 1, sizeof(TextLayer));
    if (!m->text_layers) return error_set(err, "out of memory");
    for (int i = 0; i < c->text.num_hidden_layers; i++) {
        TextLayer *t = &m->text_layers[i];
        const char *parts[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
        Linear *ls[7] = {&t->q, &t->k, &t->v, &t->o, &t->gate, &t->up, &t->down};
        for (int j = 0; j < 7; j++) {
            snprintf(fmt, sizeof fmt, "%smodel.layers.%%d.%s", lm, parts[j]);
            if (bind_linear(m, ls[j], fmt, i, err) != 0) return -1;
        }
        snprintf(fmt, sizeof fmt, "%smodel.layers.%%d.input_layernorm.weight", lm);
        t->norm1 = find_weight(m, fmt, i);
        snprintf(fmt, sizeof fmt, "%smodel.layers.%%d.post_attention_layernorm.weight", lm);
        t->norm2 = find_weight(m, fmt, i);
    }
    if (strcmp(c->text.hidden_act, "silu") != 0)
        return error_set(err, "%s/config.json: text hidden_act '%s' is not supported (silu expected)", m->model_dir,
                         c->text.hidden_act);
    // Which parts need a backward pass at all.
    for (int i = 0; i < m->n_weights; i++) {
        const Weight *w = &m->weights[i];
        if (!w->trainable) continue;
        if (w->entry->group == PARAM_VISION) m->vision_trainable = 1;
        if (w->entry->group == PARAM_PROJECTOR) m->projector_trainable = 1;
    }
    for (int i = 0; i < m->n_loras; i++) {
        if (strncmp(m->loras[i].module, "vision_tower", 12) == 0) m->vision_trainable = 1;
        if (strncmp(m->loras[i].module, "multi_modal_projector", 21) == 0) m->projector_trainable = 1;
    }
    m->embed_trainable = m->embed_tokens->trainable;
    return 0;
}

// What the GPU path does not run yet (NULL when it runs this model).
static const char *cuda_unsupported(const LlavaModel *m) {
    if (m->vision_trainable) return "a trainable vision tower";
    if (m->options.finetuning_type == FINETUNE_LORA && m->options.lora_dropout > 0) return "lora_dropout > 0";
    return NULL;
}

// options.device -> *on_cuda. "cuda" that cannot run is an error naming
// why; "auto" picks cuda only when it can.
static int choose_device(LlavaModel *m, int *on_cuda, Error *err) {
    const char *device = m->options.device[0] ? m->options.device : "cpu";
    *on_cuda = 0;
    if (strcmp(device, "cpu") == 0) return 0;
    if (strcmp(device, "cuda") != 0 && strcmp(device, "auto") != 0)
        return error_set(err, "device '%s' is not one of auto, cpu, cuda", device);
    int explicit_cuda = strcmp(device, "cuda") == 0;
#ifdef VLFT_CUDA
    const char *why = cuda_unsupported(m);
    if (why) {
        if (explicit_cuda) return error_set(err, "device cuda: %s is not supported on the GPU yet (use device: cpu)", why);
        return 0;
    }
    if (!explicit_cuda && !cuda_available()) return 0;
    *on_cuda = 1;
    return 0;
#else
    (void)cuda_unsupported;
    if (explicit_cuda) return error_set(err, "device cuda: this vlft was built without CUDA (build it with `make CUDA=1`)");
    return 0;
#endif
}

int llava_load(const char *model_dir, const LlavaOptions *options, LlavaModel **out, Error *err) {
    *out = NULL;
    LlavaModel *m = calloc(1, sizeof *m);
    if (m == NULL) return error_set(err, "out of memory");
    m->options = *options;
    snprintf(m->model_dir, sizeof m->model_dir, "%s", model_dir);
    kernel_init(options->threads);
    if (model_config_load(&m->config, model_dir, err) != 0) goto fail;
    if (safetensors_open_dir(&m->weights_file, model_dir, NULL, err) != 0) goto fail;
    m->projector = m->config.has_vision ? layout_detect_projector(&m->weights_file) : PROJECTOR_NONE;
    if (m->config.has_vision && m->projector == PROJECTOR_NONE) {
        error_set(err, "%s: no multi_modal_projector weights found", model_dir);
        goto fail;
    }
    if (m->config.has_vision && m->config.text.head_dim * m->config.text.num_attention_heads <= 0) {
        error_set(err, "%s/config.json: bad attention shape", model_dir);
        goto fail;
    }
    if (m->config.text.num_key_value_heads <= 0 ||
        m->config.text.num_attention_heads % m->config.text.num_key_value_heads != 0) {
        error_set(err, "%s/config.json: num_attention_heads must be a multiple of num_key_value_heads", model_dir);
        goto fail;
    }
    if (layout_build(&m->layout, &m->config, m->projector, err) != 0) goto fail;
    if (layout_check(&m->layout, &m->weights_file, err) != 0) goto fail;
    m->n_weights = m->layout.count;
    m->weights = calloc((size_t)m->n_weights, sizeof(Weight));
    if (m->weights == NULL) {
        error_set(err, "out of memory");
        goto fail;
    }
    for (int i = 0; i < m->n_weights; i++) {
        m->weights[i].entry = &m->layout.entries[i];
        m->weights[i].source = layout_lookup(&m->weights_file, m->layout.entries[i].name);
    }
    if (options->finetuning_type == FINETUNE_LORA && options->lora_rank <= 0) {
        error_set(err, "lora_rank must be positive (got %d)", options->lora_rank);
        goto fail;
    }
    if (llava_select_trainable(m, err) != 0) goto fail;
    int on_cuda = 0;
    if (choose_device(m, &on_cuda, err) != 0) goto fail;
    if (on_cuda) m->options.bf16 = 1;  // the GPU's products are bf16: no fp32 copies of frozen weights
    for (int i = 0; i < m->n_weights; i++)
        if (materialize(m, &m->weights[i], err) != 0) goto fail;
    if (wire(m, err) != 0 || build_params(m, err) != 0 || llava_layers_build(m, err) != 0) goto fail;
    rng_seed(&m->dropout_rng, options->seed ^ 0x9e3779b97f4a7c15ull);
#ifdef VLFT_CUDA
    if (on_cuda && llava_cuda_attach(m, err) != 0) goto fail;
#endif
    *out = m;
    return 0;
fail:
    llava_free(m);
    return -1;
}

void llava_free(LlavaModel *m) {
    if (m == NULL) return;
#ifdef VLFT_CUDA
    llava_cuda_detach(m);
#endif
    tape_free(&m->tape);
    for (int i = 0; i < m->n_weights; i++) {
        kernel_free(m->weights[i].owned);
        kernel_free(m->weights[i].grad);
        kernel_free_bf16(m->weights[i].owned_bf16);
    }
    free(m->weights);
    for (int i = 0; i < m->n_loras; i++) {
        kernel_free(m->loras[i].A);
        kernel_free(m->loras[i].B);
        kernel_free(m->loras[i].dA);
        kernel_free(m->loras[i].dB);
    }
    free(m->loras);
    for (int i = 0; i < m->n_params; i++) free(m->param_names[i]);
    free(m->param_names);
    free(m->params);
    free(m->vision_layers);
    free(m->text_layers);
    llava_layers_free(m);
    layout_free(&m->layout);
    safetensors_close(&m->weights_file);
    free(m);
}

const ModelConfig *llava_config(const LlavaModel *m) { return &m->config; }

const ParamRef *llava_params(const LlavaModel *m, int *count) {
    *count = m->n_params;
    return m->params;
}

void llava_zero_grad(LlavaModel *m) {
#ifdef VLFT_CUDA
    if (m->cuda) {
        llava_cuda_zero_grad(m);
        return;
    }
#endif
    for (int i = 0; i < m->n_params; i++)  // (a gradient released by ZeRO-3 is NULL)
        if (m->params[i].grad) kernel_zero(m->params[i].grad, m->params[i].numel);
}

void llava_memory_stats(const LlavaModel *m, LlavaMemoryStats *stats) { *stats = m->stats; }

Rng *llava_dropout_rng(LlavaModel *model) { return &model->dropout_rng; }

// ---- device (llava.h); without CUDA the model is always on the CPU.

int llava_on_device(const LlavaModel *m) { return m->cuda != NULL; }

const char *llava_device_name(const LlavaModel *m) {
#ifdef VLFT_CUDA
    if (m->cuda) return llava_cuda_device_name(m);
#endif
    (void)m;
    return "cpu";
}

int llava_device_optimizer_step(LlavaModel *m, const AdamWScalars *scalars, double max_norm, double *grad_norm,
                                Error *err) {
#ifdef VLFT_CUDA
    if (m->cuda) return llava_cuda_optimizer_step(m, scalars, max_norm, grad_norm, err);
#endif
    (void)scalars, (void)max_norm, (void)grad_norm;
    return error_set(err, "the model is not on a GPU");
}

int llava_device_pull(LlavaModel *m, int what, AdamW *opt, Error *err) {
#ifdef VLFT_CUDA
    if (m->cuda) return llava_cuda_pull(m, what, opt ? opt->exp_avg : NULL, opt ? opt->exp_avg_sq : NULL, err);
#endif
    (void)m, (void)what, (void)opt, (void)err;
    return 0;  // on the CPU the host values are the model's own
}

int llava_device_push(LlavaModel *m, int what, const AdamW *opt, Error *err) {
#ifdef VLFT_CUDA
    if (m->cuda) return llava_cuda_push(m, what, opt ? opt->exp_avg : NULL, opt ? opt->exp_avg_sq : NULL, err);
#endif
    (void)m, (void)what, (void)opt, (void)err;
    return 0;
}

void llava_device_memory(const LlavaModel *m, size_t *weights, size_t *peak) {
    *weights = *peak = 0;
#ifdef VLFT_CUDA
    if (m->cuda) llava_cuda_memory(m, weights, peak);
#endif
    (void)m;
}
