#include "plot.h"

#include <cairo.h>
#include <fontconfig/fontconfig.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/fs.h"

void plot_smooth(const double *values, int n, double *smoothed) {
    if (n <= 0) return;
    double weight = 1.8 * (1.0 / (1.0 + exp(-0.05 * n)) - 0.5);
    double last = values[0];
    for (int i = 0; i < n; i++) {
        smoothed[i] = last * weight + (1.0 - weight) * values[i];
        last = smoothed[i];
    }
}

// A "nice" tick spacing (1, 2 or 5 times a power of ten) giving about
// `wanted` ticks over span.
static double nice_step(double span, int wanted) {
    if (!(span > 0)) return 1.0;
    double raw = span / wanted;
    double power = pow(10.0, floor(log10(raw)));
    double fraction = raw / power;
    double nice = fraction < 1.5 ? 1 : fraction < 3 ? 2 : fraction < 7 ? 5 : 10;
    return nice * power;
}

static void format_tick(double value, double step, char *dst, size_t size) {
    int decimals = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
    if (decimals > 8) decimals = 8;
    if (fabs(value) < step * 1e-6) value = 0;
    snprintf(dst, size, "%.*f", decimals, value);
}

typedef struct {
    char *data;
    size_t length, capacity;
} PngBuffer;

static cairo_status_t png_to_buffer(void *closure, const unsigned char *data, unsigned int length) {
    PngBuffer *b = closure;
    if (b->length + length > b->capacity) {
        size_t capacity = b->capacity ? b->capacity * 2 : 65536;
        while (capacity < b->length + length) capacity *= 2;
        char *grown = realloc(b->data, capacity);
        if (grown == NULL) return CAIRO_STATUS_NO_MEMORY;
        b->data = grown;
        b->capacity = capacity;
    }
    memcpy(b->data + b->length, data, length);
    b->length += length;
    return CAIRO_STATUS_SUCCESS;
}

// Data coordinates -> pixels inside the axes box.
typedef struct {
    double left, top, width, height;
    double x_min, x_max, y_min, y_max;
} Axes;

static double px(const Axes *ax, double x) { return ax->left + (x - ax->x_min) / (ax->x_max - ax->x_min) * ax->width; }
static double py(const Axes *ax, double y) {
    return ax->top + (1.0 - (y - ax->y_min) / (ax->y_max - ax->y_min)) * ax->height;
}

