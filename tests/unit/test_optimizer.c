// AdamW and clipping against the update rule written out in double here,
// state save/load, and the JSON / plot helpers the trainer writes with.
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/train/json_out.h"
#include "../../src/train/optimizer.h"
#include "../../src/train/plot.h"

static ParamRef param(const char *name, float *value, float *grad, size_t n, int decay) {
    ParamRef p = {.name = name, .value = value, .grad = grad, .numel = n, .ndim = 1, .shape = {(int64_t)n}, .decay = decay};
    return p;
}

Test(optimizer, adamw_matches_the_formula_over_steps) {
    float w[3] = {0.5f, -1.0f, 2.0f}, gw[3];
    float b[2] = {0.1f, -0.2f}, gb[2];
    ParamRef params[2] = {param("w", w, gw, 3, 1), param("b", b, gb, 2, 0)};
    AdamW opt;
    Error err;
    cr_assert_eq(adamw_init(&opt, params, 2, 0.9, 0.999, 1e-8, 0.1, &err), 0);
    double pw[5] = {0.5, -1.0, 2.0, 0.1, -0.2}, m[5] = {0}, v[5] = {0};
    for (int t = 1; t <= 4; t++) {
        double lr = 0.01 * t;
        for (int i = 0; i < 5; i++) {
            float g = (float)(sin(t * 1.7 + i) * (i + 1));
            if (i < 3) gw[i] = g;
            else gb[i - 3] = g;
            if (i < 3) pw[i] *= 1 - lr * 0.1;  // decoupled decay on w only
            m[i] = 0.9 * m[i] + 0.1 * g;
            v[i] = 0.999 * v[i] + 0.001 * (double)g * g;
            double m_hat = m[i] / (1 - pow(0.9, t)), v_hat = v[i] / (1 - pow(0.999, t));
            pw[i] -= lr * m_hat / (sqrt(v_hat) + 1e-8);
        }
        adamw_step(&opt, params, 2, lr);
    }
    cr_assert_eq(opt.step, 4);
    for (int i = 0; i < 5; i++) {
        float got = i < 3 ? w[i] : b[i - 3];
        cr_assert(fabs(got - pw[i]) < 1e-6 * (1 + fabs(pw[i])), "param %d: %g vs %g", i, got, pw[i]);
    }
    adamw_free(&opt);
}

Test(optimizer, zero_lr_leaves_params_but_moves_moments) {
    float w[2] = {1, 2}, g[2] = {0.5f, -0.5f};
    ParamRef p = param("w", w, g, 2, 1);
    AdamW opt;
    Error err;
    cr_assert_eq(adamw_init(&opt, &p, 1, 0.9, 0.999, 1e-8, 0.5, &err), 0);
    adamw_step(&opt, &p, 1, 0.0);
    cr_assert_eq(w[0], 1.0f);
    cr_assert_eq(w[1], 2.0f);
    cr_assert_float_eq(opt.exp_avg[0][0], 0.05f, 1e-7);
    adamw_free(&opt);
}

Test(optimizer, clip_global_norm) {
    float a[2] = {3, 0}, ga[2] = {3, 0}, b[1] = {0}, gb[1] = {4};
    ParamRef params[2] = {param("a", a, ga, 2, 1), param("b", b, gb, 1, 1)};
    double norm = clip_grad_norm(params, 2, 1.0);
    cr_assert_float_eq(norm, 5.0, 1e-12);
    double coef = 1.0 / (5.0 + 1e-6);
    cr_assert_float_eq(ga[0], 3 * coef, 1e-6);
    cr_assert_float_eq(gb[0], 4 * coef, 1e-6);
    // below the limit: untouched
    float gc[1] = {0.3f};
    ParamRef c = param("c", b, gc, 1, 1);
    cr_assert_float_eq(clip_grad_norm(&c, 1, 1.0), 0.3, 1e-7);
    cr_assert_eq(gc[0], 0.3f);
    // max_norm 0 disables clipping but still reports the norm
    gc[0] = 10;
    cr_assert_float_eq(clip_grad_norm(&c, 1, 0.0), 10.0, 1e-12);
    cr_assert_eq(gc[0], 10.0f);
}

Test(optimizer, state_round_trip_and_mismatch) {
    float w[3] = {1, 2, 3}, g[3] = {0.1f, 0.2f, -0.3f};
    ParamRef p = param("layer.w", w, g, 3, 1);
    AdamW opt, back;
    Error err;
    cr_assert_eq(adamw_init(&opt, &p, 1, 0.9, 0.999, 1e-8, 0, &err), 0);
    adamw_step(&opt, &p, 1, 0.1);
    adamw_step(&opt, &p, 1, 0.1);
    char path[] = "/tmp/vlft-opt-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    cr_assert_eq(adamw_save(&opt, &p, 1, path, &err), 0, "%s", err.message);
    cr_assert_eq(adamw_init(&back, &p, 1, 0.9, 0.999, 1e-8, 0, &err), 0);
    cr_assert_eq(adamw_load(&back, &p, 1, path, &err), 0, "%s", err.message);
    cr_assert_eq(back.step, 2);
    cr_assert_eq(memcmp(back.exp_avg[0], opt.exp_avg[0], sizeof w), 0);
    cr_assert_eq(memcmp(back.exp_avg_sq[0], opt.exp_avg_sq[0], sizeof w), 0);
    float w2[2], g2[2];
    ParamRef other = param("layer.w", w2, g2, 2, 1);
    AdamW wrong;
    cr_assert_eq(adamw_init(&wrong, &other, 1, 0.9, 0.999, 1e-8, 0, &err), 0);
    cr_assert_eq(adamw_load(&wrong, &other, 1, path, &err), -1);
    cr_assert(strstr(err.message, path) != NULL, "%s", err.message);
    unlink(path);
    adamw_free(&opt);
    adamw_free(&back);
    adamw_free(&wrong);
}

