// numpy_permutation.h - numpy.random.default_rng(seed).permutation(n),
// bit for bit: SeedSequence -> PCG64 (XSL-RR) -> Generator.shuffle with
// masked rejection sampling. Hugging Face datasets' train_test_split draws
// its split with exactly this, so vlft's val_size split selects the same
// samples, in the same order, as LLaMA-Factory's.
#ifndef VLFT_TEXT_NUMPY_PERMUTATION_H
#define VLFT_TEXT_NUMPY_PERMUTATION_H

#include <stdint.h>

// Writes a permutation of 0..n-1 into out (n entries). seed >= 0.
void numpy_permutation(uint64_t seed, int64_t n, int64_t *out);

#endif