int plot_loss_png(const char *path, const char *title, const char *ylabel, const double *steps,
                  const double *values, int n, Error *err) {
    if (n < 1) return error_set(err, "%s: nothing to plot", path);
    const int width = 640, height = 480;
    const double left = 80, right = 24, top = 44, bottom = 56;
    const double plot_w = width - left - right, plot_h = height - top - bottom;

    double *smoothed = malloc((size_t)n * sizeof *smoothed);
    if (smoothed == NULL) return error_set(err, "%s: out of memory", path);
    plot_smooth(values, n, smoothed);

    double x_min = steps[0], x_max = steps[0], y_min = values[0], y_max = values[0];
    for (int i = 0; i < n; i++) {
        x_min = fmin(x_min, steps[i]);
        x_max = fmax(x_max, steps[i]);
        y_min = fmin(y_min, fmin(values[i], smoothed[i]));
        y_max = fmax(y_max, fmax(values[i], smoothed[i]));
    }
    // matplotlib-like 5% margins; a flat curve gets a unit span
    if (x_max - x_min < 1e-12) {
        x_min -= 1;
        x_max += 1;
    }
    if (y_max - y_min < 1e-12) {
        y_min -= fabs(y_min) * 0.05 + 0.05;
        y_max += fabs(y_max) * 0.05 + 0.05;
    }
    double x_pad = (x_max - x_min) * 0.05, y_pad = (y_max - y_min) * 0.05;
    x_min -= x_pad;
    x_max += x_pad;
    y_min -= y_pad;
    y_max += y_pad;

    cairo_surface_t *surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, width, height);
    cairo_t *cr = cairo_create(surface);
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);

    Axes ax = {left, top, plot_w, plot_h, x_min, x_max, y_min, y_max};
    // ticks and their labels
    cairo_set_font_size(cr, 12);
    cairo_set_line_width(cr, 1);
    char label[64];
    cairo_text_extents_t ext;
    double xs = nice_step(x_max - x_min, 6);
    for (double x = ceil(x_min / xs) * xs; x <= x_max + 1e-9 * xs; x += xs) {
        cairo_set_source_rgb(cr, 0, 0, 0);
        cairo_move_to(cr, px(&ax, x), top + plot_h);
        cairo_line_to(cr, px(&ax, x), top + plot_h + 5);
        cairo_stroke(cr);
        format_tick(x, xs, label, sizeof label);
        cairo_text_extents(cr, label, &ext);
        cairo_move_to(cr, px(&ax, x) - ext.width / 2 - ext.x_bearing, top + plot_h + 8 + ext.height);
        cairo_show_text(cr, label);
    }
    double ys = nice_step(y_max - y_min, 6);
    for (double y = ceil(y_min / ys) * ys; y <= y_max + 1e-9 * ys; y += ys) {
        cairo_set_source_rgb(cr, 0, 0, 0);
        cairo_move_to(cr, left - 5, py(&ax, y));
        cairo_line_to(cr, left, py(&ax, y));
        cairo_stroke(cr);
        format_tick(y, ys, label, sizeof label);
        cairo_text_extents(cr, label, &ext);
        cairo_move_to(cr, left - 8 - ext.width - ext.x_bearing, py(&ax, y) + ext.height / 2);
        cairo_show_text(cr, label);
    }
    // the curves, clipped to the axes box
    cairo_save(cr);
    cairo_rectangle(cr, left, top, plot_w, plot_h);
    cairo_clip(cr);
    cairo_set_line_width(cr, 1.5);
    for (int curve = 0; curve < 2; curve++) {
        const double *ys_curve = curve == 0 ? values : smoothed;
        cairo_set_source_rgba(cr, 0x1f / 255.0, 0x77 / 255.0, 0xb4 / 255.0, curve == 0 ? 0.4 : 1.0);
        for (int i = 0; i < n; i++) {
            if (i == 0) cairo_move_to(cr, px(&ax, steps[i]), py(&ax, ys_curve[i]));
            else cairo_line_to(cr, px(&ax, steps[i]), py(&ax, ys_curve[i]));
        }
        if (n == 1) cairo_arc(cr, px(&ax, steps[0]), py(&ax, ys_curve[0]), 2, 0, 2 * M_PI);
        cairo_stroke(cr);
    }
    cairo_restore(cr);
    // axes box
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_set_line_width(cr, 1);
    cairo_rectangle(cr, left + 0.5, top + 0.5, plot_w, plot_h);
    cairo_stroke(cr);
    // title and axis labels
    cairo_set_font_size(cr, 14);
    cairo_text_extents(cr, title, &ext);
    cairo_move_to(cr, left + plot_w / 2 - ext.width / 2 - ext.x_bearing, top - 14);
    cairo_show_text(cr, title);
    cairo_set_font_size(cr, 13);
    cairo_text_extents(cr, "step", &ext);
    cairo_move_to(cr, left + plot_w / 2 - ext.width / 2 - ext.x_bearing, height - 12);
    cairo_show_text(cr, "step");
    cairo_text_extents(cr, ylabel, &ext);
    cairo_save(cr);
    cairo_move_to(cr, 20, top + plot_h / 2 + ext.width / 2);
    cairo_rotate(cr, -M_PI / 2);
    cairo_show_text(cr, ylabel);
    cairo_restore(cr);
    // legend, top right inside the axes
    cairo_set_font_size(cr, 12);
    double lx = left + plot_w - 130, ly = top + 10;
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_rectangle(cr, lx, ly, 120, 44);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 0.8, 0.8, 0.8);
    cairo_stroke(cr);
    const char *names[2] = {"original", "smoothed"};
    for (int curve = 0; curve < 2; curve++) {
        double y = ly + 14 + curve * 18;
        cairo_set_source_rgba(cr, 0x1f / 255.0, 0x77 / 255.0, 0xb4 / 255.0, curve == 0 ? 0.4 : 1.0);
        cairo_set_line_width(cr, 1.5);
        cairo_move_to(cr, lx + 8, y);
        cairo_line_to(cr, lx + 36, y);
        cairo_stroke(cr);
        cairo_set_source_rgb(cr, 0, 0, 0);
        cairo_move_to(cr, lx + 44, y + 4);
        cairo_show_text(cr, names[curve]);
    }
    cairo_destroy(cr);

    PngBuffer png = {0};
    cairo_status_t status = cairo_surface_write_to_png_stream(surface, png_to_buffer, &png);
    cairo_surface_destroy(surface);
    // cairo keeps the fonts it looked up in static caches for the whole
    // process; release them so nothing outlives the plot (and LeakSanitizer
    // sees no fontconfig leftovers). vlft draws from one thread only.
    cairo_debug_reset_static_data();
    FcFini();
    free(smoothed);
    if (status != CAIRO_STATUS_SUCCESS) {
        free(png.data);
        return error_set(err, "%s: cannot encode PNG: %s", path, cairo_status_to_string(status));
    }
    int rc = write_file_atomic(path, png.data, png.length, err);
    free(png.data);
    return rc;
}
