// plot.h - the loss curves LLaMA-Factory's plot_loss draws (extras/ploting.py),
// drawn with cairo: 640x480 PNG, title "training <key> of <output_dir>",
// x label "step", y label the key, the raw curve faint and the smoothed one
// solid (exponential smoothing with weight 1.8 * (sigmoid(0.05 * n) - 0.5)),
// axes with tick labels and a legend.
#ifndef VLFT_PLOT_H
#define VLFT_PLOT_H

#include "../base/error.h"

// LLaMA-Factory's smoothing of values[0..n) into smoothed[0..n).
void plot_smooth(const double *values, int n, double *smoothed);

// Draws the curve and writes it atomically to path as PNG.
int plot_loss_png(const char *path, const char *title, const char *ylabel, const double *steps,
                  const double *values, int n, Error *err);

#endif
