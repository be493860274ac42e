// data_order.h - the sample orders LLaMA-Factory's stack produces, so vlft
// trains on the same samples in the same order for the same seed:
//
//   val split   datasets' train_test_split(test_size, seed): the permutation
//               numpy.random.default_rng(seed).permutation(n) (SeedSequence
//               -> PCG64, Generator.shuffle); test = its first n_test entries,
//               train = the rest, in that order.
//   epochs      transformers' Trainer through accelerate's SeedableRandomSampler:
//               torch.randperm(n) from a CPU generator seeded with seed + epoch
//               (mt19937; for n < 2^32 / 20 each swap draws one 32-bit number).
#ifndef VLFT_DATA_ORDER_H
#define VLFT_DATA_ORDER_H

#include <stdint.h>

// out[0..n) = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).
// n must be below 2^32 / 20 (torch's "small n" path; 214 million samples).
void torch_randperm(int *out, int n, uint64_t seed);

// out[0..n) = numpy.random.default_rng(seed).permutation(n).
void split_permutation_numpy(int *out, int n, uint64_t seed);

#endif
