#include "numpy_permutation.h"

// SeedSequence constants (numpy/random/bit_generator.pyx).
enum { POOL_SIZE = 4 };
static const uint32_t INIT_A = 0x43b0d7e5u, MULT_A = 0x931e8875u;
static const uint32_t INIT_B = 0x8b51f9ddu, MULT_B = 0x58f38dedu;
static const uint32_t MIX_MULT_L = 0xca01f9ddu, MIX_MULT_R = 0x4973f715u;

static uint32_t hashmix(uint32_t value, uint32_t *hash_const) {
    value ^= *hash_const;
    *hash_const *= MULT_A;
    value *= *hash_const;
    value ^= value >> 16;
    return value;
}

static uint32_t mix(uint32_t x, uint32_t y) {
    uint32_t result = MIX_MULT_L * x - MIX_MULT_R * y;
    return result ^ (result >> 16);
}

// SeedSequence(seed).generate_state(4, uint64) -> four 64-bit words.
static void seed_sequence_state(uint64_t seed, uint64_t state[4]) {
    uint32_t entropy[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    int n_entropy = seed >> 32 ? 2 : 1;
    uint32_t pool[POOL_SIZE];
    uint32_t hash_const = INIT_A;
    for (int i = 0; i < POOL_SIZE; i++) pool[i] = hashmix(i < n_entropy ? entropy[i] : 0, &hash_const);
    for (int src = 0; src < POOL_SIZE; src++)
        for (int dst = 0; dst < POOL_SIZE; dst++)
            if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src], &hash_const));
    uint32_t words[8];
    uint32_t hb = INIT_B;
    for (int i = 0; i < 8; i++) {
        uint32_t v = pool[i % POOL_SIZE];
        v ^= hb;
        hb *= MULT_B;
        v *= hb;
        v ^= v >> 16;
        words[i] = v;
    }
    for (int i = 0; i < 4; i++) state[i] = (uint64_t)words[2 * i] | ((uint64_t)words[2 * i + 1] << 32);
}

typedef unsigned __int128 u128;

typedef struct {
    u128 state, inc;
    int has_uint32;
    uint32_t uinteger;
} Pcg64;

static u128 pcg_multiplier(void) { return ((u128)0x2360ed051fc65da4ull << 64) | 0x4385df649fccf645ull; }

static void pcg_step(Pcg64 *rng) { rng->state = rng->state * pcg_multiplier() + rng->inc; }

static uint64_t pcg_next64(Pcg64 *rng) {
    pcg_step(rng);
    uint64_t hi = (uint64_t)(rng->state >> 64), lo = (uint64_t)rng->state;
    unsigned rot = (unsigned)(rng->state >> 122);
    uint64_t x = hi ^ lo;
    return rot ? (x >> rot) | (x << (64 - rot)) : x;
}

static uint32_t pcg_next32(Pcg64 *rng) {
    if (rng->has_uint32) {
        rng->has_uint32 = 0;
        return rng->uinteger;
    }
    uint64_t next = pcg_next64(rng);
    rng->has_uint32 = 1;
    rng->uinteger = (uint32_t)(next >> 32);
    return (uint32_t)next;
}

static void pcg_seed(Pcg64 *rng, uint64_t seed) {
    uint64_t s[4];
    seed_sequence_state(seed, s);
    u128 initstate = ((u128)s[0] << 64) | s[1];
    u128 initseq = ((u128)s[2] << 64) | s[3];
    rng->state = 0;
    rng->inc = (initseq << 1) | 1;
    pcg_step(rng);
    rng->state += initstate;
    pcg_step(rng);
    rng->has_uint32 = 0;
    rng->uinteger = 0;
}

// random_interval: uniform in [0, max] by masked rejection.
static uint64_t random_interval(Pcg64 *rng, uint64_t max) {
    if (max == 0) return 0;
    uint64_t mask = max;
    for (int shift = 1; shift < 64; shift *= 2) mask |= mask >> shift;
    uint64_t value;
    if (max <= 0xffffffffull) {
        while ((value = (pcg_next32(rng) & mask)) > max) {}
    } else {
        while ((value = (pcg_next64(rng) & mask)) > max) {}
    }
    return value;
}

void numpy_permutation(uint64_t seed, int64_t n, int64_t *out) {
    Pcg64 rng;
    pcg_seed(&rng, seed);
    for (int64_t i = 0; i < n; i++) out[i] = i;
    for (int64_t i = n - 1; i >= 1; i--) {
        int64_t j = (int64_t)random_interval(&rng, (uint64_t)i);
        int64_t tmp = out[i];
        out[i] = out[j];
        out[j] = tmp;
    }
}
