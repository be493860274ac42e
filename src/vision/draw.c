// draw.c - filled circles and polygons by point sampling (see draw.h).
#include "draw.h"

#include <math.h>
#include <string.h>

#define SUBSAMPLES 4  // per axis
#define MAX_VERTICES 10

void draw_fill(Image *image, const uint8_t colour[3]) {
    for (size_t i = 0; i < (size_t)image->width * image->height; i++) memcpy(image->pixels + 3 * i, colour, 3);
}

// Vertices of a shape around the origin, radius r; returns the count.
static int shape_polygon(ShapeKind kind, double r, double xs[MAX_VERTICES], double ys[MAX_VERTICES]) {
    const double pi = 3.14159265358979323846;
    switch (kind) {
    case SHAPE_SQUARE: {
        double h = r * 0.8;
        xs[0] = -h, ys[0] = -h, xs[1] = h, ys[1] = -h, xs[2] = h, ys[2] = h, xs[3] = -h, ys[3] = h;
        return 4;
    }
    case SHAPE_DIAMOND:
        xs[0] = 0, ys[0] = -r, xs[1] = r * 0.8, ys[1] = 0, xs[2] = 0, ys[2] = r, xs[3] = -r * 0.8, ys[3] = 0;
        return 4;
    case SHAPE_TRIANGLE:
        // Pointing up, its centroid a little below the centre so it looks centred.
        xs[0] = 0, ys[0] = -r;
        xs[1] = r * 0.95, ys[1] = r * 0.7;
        xs[2] = -r * 0.95, ys[2] = r * 0.7;
        return 3;
    case SHAPE_STAR:
        for (int i = 0; i < 10; i++) {
            double radius = i % 2 == 0 ? r : r * 0.45;
            double angle = -pi / 2 + i * pi / 5;
            xs[i] = radius * cos(angle);
            ys[i] = radius * sin(angle);
        }
        return 10;
    default: return 0;
    }
}

// Even-odd crossing test; handles the star's concave outline.
static int inside_polygon(double x, double y, const double *xs, const double *ys, int n) {
    int inside = 0;
    for (int i = 0, j = n - 1; i < n; j = i++) {
        if ((ys[i] > y) != (ys[j] > y) && x < (xs[j] - xs[i]) * (y - ys[i]) / (ys[j] - ys[i]) + xs[i])
            inside = !inside;
    }
    return inside;
}

void draw_shape(Image *image, ShapeKind kind, double cx, double cy, double r, const uint8_t colour[3]) {
    double xs[MAX_VERTICES], ys[MAX_VERTICES];
    int n = shape_polygon(kind, r, xs, ys);
    int x0 = (int)floor(cx - r - 1), x1 = (int)ceil(cx + r + 1);
    int y0 = (int)floor(cy - r - 1), y1 = (int)ceil(cy + r + 1);
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x1 > image->width) x1 = image->width;
    if (y1 > image->height) y1 = image->height;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            int covered = 0;
            for (int sy = 0; sy < SUBSAMPLES; sy++)
                for (int sx = 0; sx < SUBSAMPLES; sx++) {
                    double px = x + (sx + 0.5) / SUBSAMPLES - cx, py = y + (sy + 0.5) / SUBSAMPLES - cy;
                    int in = kind == SHAPE_CIRCLE ? px * px + py * py <= r * r : inside_polygon(px, py, xs, ys, n);
                    covered += in;
                }
            if (covered == 0) continue;
            uint8_t *p = image->pixels + ((size_t)y * image->width + x) * 3;
            for (int c = 0; c < 3; c++)
                p[c] = (uint8_t)((p[c] * (SUBSAMPLES * SUBSAMPLES - covered) + colour[c] * covered +
                                  SUBSAMPLES * SUBSAMPLES / 2) / (SUBSAMPLES * SUBSAMPLES));
        }
}
