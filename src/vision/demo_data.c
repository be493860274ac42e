// demo_data.c - the demo dataset generator (see demo_data.h).
#include "demo_data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../base/fs.h"
#include "../base/rng.h"
#include "draw.h"
#include "image_write.h"

typedef struct {
    const char *name;  // as written in answers, lower case
    uint8_t rgb[3];
} Colour;

static const Colour colours[] = {
    {"red", {220, 30, 30}},      {"green", {30, 160, 50}},  {"blue", {40, 70, 220}},
    {"yellow", {245, 215, 30}},  {"purple", {130, 40, 160}}, {"orange", {245, 130, 20}},
    {"white", {255, 255, 255}}, {"black", {0, 0, 0}},      {"gray", {128, 128, 128}},
};
#define N_COLOURS ((int)(sizeof colours / sizeof colours[0]))

static const char *const shape_names[SHAPE_COUNT] = {"circle", "square", "triangle", "star", "diamond"};
static const char *const shape_plurals[SHAPE_COUNT] = {"circles", "squares", "triangles", "stars", "diamonds"};
static const char *const count_words[] = {"Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight"};

// A 3 x 3 grid of places; index = row * 3 + column.
static const char *const place_answers[9] = {
    "At the top left.",    "At the top.",    "At the top right.",
    "On the left.",        "In the center.", "On the right.",
    "At the bottom left.", "At the bottom.", "At the bottom right.",
};

typedef struct {
    int width, height;
    int background;  // index into colours
    ShapeKind kind;
    int colour;
    int count;       // 1..4 shapes, all of the same kind and colour
    int cells[4];    // grid places of the shapes
} Picture;

static void capitalised(char *dst, size_t size, const char *word) {
    snprintf(dst, size, "%s", word);
    if (dst[0] >= 'a' && dst[0] <= 'z') dst[0] = (char)(dst[0] - 'a' + 'A');
}

static void random_picture(Rng *rng, int count, ShapeKind kind, Picture *p) {
    p->width = 96 + (int)rng_below(rng, 105);
    p->height = 96 + (int)rng_below(rng, 105);
    p->background = (int)rng_below(rng, N_COLOURS);
    p->colour = (int)rng_below(rng, N_COLOURS - 1);
    if (p->colour >= p->background) p->colour++;  // never the background's colour
    p->kind = kind;
    p->count = count;
    int cells[9] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
    for (int i = 0; i < count; i++) {  // a partial Fisher-Yates shuffle
        int j = i + (int)rng_below(rng, (uint64_t)(9 - i));
        int t = cells[i];
        cells[i] = cells[j];
        cells[j] = t;
        p->cells[i] = cells[i];
    }
}

static int render_picture(Rng *rng, const Picture *p, Image *out, Error *err) {
    if (image_alloc(out, IMAGE_MODE_RGB, p->width, p->height, err) != 0) return -1;
    draw_fill(out, colours[p->background].rgb);
    double cell_w = p->width / 3.0, cell_h = p->height / 3.0;
    double shorter = p->width < p->height ? p->width : p->height;
    double radius = shorter * (p->count == 1 ? 0.2 : 0.14);
    for (int i = 0; i < p->count; i++) {
        int row = p->cells[i] / 3, col = p->cells[i] % 3;
        double jitter_x = (rng_uniform(rng) - 0.5) * cell_w * 0.15, jitter_y = (rng_uniform(rng) - 0.5) * cell_h * 0.15;
        draw_shape(out, p->kind, (col + 0.5) * cell_w + jitter_x, (row + 0.5) * cell_h + jitter_y, radius,
                   colours[p->colour].rgb);
    }
    return 0;
}

static void add_turn(cJSON *messages, const char *question, const char *answer) {
    cJSON *user = cJSON_CreateObject(), *assistant = cJSON_CreateObject();
    cJSON_AddStringToObject(user, "content", question);
    cJSON_AddStringToObject(user, "role", "user");
    cJSON_AddStringToObject(assistant, "content", answer);
    cJSON_AddStringToObject(assistant, "role", "assistant");
    cJSON_AddItemToArray(messages, user);
    cJSON_AddItemToArray(messages, assistant);
}

typedef struct {
    char question[160], answer[80];
} Turn;

