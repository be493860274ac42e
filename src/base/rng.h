// rng.h - a small deterministic random generator (splitmix64 seeding a
// xoshiro256**), with uniform and normal draws. One Rng per purpose, held in
// the context that needs it; its state is plain data so checkpoints can save it.
#ifndef VLFT_RNG_H
#define VLFT_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t state[4];
} Rng;

void rng_seed(Rng *rng, uint64_t seed);
uint64_t rng_next(Rng *rng);
// Uniform in [0, 1).
double rng_uniform(Rng *rng);
// Uniform integer in [0, n).
uint64_t rng_below(Rng *rng, uint64_t n);
// Standard normal (Box-Muller).
double rng_normal(Rng *rng);

#endif
