// demo_data.h - a procedurally drawn image dataset in LLaMA-Factory's
// mllm_demo format, learnable by a tiny model: clean shapes (circle, square,
// triangle, star, diamond) in distinct colours on plain backgrounds, with
// short formulaic English questions whose answers follow from the pictures
// (shape, colour, background, position, count, and two-image comparisons).
//
// Writes DIR/images/<k>.jpg|png, DIR/mllm_demo.json (a list of
// {"messages": [{"content", "role"}...], "images": ["images/k.jpg", ...]})
// and DIR/dataset_info.json with the "mllm_demo" sharegpt entry. Every file
// is written atomically; the same seed gives the same bytes.
#ifndef VLFT_DEMO_DATA_H
#define VLFT_DEMO_DATA_H

#include <stdint.h>

#include "../base/error.h"

int demo_data_write(const char *dir, int n_samples, uint64_t seed, Error *err);

#endif