// Picks 2 or 3 of the candidate turns in random order; the first question
// gets the image marks in front.
static void add_turns(Rng *rng, cJSON *messages, Turn *candidates, int n, const char *marks) {
    int order[8];
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below(rng, (uint64_t)(i + 1));
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    int turns = 2 + (int)rng_below(rng, 2);
    if (turns > n) turns = n;
    for (int t = 0; t < turns; t++) {
        char question[200];
        snprintf(question, sizeof question, "%s%s", t == 0 ? marks : "", candidates[order[t]].question);
        add_turn(messages, question, candidates[order[t]].answer);
    }
}

static void single_shape_turns(const Picture *p, Turn *c, int *n) {
    const char *shape = shape_names[p->kind];
    char colour[16], background[16];
    capitalised(colour, sizeof colour, colours[p->colour].name);
    capitalised(background, sizeof background, colours[p->background].name);
    *n = 0;
    snprintf(c[*n].question, sizeof c[0].question, "What shape is in the picture?");
    snprintf(c[(*n)++].answer, sizeof c[0].answer, "A %s %s.", colours[p->colour].name, shape);
    snprintf(c[*n].question, sizeof c[0].question, "Where is the %s?", shape);
    snprintf(c[(*n)++].answer, sizeof c[0].answer, "%s", place_answers[p->cells[0]]);
    snprintf(c[*n].question, sizeof c[0].question, "What colour is the background?");
    snprintf(c[(*n)++].answer, sizeof c[0].answer, "%s.", background);
    snprintf(c[*n].question, sizeof c[0].question, "What colour is the %s?", shape);
    snprintf(c[(*n)++].answer, sizeof c[0].answer, "%s.", colour);
}

static void counting_turns(const Picture *p, Turn *c, int *n) {
    const char *plural = shape_plurals[p->kind];
    char colour[16], background[16];
    capitalised(colour, sizeof colour, colours[p->colour].name);
    capitalised(background, sizeof background, colours[p->background].name);
    *n = 0;
    snprintf(c[*n].question, sizeof c[0].question, "How many %s are there?", plural);
    snprintf(c[(*n)++].answer, sizeof c[0].answer, "%s.", count_words[p->count]);
    snprintf(c[*n].question, sizeof c[0].question, "What shapes are in the picture?");
    if (p->count == 1)
        snprintf(c[(*n)++].answer, sizeof c[0].answer, "One %s %s.", colours[p->colour].name, shape_names[p->kind]);
    else
        snprintf(c[(*n)++].answer, sizeof c[0].answer, "%s %s %s.", count_words[p->count], colours[p->colour].name,
                 plural);
    snprintf(c[*n].question, sizeof c[0].question, "What colour is the background?");
    snprintf(c[(*n)++].answer, sizeof c[0].answer, "%s.", background);
    if (p->count == 1) snprintf(c[*n].question, sizeof c[0].question, "What colour is the %s?", shape_names[p->kind]);
    else snprintf(c[*n].question, sizeof c[0].question, "What colour are the %s?", plural);
    snprintf(c[(*n)++].answer, sizeof c[0].answer, "%s.", colour);
}

static void comparison_turns(const Picture *a, const Picture *b, Turn *c, int *n) {
    const char *plural = shape_plurals[a->kind];
    *n = 0;
    snprintf(c[*n].question, sizeof c[0].question, "Which picture has more %s?", plural);
    snprintf(c[(*n)++].answer, sizeof c[0].answer, "%s", a->count > b->count ? "The first one." : "The second one.");
    snprintf(c[*n].question, sizeof c[0].question, "How many %s are in the first picture?", plural);
    snprintf(c[(*n)++].answer, sizeof c[0].answer, "%s.", count_words[a->count]);
    snprintf(c[*n].question, sizeof c[0].question, "How many %s are in the second picture?", plural);
    snprintf(c[(*n)++].answer, sizeof c[0].answer, "%s.", count_words[b->count]);
    snprintf(c[*n].question, sizeof c[0].question, "How many %s are there in both pictures together?", plural);
    snprintf(c[(*n)++].answer, sizeof c[0].answer, "%s.", count_words[a->count + b->count]);
}

