/* The 30-layer stress scenario on the original global API.
 *
 * 30 layers, each a weight block (256 KiB to 1 MiB) and a small bias block, chained node by node
 * and looped back (node 29 -> node 0, as token-by-token decoding does), through a device budget
 * of 40% of the model. 24 passes; every byte of every block is read back through
 * synapswap_get_vram_ptr and checked, each pass; every 5th pass also touches blocks out of
 * schedule (demand loads). Then four threads share the engine, each streaming its own blocks.
 * Every statistic must be non-zero and consistent. Finally: shutdown, init again, shutdown. */
#include <pthread.h>
#include <string.h>

#include "check.h"

#define LAYERS 30
#define PASSES 24

static void* weight[LAYERS];
static void* bias[LAYERS];
static size_t wsize[LAYERS], bsize[LAYERS];

static void verify(void* block, size_t n, uint32_t seed) {
    CHECK(synapswap_wait_for_data(block) == SS_SUCCESS);
    const void* dev = synapswap_get_vram_ptr(block);
    CHECK(dev != NULL);
    CHECK(count_mismatches(dev, n, seed) == 0);
}

struct worker {
    int id;
    size_t verified;
};

static void* worker_main(void* arg) {
    struct worker* w = (struct worker*)arg;
    enum { N = 6 };
    void* blocks[N];
    for (int i = 0; i < N; i++) {
        size_t n = 64 * 1024 + 4096 * (size_t)i;
        blocks[i] = synapswap_malloc(n, 3, SS_POLICY_LRU, "worker");
        CHECK(blocks[i] != NULL);
        fill_pattern(blocks[i], n, 10000u + (uint32_t)(w->id * N + i));
    }
    for (int round = 0; round < 40; round++) {
        int i = (round * 5 + w->id) % N;
        size_t n = 64 * 1024 + 4096 * (size_t)i;
        CHECK(synapswap_wait_for_data(blocks[i]) == SS_SUCCESS);
        const void* dev = synapswap_get_vram_ptr(blocks[i]);
        CHECK(dev != NULL);
        CHECK(count_mismatches(dev, n, 10000u + (uint32_t)(w->id * N + i)) == 0);
        w->verified += n;
    }
    for (int i = 0; i < N; i++) synapswap_free(blocks[i]);
    return NULL;
}

int main(void) {
    size_t total = 0;
    for (int l = 0; l < LAYERS; l++) {
        wsize[l] = (size_t)(256 + 256 * (l % 4)) * 1024;
        bsize[l] = 4096 + 16 * (size_t)l;
        total += wsize[l] + bsize[l];
    }
    size_t budget = total * 2 / 5;
    CHECK(synapswap_init(budget, false) == SS_SUCCESS);

    for (int l = 0; l < LAYERS; l++) {
        char tag[32];
        snprintf(tag, sizeof tag, "layer%d.w", l);
        weight[l] = synapswap_malloc(wsize[l], 5, SS_POLICY_AUTO, tag);
        bias[l] = synapswap_malloc(bsize[l], 7, SS_POLICY_AUTO, NULL);
        CHECK(weight[l] != NULL && bias[l] != NULL);
        fill_pattern(weight[l], wsize[l], (uint32_t)(2 * l));
        fill_pattern(bias[l], bsize[l], (uint32_t)(2 * l + 1));
    }
    for (int l = 0; l < LAYERS; l++) {
        int next = (l + 1) % LAYERS; /* the loop back to node 0 */
        synapswap_register_dependency(l, weight[l], next);
        synapswap_register_dependency(l, bias[l], next);
    }

    size_t verified = 0;
    for (int pass = 0; pass < PASSES; pass++) {
        for (int l = 0; l < LAYERS; l++) {
            synapswap_precompute_hint(l);
            verify(weight[l], wsize[l], (uint32_t)(2 * l));
            verify(bias[l], bsize[l], (uint32_t)(2 * l + 1));
            verified += wsize[l] + bsize[l];
            if (pass % 5 == 4 && l % 7 == 3) {
                /* Out of schedule: a block of another layer, loaded on demand. */
                int o = (l + 13) % LAYERS;
                verify(weight[o], wsize[o], (uint32_t)(2 * o));
                verified += wsize[o];
            }
        }
    }

    ss_stats_t s;
    memset(&s, 0, sizeof s);
    synapswap_get_stats(&s);
    CHECK(s.vram_total_bytes <= budget && s.vram_total_bytes + 256 > budget); /* 256 B granule */
    CHECK(s.vram_used_bytes > 0 && s.vram_used_bytes <= budget);
    CHECK(s.ram_swap_used_bytes == total);
    CHECK(s.total_transfers > 2 * LAYERS); /* evictions forced reloads */
    CHECK(s.total_access_count >= (uint64_t)PASSES * 2 * LAYERS);
    CHECK(s.avg_transfer_latency_ms > 0.0);
    CHECK(s.prefetch_hit_rate > 0.0f && s.prefetch_hit_rate <= 1.0f);
    CHECK(s.active_blocks == 2 * LAYERS);

    pthread_t threads[4];
    struct worker workers[4];
    for (int t = 0; t < 4; t++) {
        workers[t].id = t;
        workers[t].verified = 0;
        CHECK(pthread_create(&threads[t], NULL, worker_main, &workers[t]) == 0);
    }
    for (int t = 0; t < 4; t++) {
        CHECK(pthread_join(threads[t], NULL) == 0);
        verified += workers[t].verified;
    }

    for (int l = 0; l < LAYERS; l++) {
        synapswap_free(weight[l]);
        synapswap_free(bias[l]);
    }
    memset(&s, 0, sizeof s);
    synapswap_get_stats(&s);
    CHECK(s.active_blocks == 0 && s.ram_swap_used_bytes == 0 && s.vram_used_bytes == 0);
    synapswap_shutdown();
    CHECK(synapswap_init(budget, false) == SS_SUCCESS);
    synapswap_shutdown();

    printf("stress: %d layers x %d passes through %zu of %zu bytes: %zu bytes verified, "
           "%llu transfers, hit rate %.2f, avg copy %.3f ms\n",
           LAYERS, PASSES, budget, total, verified, (unsigned long long)s.total_transfers,
           (double)s.prefetch_hit_rate, s.avg_transfer_latency_ms);
    return 0;
}
