// vlft _train-toy RECIPE.yaml: the trainer on a toy model (hidden, for tests).
//
// The toy is a two-layer regression net, out = fc2(tanh(fc1(x))), with loss
// = mean squared error over the batch's outputs, trained by the real
// trainer (src/train/trainer.c) with every recipe key the trainer reads.
// model_name_or_path names a safetensors file holding the data ("x" [N, D],
// "y" [N, K]) and the initial parameters ("fc1.weight" [H, D], "fc1.bias"
// [H], "fc2.weight" [K, H], "fc2.bias" [K]); tests write it and mirror the
// whole run in PyTorch. Options:
//   --noise S       add S * N(0, 1) to every input drawn from the model's
//                   Rng (seeded with the recipe's seed): randomness a resume
//                   must replay exactly
//   --delay-ms N    sleep N ms per micro-batch so a test can kill mid-run
//   --updates FILE  append one JSON line per optimizer update (step, loss,
//                   lr, grad_norm at full precision)
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../base/fs.h"
#include "../base/rng.h"
#include "../io/safetensors.h"
#include "../train/recipe.h"
#include "../train/trainer.h"
#include "commands.h"

enum { TOY_FC1_W, TOY_FC1_B, TOY_FC2_W, TOY_FC2_B, TOY_N_PARAMS };
static const char *const toy_names[TOY_N_PARAMS] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};

typedef struct {
    int n_samples, dim_in, dim_hidden, dim_out;
    float *x, *y;  // [N, D], [N, K]
    ParamRef params[TOY_N_PARAMS];
    Rng rng;
    double noise;
    int delay_ms;
    float *hidden, *input, *d_out, *d_hidden;  // scratch for one sample
} Toy;

static float *toy_param(Toy *toy, int which) { return toy->params[which].value; }

// Loss of a batch; when grad_scale != 0 also adds grad_scale * gradients.
static double toy_batch(Toy *toy, const int *ids, int n, float grad_scale, int with_grad) {
    int D = toy->dim_in, H = toy->dim_hidden, K = toy->dim_out;
    const float *w1 = toy_param(toy, TOY_FC1_W), *b1 = toy_param(toy, TOY_FC1_B);
    const float *w2 = toy_param(toy, TOY_FC2_W), *b2 = toy_param(toy, TOY_FC2_B);
    float *g_w1 = toy->params[TOY_FC1_W].grad, *g_b1 = toy->params[TOY_FC1_B].grad;
    float *g_w2 = toy->params[TOY_FC2_W].grad, *g_b2 = toy->params[TOY_FC2_B].grad;
    double sum = 0;
    float inv_count = 1.0f / (float)(n * K);
    for (int s = 0; s < n; s++) {
        const float *x = toy->x + (size_t)ids[s] * D, *y = toy->y + (size_t)ids[s] * K;
        for (int d = 0; d < D; d++)
            toy->input[d] = x[d] + (toy->noise > 0 && with_grad ? (float)(toy->noise * rng_normal(&toy->rng)) : 0.0f);
        // forward: hidden [H] = tanh(w1 [H, D] @ input + b1); out [K] = w2 [K, H] @ hidden + b2
        for (int h = 0; h < H; h++) {
            float a = b1[h];
            for (int d = 0; d < D; d++) a += w1[h * D + d] * toy->input[d];
            toy->hidden[h] = tanhf(a);
        }
        for (int k = 0; k < K; k++) {
            float o = b2[k];
            for (int h = 0; h < H; h++) o += w2[k * H + h] * toy->hidden[h];
            float diff = o - y[k];
            sum += (double)diff * diff;
            toy->d_out[k] = 2.0f * diff * inv_count * grad_scale;  // d(loss * grad_scale)/d(out)
        }
        if (!with_grad) continue;
        // backward
        for (int h = 0; h < H; h++) toy->d_hidden[h] = 0;
        for (int k = 0; k < K; k++) {
            g_b2[k] += toy->d_out[k];
            for (int h = 0; h < H; h++) {
                g_w2[k * H + h] += toy->d_out[k] * toy->hidden[h];
                toy->d_hidden[h] += w2[k * H + h] * toy->d_out[k];
            }
        }
        for (int h = 0; h < H; h++) {
            float d_pre = toy->d_hidden[h] * (1.0f - toy->hidden[h] * toy->hidden[h]);
            g_b1[h] += d_pre;
            for (int d = 0; d < D; d++) g_w1[h * D + d] += d_pre * toy->input[d];
        }
    }
    return sum / (double)(n * K);
}

static int toy_check_ids(Toy *toy, const int *ids, int n, Error *err) {
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= toy->n_samples) return error_set(err, "toy: sample id %d out of range", ids[i]);
    return 0;
}