static int save_picture(const char *dir, Rng *rng, const Picture *p, int *image_index, cJSON *images, Error *err) {
    Image image;
    if (render_picture(rng, p, &image, err) != 0) return -1;
    char relative[64], path[4096];
    // Most pictures are JPEG (as in real datasets); every fifth is PNG.
    snprintf(relative, sizeof relative, "images/%d.%s", *image_index, *image_index % 5 == 4 ? "png" : "jpg");
    (*image_index)++;
    int rc = path_join(path, sizeof path, dir, relative, err);
    if (rc == 0) rc = image_write_file(path, &image, err);
    image_free(&image);
    if (rc == 0) cJSON_AddItemToArray(images, cJSON_CreateString(relative));
    return rc;
}

static int write_json(const char *dir, const char *name, cJSON *json, Error *err) {
    char path[4096];
    if (path_join(path, sizeof path, dir, name, err) != 0) return -1;
    char *text = cJSON_Print(json);
    if (text == NULL) return error_set(err, "%s: out of memory formatting JSON", path);
    size_t length = strlen(text);
    text[length] = '\n';  // over the NUL: the file ends with a newline
    int rc = write_file_atomic(path, text, length + 1, err);
    free(text);
    return rc;
}

static const char dataset_info_json[] =
    "{\n  \"mllm_demo\": {\n    \"file_name\": \"mllm_demo.json\",\n    \"formatting\": \"sharegpt\",\n"
    "    \"columns\": {\n      \"messages\": \"messages\",\n      \"images\": \"images\"\n    },\n"
    "    \"tags\": {\n      \"role_tag\": \"role\",\n      \"content_tag\": \"content\",\n"
    "      \"user_tag\": \"user\",\n      \"assistant_tag\": \"assistant\"\n    }\n  }\n}\n";

int demo_data_write(const char *dir, int n_samples, uint64_t seed, Error *err) {
    if (n_samples < 1 || n_samples > 1000000) return error_set(err, "%s: sample count %d out of range", dir, n_samples);
    char images_dir[4096];
    if (path_join(images_dir, sizeof images_dir, dir, "images", err) != 0) return -1;
    if (make_dirs(images_dir, err) != 0) return -1;
    Rng rng;
    rng_seed(&rng, seed);
    cJSON *samples = cJSON_CreateArray();
    int image_index = 0, rc = 0;
    for (int s = 0; s < n_samples && rc == 0; s++) {
        cJSON *sample = cJSON_CreateObject();
        cJSON *messages = cJSON_AddArrayToObject(sample, "messages");
        cJSON *images = cJSON_AddArrayToObject(sample, "images");
        Turn candidates[4];
        int n = 0;
        double kind_draw = rng_uniform(&rng);
        ShapeKind shape = (ShapeKind)rng_below(&rng, SHAPE_COUNT);
        if (kind_draw < 0.4) {
            Picture p;
            random_picture(&rng, 1, shape, &p);
            single_shape_turns(&p, candidates, &n);
            rc = save_picture(dir, &rng, &p, &image_index, images, err);
            add_turns(&rng, messages, candidates, n, "<image>");
        } else if (kind_draw < 0.75) {
            Picture p;
            random_picture(&rng, 1 + (int)rng_below(&rng, 4), shape, &p);
            counting_turns(&p, candidates, &n);
            rc = save_picture(dir, &rng, &p, &image_index, images, err);
            add_turns(&rng, messages, candidates, n, "<image>");
        } else {
            Picture a, b;
            int count_a = 1 + (int)rng_below(&rng, 4), count_b = 1 + (int)rng_below(&rng, 3);
            if (count_b >= count_a) count_b++;  // never equal, so "more" has an answer
            random_picture(&rng, count_a, shape, &a);
            random_picture(&rng, count_b, shape, &b);
            comparison_turns(&a, &b, candidates, &n);
            rc = save_picture(dir, &rng, &a, &image_index, images, err);
            if (rc == 0) rc = save_picture(dir, &rng, &b, &image_index, images, err);
            add_turns(&rng, messages, candidates, n, "<image><image>");
        }
        cJSON_AddItemToArray(samples, sample);
    }
    if (rc == 0) rc = write_json(dir, "mllm_demo.json", samples, err);
    cJSON_Delete(samples);
    if (rc == 0) {
        char path[4096];
        rc = path_join(path, sizeof path, dir, "dataset_info.json", err);
        if (rc == 0) rc = write_file_atomic(path, dataset_info_json, sizeof dataset_info_json - 1, err);
    }
    return rc;
}