static void check_repr(double value, const char *expected) {
    char text[64];
    py_float_repr(value, text, sizeof text);
    cr_assert_str_eq(text, expected, "repr(%.17g)", value);
}

Test(json_out, python_float_repr) {
    // what Python's repr() prints for these doubles
    check_repr(0.0001, "0.0001");
    check_repr(1e-05, "1e-05");
    check_repr(2.5e-06, "2.5e-06");
    check_repr(2.0, "2.0");
    check_repr(0.1, "0.1");
    check_repr(-0.5, "-0.5");
    check_repr(100.0, "100.0");
    check_repr(16.67, "16.67");
    check_repr(1e16, "1e+16");
    check_repr(123456789012345.0, "123456789012345.0");
    check_repr(0.3333333333333333, "0.3333333333333333");
    check_repr(0.0, "0.0");
}

Test(json_out, dumps_layouts) {
    JsonOut j;
    json_init(&j, 0);
    json_begin_object(&j);
    json_key(&j, "a");
    json_int(&j, 1);
    json_key(&j, "b");
    json_string(&j, "x\"y");
    json_key(&j, "c");
    json_begin_array(&j);
    json_double(&j, 0.5);
    json_null(&j);
    json_end_array(&j);
    json_end_object(&j);
    cr_assert_str_eq(j.text, "{\"a\": 1, \"b\": \"x\\\"y\", \"c\": [0.5, null]}");
    json_free(&j);
    json_init(&j, 2);
    json_begin_object(&j);
    json_key(&j, "e");
    json_begin_object(&j);
    json_end_object(&j);
    json_key(&j, "l");
    json_begin_array(&j);
    json_bool(&j, 1);
    json_end_array(&j);
    json_end_object(&j);
    cr_assert_str_eq(j.text, "{\n  \"e\": {},\n  \"l\": [\n    true\n  ]\n}");
    json_free(&j);
}

Test(plot, smoothing_as_llamafactory) {
    double values[4] = {4, 2, 3, 1}, smoothed[4];
    plot_smooth(values, 4, smoothed);
    double weight = 1.8 * (1 / (1 + exp(-0.05 * 4)) - 0.5);
    double last = 4, expect;
    for (int i = 0; i < 4; i++) {
        expect = last * weight + (1 - weight) * values[i];
        cr_assert_float_eq(smoothed[i], expect, 1e-12);
        last = expect;
    }
    cr_assert_float_eq(smoothed[0], 4.0, 1e-12);
}

#include <omp.h>

Test(optimizer, large_tensors_same_bits_for_any_thread_count) {
    size_t n = 300000;  // several norm blocks and above the threading threshold
    float *value[2], *grad[2];
    for (int k = 0; k < 2; k++) {
        value[k] = malloc(n * sizeof(float));
        grad[k] = malloc(n * sizeof(float));
        for (size_t j = 0; j < n; j++) {
            value[k][j] = (float)sin(0.001 * j);
            grad[k][j] = (float)cos(0.0007 * j) * 3.0f;
        }
    }
    double norms[2];
    int saved = omp_get_max_threads();
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k == 0 ? 1 : 3);
        ParamRef p = param("big", value[k], grad[k], n, 1);
        AdamW opt;
        Error err;
        cr_assert_eq(adamw_init(&opt, &p, 1, 0.9, 0.999, 1e-8, 0.01, &err), 0);
        norms[k] = clip_grad_norm(&p, 1, 1.0);
        adamw_step(&opt, &p, 1, 1e-3);
        adamw_free(&opt);
    }
    omp_set_num_threads(saved);
    double direct = 0;
    for (size_t j = 0; j < n; j++) {
        double g = (float)cos(0.0007 * j) * 3.0f;
        direct += g * g;
    }
    cr_assert(fabs(norms[0] - sqrt(direct)) < 1e-9 * sqrt(direct), "%.17g vs %.17g", norms[0], sqrt(direct));
    cr_assert_eq(memcmp(&norms[0], &norms[1], sizeof(double)), 0);
    cr_assert_eq(memcmp(value[0], value[1], n * sizeof(float)), 0);
    cr_assert_eq(memcmp(grad[0], grad[1], n * sizeof(float)), 0);
    for (int k = 0; k < 2; k++) {
        free(value[k]);
        free(grad[k]);
    }
}
