#include "data_order.h"

// ---------------------------------------------------------------- mt19937
// The Mersenne Twister behind torch's CPU generator (at::mt19937): seeded
// with the low 32 bits of the seed by the reference init_genrand.

typedef struct {
    uint32_t state[624];
    int next;
} Mt19937;

static void mt_seed(Mt19937 *mt, uint64_t seed) {
    mt->state[0] = (uint32_t)(seed & 0xffffffffu);
    for (int i = 1; i < 624; i++)
        mt->state[i] = 1812433253u * (mt->state[i - 1] ^ (mt->state[i - 1] >> 30)) + (uint32_t)i;
    mt->next = 624;
}

static uint32_t mt_next(Mt19937 *mt) {
    if (mt->next >= 624) {
        for (int i = 0; i < 624; i++) {
            uint32_t y = (mt->state[i] & 0x80000000u) | (mt->state[(i + 1) % 624] & 0x7fffffffu);
            mt->state[i] = mt->state[(i + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
        }
        mt->next = 0;
    }
    uint32_t y = mt->state[mt->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

void torch_randperm(int *out, int n, uint64_t seed) {
    Mt19937 mt;
    mt_seed(&mt, seed);
    for (int i = 0; i < n; i++) out[i] = i;
    // swap position i with a uniform-ish pick among i..n-1 (random() % (n - i))
    for (int i = 0; i + 1 < n; i++) {
        int z = (int)(mt_next(&mt) % (uint32_t)(n - i));
        int saved = out[i];
        out[i] = out[z + i];
        out[z + i] = saved;
    }
}

// ---------------------------------------------------------------- numpy

// SeedSequence (numpy/random/bit_generator.pyx), pool of 4 uint32 words.
enum { POOL_SIZE = 4 };
static const uint32_t INIT_A = 0x43b0d7e5u, MULT_A = 0x931e8875u, INIT_B = 0x8b51f9ddu, MULT_B = 0x58f38dedu;
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

// The 4 uint64 words SeedSequence(seed).generate_state(4, uint64) gives.
static void seed_sequence_state(uint64_t seed, uint64_t words[4]) {
    uint32_t entropy[2];
    int n_entropy = 0;
    entropy[n_entropy++] = (uint32_t)(seed & 0xffffffffu);  // little-endian 32-bit words of the int
    if (seed >> 32) entropy[n_entropy++] = (uint32_t)(seed >> 32);
    uint32_t pool[POOL_SIZE];
    uint32_t hash_const = INIT_A;
    for (int i = 0; i < POOL_SIZE; i++) pool[i] = hashmix(i < n_entropy ? entropy[i] : 0u, &hash_const);
    for (int src = 0; src < POOL_SIZE; src++)
        for (int dst = 0; dst < POOL_SIZE; dst++)
            if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src], &hash_const));
    // (entropy longer than the pool would be mixed in here; a uint64 seed never is)
    uint32_t state32[8];
    uint32_t hash_b = INIT_B;
    for (int i = 0; i < 8; i++) {
        uint32_t value = pool[i % POOL_SIZE];
        value ^= hash_b;
        hash_b *= MULT_B;
        value *= hash_b;
        value ^= value >> 16;
        state32[i] = value;
    }
    for (int i = 0; i < 4; i++) words[i] = (uint64_t)state32[2 * i] | ((uint64_t)state32[2 * i + 1] << 32);
}

// PCG64 (XSL-RR 128/64) as numpy's bit generator, with its 32-bit buffering.
typedef unsigned __int128 u128;

typedef struct {
    u128 state, inc;
    int has_uint32;
    uint32_t uinteger;
} Pcg64;

static u128 pcg_multiplier(void) {
    return ((u128)0x2360ed051fc65da4ull << 64) | (u128)0x4385df649fccf645ull;
}

static void pcg_step(Pcg64 *p) { p->state = p->state * pcg_multiplier() + p->inc; }

static void pcg_seed(Pcg64 *p, uint64_t seed) {
    uint64_t words[4];
    seed_sequence_state(seed, words);
    u128 initstate = ((u128)words[0] << 64) | words[1];
    u128 initseq = ((u128)words[2] << 64) | words[3];
    p->state = 0;
    p->inc = (initseq << 1) | 1u;
    pcg_step(p);
    p->state += initstate;
    pcg_step(p);
    p->has_uint32 = 0;
    p->uinteger = 0;
}

static uint64_t pcg_next64(Pcg64 *p) {
    pcg_step(p);
    uint64_t value = (uint64_t)(p->state >> 64) ^ (uint64_t)p->state;
    unsigned rot = (unsigned)(p->state >> 122);
    return (value >> rot) | (value << ((64u - rot) & 63u));
}

static uint32_t pcg_next32(Pcg64 *p) {
    if (p->has_uint32) {
        p->has_uint32 = 0;
        return p->uinteger;
    }
    uint64_t next = pcg_next64(p);
    p->has_uint32 = 1;
    p->uinteger = (uint32_t)(next >> 32);
    return (uint32_t)(next & 0xffffffffu);
}

// numpy's random_interval: uniform in [0, max] by masking and rejecting.
static uint64_t random_interval(Pcg64 *p, uint64_t max) {
    if (max == 0) return 0;
    uint64_t mask = max;
    mask |= mask >> 1;
    mask |= mask >> 2;
    mask |= mask >> 4;
    mask |= mask >> 8;
    mask |= mask >> 16;
    mask |= mask >> 32;
    uint64_t value;
    if (max <= 0xffffffffull) {
        while ((value = (pcg_next32(p) & mask)) > max) continue;
    } else {
        while ((value = (pcg_next64(p) & mask)) > max) continue;
    }
    return value;
}

void split_permutation_numpy(int *out, int n, uint64_t seed) {
    Pcg64 pcg;
    pcg_seed(&pcg, seed);
    for (int i = 0; i < n; i++) out[i] = i;
    // Generator.shuffle: Fisher-Yates from the end
    for (int i = n - 1; i >= 1; i--) {
        int j = (int)random_interval(&pcg, (uint64_t)i);
        int saved = out[i];
        out[i] = out[j];
        out[j] = saved;
    }
}
