/* Assertions for the example programs: a failed CHECK prints where and why (with the engine's
 * last error) and exits with status 1, so the test harness sees it. */
#ifndef SYNAPSWAP_EXAMPLES_CHECK_H
#define SYNAPSWAP_EXAMPLES_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "synapswap.h"

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__, __LINE__, \
                    #cond, synapswap_last_error());                                          \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

/* The byte at offset i of a block with seed s: depends on both, so a block served with another
 * block's bytes, a shifted copy or a stale version fails. */
static inline uint8_t pattern_byte(uint32_t seed, size_t i) {
    uint32_t x = seed * 2654435761u + (uint32_t)i * 40503u + (uint32_t)(i >> 9) * 97u;
    return (uint8_t)(x ^ (x >> 13) ^ (x >> 24));
}

static inline void fill_pattern(void* p, size_t n, uint32_t seed) {
    uint8_t* b = (uint8_t*)p;
    for (size_t i = 0; i < n; i++) b[i] = pattern_byte(seed, i);
}

/* The number of bytes of [p, p+n) that differ from the pattern (0: all verified). */
static inline size_t count_mismatches(const void* p, size_t n, uint32_t seed) {
    const uint8_t* b = (const uint8_t*)p;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += b[i] != pattern_byte(seed, i);
    return bad;
}

#endif
