// Vision module: decode/encode round trips, mode conversions, resize
// identities, the prefetch queue's order, errors and shutdown.
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/vision/clip_preprocess.h"
#include "../../src/vision/image.h"
#include "../../src/vision/image_write.h"
#include "../../src/vision/prefetch.h"
#include "../../src/vision/resample.h"

static char dir[256];

static void make_dir(void) {
    snprintf(dir, sizeof dir, "/tmp/vlft-vision-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(vision, .init = make_dir, .fini = remove_dir);

static void fill_pattern(Image *image, int seed) {
    for (size_t i = 0; i < (size_t)image->width * image->height * image->channels; i++)
        image->pixels[i] = (uint8_t)((i * 7 + (size_t)seed * 13 + (i / 3) % 17) & 0xff);
}

static void write_test_image(const char *name, int width, int height, int seed, char *path, size_t size) {
    Image image;
    Error err;
    cr_assert_eq(image_alloc(&image, IMAGE_MODE_RGB, width, height, &err), 0, "%s", err.message);
    fill_pattern(&image, seed);
    snprintf(path, size, "%s/%s", dir, name);
    cr_assert_eq(image_write_file(path, &image, &err), 0, "%s", err.message);
    image_free(&image);
}

Test(vision, png_round_trip_is_lossless) {
    Image image, back;
    Error err;
    cr_assert_eq(image_alloc(&image, IMAGE_MODE_RGB, 31, 17, &err), 0);
    fill_pattern(&image, 1);
    char path[512];
    snprintf(path, sizeof path, "%s/a.png", dir);
    cr_assert_eq(image_write_file(path, &image, &err), 0, "%s", err.message);
    cr_assert_eq(image_load_rgb(path, &back, &err), 0, "%s", err.message);
    cr_assert_eq(back.width, 31);
    cr_assert_eq(back.height, 17);
    cr_assert_eq(memcmp(back.pixels, image.pixels, 31 * 17 * 3), 0);
    image_free(&image);
    image_free(&back);
}

Test(vision, jpeg_round_trip_is_close) {
    Image image, back;
    Error err;
    cr_assert_eq(image_alloc(&image, IMAGE_MODE_RGB, 64, 48, &err), 0);
    for (int y = 0; y < 48; y++)
        for (int x = 0; x < 64; x++) {
            uint8_t *p = image.pixels + (y * 64 + x) * 3;
            p[0] = (uint8_t)(x * 4), p[1] = (uint8_t)(y * 5), p[2] = 100;
        }
    uint8_t *data;
    size_t size;
    cr_assert_eq(image_encode_jpeg(&image, 95, &data, &size, &err), 0, "%s", err.message);
    cr_assert_eq(image_decode_memory(data, size, "mem.jpg", &back, &err), 0, "%s", err.message);
    cr_assert_eq(back.mode, IMAGE_MODE_RGB);
    long total = 0;
    for (int i = 0; i < 64 * 48 * 3; i++) total += abs(back.pixels[i] - image.pixels[i]);
    cr_assert_lt((double)total / (64 * 48 * 3), 3.0, "mean abs error %f", (double)total / (64 * 48 * 3));
    // Every strict prefix of the file is a truncation error, never a crash.
    for (size_t cut = 0; cut < size; cut += size / 37 + 1) {
        Image partial;
        cr_assert_eq(image_decode_memory(data, cut, "cut.jpg", &partial, &err), -1, "cut at %zu decoded", cut);
        cr_assert_not_null(strstr(err.message, "cut.jpg"));
    }
    free(data);
    image_free(&image);
    image_free(&back);
}

Test(vision, convert_modes_like_pillow) {
    Image in, out;
    Error err;
    cr_assert_eq(image_alloc(&in, IMAGE_MODE_CMYK, 2, 1, &err), 0);
    uint8_t cmyk[8] = {100, 50, 200, 30, 200, 200, 200, 200};  // Pillow: (137,181,49), (12,12,12)
    memcpy(in.pixels, cmyk, 8);
    cr_assert_eq(image_convert_rgb(&in, &out, &err), 0);
    uint8_t expect[6] = {137, 181, 49, 12, 12, 12};
    cr_assert_eq(memcmp(out.pixels, expect, 6), 0);
    image_free(&in);
    image_free(&out);

    cr_assert_eq(image_alloc(&in, IMAGE_MODE_I, 3, 1, &err), 0);
    in.pixels_i32[0] = -5, in.pixels_i32[1] = 100, in.pixels_i32[2] = 70000;
    cr_assert_eq(image_convert_rgb(&in, &out, &err), 0);
    cr_assert_eq(out.pixels[0], 0);
    cr_assert_eq(out.pixels[3], 100);
    cr_assert_eq(out.pixels[6], 255);
    image_free(&in);
    image_free(&out);
}

Test(vision, resize_constant_image_stays_constant) {
    // Normalised weights sum to one, so a flat image stays flat at any scale.
    uint8_t in[40 * 30 * 3];
    memset(in, 77, sizeof in);
    int sizes[][2] = {{1, 1}, {3, 97}, {40, 30}, {200, 7}, {13, 13}};
    for (int s = 0; s < 5; s++) {
        int w = sizes[s][0], h = sizes[s][1];
        uint8_t *out = malloc((size_t)w * h * 3);
        Error err;
        cr_assert_eq(resample_bicubic_u8(in, 40, 30, 3, w, h, NULL, out, &err), 0);
        for (int i = 0; i < w * h * 3; i++) cr_assert_eq(out[i], 77, "%dx%d at %d", w, h, i);
        free(out);
    }
}

Test(vision, resize_window_equals_crop_of_full_resize) {
    int in_w = 53, in_h = 41, out_w = 97, out_h = 29;
    uint8_t *in = malloc((size_t)in_w * in_h * 3), *full = malloc((size_t)out_w * out_h * 3);
    for (int i = 0; i < in_w * in_h * 3; i++) in[i] = (uint8_t)((i * 131) ^ (i >> 3));
    Error err;
    cr_assert_eq(resample_bicubic_u8(in, in_w, in_h, 3, out_w, out_h, NULL, full, &err), 0);
    ResampleWindow window = {11, 5, 60, 20};
    uint8_t *part = malloc(60 * 20 * 3);
    cr_assert_eq(resample_bicubic_u8(in, in_w, in_h, 3, out_w, out_h, &window, part, &err), 0);
    for (int y = 0; y < 20; y++)
        cr_assert_eq(memcmp(part + y * 60 * 3, full + ((y + 5) * out_w + 11) * 3, 60 * 3), 0, "row %d", y);
    ResampleWindow outside = {90, 0, 10, 1};
    cr_assert_eq(resample_bicubic_u8(in, in_w, in_h, 3, out_w, out_h, &outside, part, &err), -1);
    free(in);
    free(full);
    free(part);
}

static ClipConfig small_config(void) {
    ClipConfig config;
    clip_config_defaults(&config);
    config.shortest_edge = 16;
    config.crop_height = config.crop_width = 16;
    return config;
}

Test(vision, prefetch_delivers_in_order_with_errors) {
    enum { N_JOBS = 23 };
    char paths[N_JOBS][2][512];
    const char *lists[N_JOBS][2];
    PrefetchJob jobs[N_JOBS];
    for (int j = 0; j < N_JOBS; j++) {
        char name[32];
        // Width encodes the job, so the output order can be checked.
        snprintf(name, sizeof name, "j%d.%s", j, j % 2 ? "png" : "jpg");
        write_test_image(name, 20 + j, 16, j, paths[j][0], sizeof paths[j][0]);
        snprintf(paths[j][1], sizeof paths[j][1], "%s/missing%d.jpg", dir, j);
        lists[j][0] = paths[j][0];
        lists[j][1] = j % 7 == 3 ? paths[j][1] : paths[j][0];  // a few jobs name a missing file
        jobs[j].paths = lists[j];
        jobs[j].count = j % 5 == 0 ? 1 : 2;
    }
    ClipConfig config = small_config();
    config.do_center_crop = 0;  // keep the width, which tells the job apart
    ImageBounds bounds;
    image_bounds_defaults(&bounds);
    bounds.min_pixels = 0;  // no upscaling of these small images
    for (int threads = 1; threads <= 3; threads++) {
        Error err;
        Prefetcher *p = prefetch_start(&config, &bounds, jobs, N_JOBS, threads, 4, &err);
        cr_assert_not_null(p, "%s", err.message);
        for (int j = 0; j < N_JOBS; j++) {
            PrefetchResult result;
            int rc = prefetch_next(p, &result, &err);
            if (j % 7 == 3 && jobs[j].count == 2) {
                cr_assert_eq(rc, -1, "job %d should fail", j);
                cr_assert_not_null(strstr(err.message, paths[j][1]), "%s", err.message);
                continue;
            }
            cr_assert_eq(rc, 0, "job %d: %s", j, err.message);
            cr_assert_eq(result.job_index, j);
            cr_assert_eq(result.count, jobs[j].count);
            // Width 20 + j, height 16: the short edge 16 stays, width is kept.
            for (int i = 0; i < result.count; i++) {
                cr_assert_eq(result.tensors[i].height, 16);
                cr_assert_eq(result.tensors[i].width, 20 + j);
            }
            // Same pixels as the single-threaded path.
            ClipTensor direct;
            cr_assert_eq(clip_preprocess_file(&config, &bounds, paths[j][0], &direct, &err), 0);
            cr_assert_eq(memcmp(direct.data, result.tensors[0].data, sizeof(float) * 3 * 16 * (20 + j)), 0);
            clip_tensor_free(&direct);
            prefetch_result_free(&result);
        }
        PrefetchResult end;
        cr_assert_eq(prefetch_next(p, &end, &err), 1);
        prefetch_stop(p);
    }
}

Test(vision, prefetch_stops_mid_stream) {
    enum { N_JOBS = 40 };
    char path[512];
    write_test_image("s.jpg", 300, 200, 3, path, sizeof path);
    const char *list[1] = {path};
    PrefetchJob jobs[N_JOBS];
    for (int j = 0; j < N_JOBS; j++) jobs[j] = (PrefetchJob){list, 1};
    ClipConfig config = small_config();
    ImageBounds bounds;
    image_bounds_defaults(&bounds);
    Error err;
    Prefetcher *p = prefetch_start(&config, &bounds, jobs, N_JOBS, 3, 2, &err);
    cr_assert_not_null(p);
    PrefetchResult result;
    cr_assert_eq(prefetch_next(p, &result, &err), 0);
    prefetch_result_free(&result);
    prefetch_stop(p);  // ASan checks that nothing leaks or races here
    // An empty job list ends at once.
    p = prefetch_start(&config, &bounds, jobs, 0, 2, 2, &err);
    cr_assert_not_null(p);
    cr_assert_eq(prefetch_next(p, &result, &err), 1);
    prefetch_stop(p);
    cr_assert_null(prefetch_start(&config, &bounds, jobs, 1, 0, 2, &err));
}
