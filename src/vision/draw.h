// draw.h - a tiny rasteriser for filled shapes on RGB images, anti-aliased
// by 4x4 supersampling. Enough for the demo dataset's pictures.
#ifndef VLFT_DRAW_H
#define VLFT_DRAW_H

#include <stdint.h>

#include "image.h"

typedef enum { SHAPE_CIRCLE, SHAPE_SQUARE, SHAPE_TRIANGLE, SHAPE_STAR, SHAPE_DIAMOND, SHAPE_COUNT } ShapeKind;

// Fills the whole RGB image with one colour.
void draw_fill(Image *image, const uint8_t colour[3]);

// Draws a shape centred at (cx, cy) fitting in a circle of radius r (pixels).
// Pixels partly covered are blended by coverage.
void draw_shape(Image *image, ShapeKind kind, double cx, double cy, double r, const uint8_t colour[3]);

#endif