static int toy_forward_backward(void *ctx, const int *ids, int n, float grad_scale, double *loss, Error *err) {
    Toy *toy = ctx;
    if (toy_check_ids(toy, ids, n, err) != 0) return -1;
    if (toy->delay_ms > 0) {
        struct timespec ts = {toy->delay_ms / 1000, (long)(toy->delay_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    *loss = toy_batch(toy, ids, n, grad_scale, 1);
    return 0;
}

static int toy_eval_loss(void *ctx, const int *ids, int n, double *loss, Error *err) {
    Toy *toy = ctx;
    if (toy_check_ids(toy, ids, n, err) != 0) return -1;
    *loss = toy_batch(toy, ids, n, 0.0f, 0);
    return 0;
}

static void toy_zero_grad(void *ctx) {
    Toy *toy = ctx;
    for (int i = 0; i < TOY_N_PARAMS; i++) memset(toy->params[i].grad, 0, toy->params[i].numel * sizeof(float));
}

static int toy_save_weights(void *ctx, const char *dir, Error *err) {
    Toy *toy = ctx;
    TensorRef refs[TOY_N_PARAMS];
    memset(refs, 0, sizeof refs);
    for (int i = 0; i < TOY_N_PARAMS; i++) {
        refs[i].name = toy->params[i].name;
        refs[i].dtype = DTYPE_F32;
        refs[i].ndim = toy->params[i].ndim;
        for (int d = 0; d < toy->params[i].ndim; d++) refs[i].shape[d] = toy->params[i].shape[d];
        refs[i].data = toy->params[i].value;
    }
    char path[4200];
    if (path_join(path, sizeof path, dir, "model.safetensors", err) != 0) return -1;
    return safetensors_write(path, refs, TOY_N_PARAMS, NULL, err);
}

// Copies the named tensors of st into the params (shapes must agree).
static int toy_read_params(Toy *toy, const Safetensors *st, const char *path, Error *err) {
    for (int i = 0; i < TOY_N_PARAMS; i++) {
        const TensorInfo *t = safetensors_get(st, toy_names[i]);
        if (t == NULL) return error_set(err, "%s: no tensor %s", path, toy_names[i]);
        if (t->numel != toy->params[i].numel) return error_set(err, "%s: %s has the wrong size", path, toy_names[i]);
        if (safetensors_read_f32(st, t, toy->params[i].value, err) != 0) return -1;
    }
    return 0;
}

static int toy_load_weights(void *ctx, const char *dir, Error *err) {
    Toy *toy = ctx;
    char path[4200];
    if (path_join(path, sizeof path, dir, "model.safetensors", err) != 0) return -1;
    Safetensors st;
    if (safetensors_open_file(&st, path, err) != 0) return -1;
    int rc = toy_read_params(toy, &st, path, err);
    safetensors_close(&st);
    return rc;
}

static void toy_free(Toy *toy) {
    free(toy->x);
    free(toy->y);
    for (int i = 0; i < TOY_N_PARAMS; i++) {
        free(toy->params[i].value);
        free(toy->params[i].grad);
    }
    free(toy->hidden);
    free(toy->input);
    free(toy->d_out);
    free(toy->d_hidden);
}

static int toy_load(Toy *toy, const char *path, Error *err) {
    Safetensors st;
    if (safetensors_open_file(&st, path, err) != 0) return -1;
    const TensorInfo *x = safetensors_get(&st, "x"), *y = safetensors_get(&st, "y");
    const TensorInfo *w1 = safetensors_get(&st, "fc1.weight"), *w2 = safetensors_get(&st, "fc2.weight");
    int rc = 0;
    if (!x || !y || !w1 || !w2 || x->ndim != 2 || y->ndim != 2 || w1->ndim != 2 || w2->ndim != 2) {
        rc = error_set(err, "%s: a toy file needs 2-d x, y, fc1.weight, fc2.weight", path);
        goto done;
    }
    toy->n_samples = (int)x->shape[0];
    toy->dim_in = (int)x->shape[1];
    toy->dim_hidden = (int)w1->shape[0];
    toy->dim_out = (int)y->shape[1];
    if (y->shape[0] != x->shape[0] || w1->shape[1] != x->shape[1] || w2->shape[0] != y->shape[1] ||
        w2->shape[1] != w1->shape[0]) {
        rc = error_set(err, "%s: toy shapes disagree", path);
        goto done;
    }
    int64_t shapes[TOY_N_PARAMS][2] = {{toy->dim_hidden, toy->dim_in}, {toy->dim_hidden, 0},
                                       {toy->dim_out, toy->dim_hidden}, {toy->dim_out, 0}};
    for (int i = 0; i < TOY_N_PARAMS; i++) {
        ParamRef *p = &toy->params[i];
        p->name = toy_names[i];
        p->ndim = shapes[i][1] ? 2 : 1;
        p->shape[0] = shapes[i][0];
        p->shape[1] = shapes[i][1];
        p->numel = (size_t)shapes[i][0] * (size_t)(shapes[i][1] ? shapes[i][1] : 1);
        p->decay = p->ndim == 2;  // weights decay, biases do not (as transformers groups them)
        p->value = calloc(p->numel, sizeof(float));
        p->grad = calloc(p->numel, sizeof(float));
        if (!p->value || !p->grad) {
            rc = error_set(err, "toy: out of memory");
            goto done;
        }
    }
    toy->x = malloc(x->numel * sizeof(float));
    toy->y = malloc(y->numel * sizeof(float));
    toy->hidden = malloc((size_t)toy->dim_hidden * sizeof(float));
    toy->d_hidden = malloc((size_t)toy->dim_hidden * sizeof(float));
    toy->input = malloc((size_t)toy->dim_in * sizeof(float));
    toy->d_out = malloc((size_t)toy->dim_out * sizeof(float));
    if (!toy->x || !toy->y || !toy->hidden || !toy->d_hidden || !toy->input || !toy->d_out) {
        rc = error_set(err, "toy: out of memory");
        goto done;
    }
    if (safetensors_read_f32(&st, x, toy->x, err) != 0 || safetensors_read_f32(&st, y, toy->y, err) != 0 ||
        toy_read_params(toy, &st, path, err) != 0)
        rc = -1;
done:
    safetensors_close(&st);
    return rc;
}

static void append_update(void *user, const TrainUpdate *u) {
    FILE *fp = fopen((const char *)user, "a");
    if (fp == NULL) return;
    fprintf(fp, "{\"step\": %d, \"loss\": %.17g, \"lr\": %.17g, \"grad_norm\": %.17g, \"epoch\": %.17g}\n", u->step,
            u->loss, u->lr, u->grad_norm, u->epoch);
    fclose(fp);
}

int command_train_toy(int argc, char **argv) {
    const char *recipe_path = NULL, *updates_path = NULL;
    double noise = 0;
    int delay_ms = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--noise") == 0 && i + 1 < argc) noise = atof(argv[++i]);
        else if (strcmp(argv[i], "--delay-ms") == 0 && i + 1 < argc) delay_ms = atoi(argv[++i]);
        else if (strcmp(argv[i], "--updates") == 0 && i + 1 < argc) updates_path = argv[++i];
        else if (argv[i][0] != '-' && recipe_path == NULL) recipe_path = argv[i];
        else {
            fprintf(stderr, "usage: vlft _train-toy RECIPE.yaml [--noise S] [--delay-ms N] [--updates FILE]\n");
            return EXIT_USAGE;
        }
    }
    if (recipe_path == NULL) {
        fprintf(stderr, "usage: vlft _train-toy RECIPE.yaml [--noise S] [--delay-ms N] [--updates FILE]\n");
        return EXIT_USAGE;
    }
    Recipe recipe;
    Error err;
    TrainerOptions opt;
    if (recipe_load(&recipe, recipe_path, stderr, &err) != 0) {
        fprintf(stderr, "vlft _train-toy: %s\n", err.message);
        return EXIT_BAD_INPUT;
    }
    char resume[4096];
    if (recipe_validate(&recipe, recipe_path, &err) != 0 || trainer_options_from_recipe(&opt, &recipe, &err) != 0 ||
        trainer_check_output_dir(&opt, resume, sizeof resume, &err) != 0) {
        fprintf(stderr, "vlft _train-toy: %s\n", err.message);
        recipe_free(&recipe);
        return EXIT_BAD_INPUT;
    }
    Toy toy;
    memset(&toy, 0, sizeof toy);
    toy.noise = noise;
    toy.delay_ms = delay_ms;
    rng_seed(&toy.rng, (uint64_t)(int64_t)recipe.seed);
    int *train_ids = NULL, *eval_ids = NULL, n_train = 0, n_eval = 0;
    int rc = toy_load(&toy, recipe.model_name_or_path, &err);
    if (rc == 0) rc = trainer_split_ids(toy.n_samples, recipe.val_size, recipe.seed, &train_ids, &n_train, &eval_ids, &n_eval, &err);
    if (rc == 0) {
        TrainModel model = {
            .ctx = &toy,
            .params = toy.params,
            .n_params = TOY_N_PARAMS,
            .rng = &toy.rng,
            .forward_backward = toy_forward_backward,
            .eval_loss = toy_eval_loss,
            .zero_grad = toy_zero_grad,
            .save_weights = toy_save_weights,
            .load_weights = toy_load_weights,
        };
        opt.on_update = updates_path ? append_update : NULL;
        opt.user = (void *)updates_path;
        rc = trainer_run(&opt, &model, train_ids, n_train, eval_ids, n_eval, &err);
    }
    if (rc < 0) fprintf(stderr, "vlft _train-toy: %s\n", err.message);
    free(train_ids);
    free(eval_ids);
    toy_free(&toy);
    recipe_free(&recipe);
    if (rc < 0) return EXIT_BAD_INPUT;
    return rc == TRAIN_INTERRUPTED ? 130 : EXIT_OK;
}
