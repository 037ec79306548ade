/* Every bad input the C ABI promises to survive: each returns an error (or NULL) with a reason
 * in synapswap_last_error(), or is a documented no-op, and the engine goes on working. */
#include <string.h>

#include "check.h"

static int has_reason(void) { return synapswap_last_error()[0] != '\0'; }

int main(void) {
    int forged_target = 0;
    void* forged = &forged_target;
    ss_stats_t s;
    memset(&s, 0x5A, sizeof s);
    ss_stats_t untouched = s;

    /* Before init: errors, never crashes. */
    synapswap_shutdown();                                        /* no-op */
    CHECK(synapswap_malloc(64, 5, SS_POLICY_AUTO, "x") == NULL && has_reason());
    CHECK(synapswap_wait_for_data(forged) == SS_ERR_INITIALIZATION);
    CHECK(synapswap_get_vram_ptr(forged) == NULL);
    synapswap_free(NULL);                                        /* no-op */
    synapswap_free(forged);
    synapswap_register_dependency(0, forged, -1);
    synapswap_precompute_hint(0);
    synapswap_get_stats(&s);
    CHECK(memcmp(&s, &untouched, sizeof s) == 0);

    /* init: a zero budget fails; twice is an error; the first stays usable. */
    CHECK(synapswap_init(0, false) == SS_ERR_INITIALIZATION && has_reason());
    const size_t budget = 1 << 20;
    CHECK(synapswap_init(budget, false) == SS_SUCCESS);
    CHECK(synapswap_init(budget, false) == SS_ERR_INITIALIZATION);

    /* malloc: size 0, over the budget, bad priority or policy -> NULL with a reason. */
    CHECK(synapswap_malloc(0, 5, SS_POLICY_AUTO, NULL) == NULL && has_reason());
    CHECK(synapswap_malloc(budget + 1, 5, SS_POLICY_AUTO, NULL) == NULL);
    CHECK(strstr(synapswap_last_error(), "budget") != NULL);
    CHECK(synapswap_malloc(64, 11, SS_POLICY_AUTO, NULL) == NULL);
    CHECK(synapswap_malloc(64, -1, SS_POLICY_AUTO, NULL) == NULL);
    CHECK(synapswap_malloc(64, 5, (ss_policy_t)9, NULL) == NULL);
    CHECK(strstr(synapswap_last_error(), "policy") != NULL);
    CHECK(synapswap_malloc(budget / 2, 5, SS_POLICY_STRICT_VRAM, NULL) != NULL);
    CHECK(synapswap_malloc(budget / 2 + 4096, 5, SS_POLICY_STRICT_VRAM, NULL) == NULL); /* pinned over budget */

    void* p = synapswap_malloc(4096, 5, SS_POLICY_AUTO, "ok");
    CHECK(p != NULL);
    fill_pattern(p, 4096, 7);

    /* NULL, forged, interior pointers. */
    CHECK(synapswap_wait_for_data(NULL) == SS_ERR_INVALID_PTR);
    CHECK(synapswap_wait_for_data(forged) == SS_ERR_INVALID_PTR);
    CHECK(synapswap_wait_for_data((uint8_t*)p + 1) == SS_ERR_INVALID_PTR);
    CHECK(synapswap_get_vram_ptr(NULL) == NULL);
    CHECK(synapswap_get_vram_ptr(forged) == NULL && has_reason());
    synapswap_register_dependency(0, forged, -1);
    CHECK(strstr(synapswap_last_error(), "not a live block") != NULL);
    synapswap_get_stats(NULL);

    /* Hint for a node no dependency named. */
    synapswap_register_dependency(0, p, -1);
    synapswap_precompute_hint(42);
    CHECK(strstr(synapswap_last_error(), "42") != NULL);
    synapswap_precompute_hint(0);
    const void* dev = synapswap_get_vram_ptr(p);
    CHECK(dev != NULL && count_mismatches(dev, 4096, 7) == 0);

    /* Free, then every use of the freed pointer is an error; a double free too. */
    synapswap_free(p);
    CHECK(synapswap_wait_for_data(p) == SS_ERR_INVALID_PTR);
    CHECK(synapswap_get_vram_ptr(p) == NULL);
    synapswap_free(p);
    CHECK(strstr(synapswap_last_error(), "not a live block") != NULL);

    /* After shutdown: errors; old pointers too; init again works. */
    void* q = synapswap_malloc(4096, 5, SS_POLICY_AUTO, NULL);
    CHECK(q != NULL);
    synapswap_shutdown();
    CHECK(synapswap_wait_for_data(q) == SS_ERR_INITIALIZATION);
    CHECK(synapswap_malloc(64, 5, SS_POLICY_AUTO, NULL) == NULL);
    synapswap_free(q);
    CHECK(synapswap_init(budget, false) == SS_SUCCESS);
    CHECK(synapswap_wait_for_data(q) == SS_ERR_INVALID_PTR); /* a new engine: q is foreign */
    synapswap_shutdown();

    /* The instance API. */
    CHECK(synapswap_engine_create(0, SS_BACKEND_SIM, false) == NULL && has_reason());
    CHECK(synapswap_engine_create(budget, (ss_backend_t)7, false) == NULL);
    /* CUDA: an engine on a GPU machine, else NULL with the reason (no driver or no device). */
    ss_engine_t* gpu = synapswap_engine_create(budget, SS_BACKEND_CUDA, false);
    CHECK(gpu != NULL || strstr(synapswap_last_error(), "cuda") != NULL);
    synapswap_engine_destroy(gpu);
    synapswap_engine_destroy(NULL);                               /* no-op */
    synapswap_engine_destroy((ss_engine_t*)forged);               /* an error, not a crash */
    CHECK(has_reason());
    ss_engine_t* e = synapswap_engine_create(budget, SS_BACKEND_SIM, false);
    CHECK(e != NULL);
    CHECK(synapswap_engine_malloc(e, 64, 5, SS_POLICY_AUTO, NULL, 0x80) == NULL); /* unknown flag */
    void* r = synapswap_engine_malloc(e, 8192, 5, SS_POLICY_AUTO, NULL, SS_BLOCK_MUTABLE);
    CHECK(r != NULL);
    CHECK(synapswap_engine_free(e, NULL) == SS_SUCCESS);
    CHECK(synapswap_engine_hint(e, 3) == SS_ERR_NOT_FOUND);
    CHECK(synapswap_engine_release_on_stream(e, r, NULL) == SS_ERR_INVALID_PTR); /* no acquire */
    CHECK(synapswap_engine_acquire_on_stream(e, r, NULL, NULL) == SS_ERR_INVALID_PTR);
    CHECK(synapswap_engine_get_stats(e, NULL) == SS_ERR_INVALID_PTR);
    CHECK(synapswap_engine_wait_for_data((ss_engine_t*)forged, r) == SS_ERR_INVALID_PTR);
    CHECK(synapswap_engine_wait_for_data(NULL, r) == SS_ERR_INVALID_PTR);
    CHECK(synapswap_engine_wait_for_data(e, r) == SS_SUCCESS);
    CHECK(synapswap_engine_free(e, r) == SS_SUCCESS);
    CHECK(synapswap_engine_free(e, r) == SS_ERR_INVALID_PTR);
    synapswap_engine_destroy(e);
    CHECK(synapswap_engine_hint(e, 0) == SS_ERR_INVALID_PTR);     /* destroyed handle */
    synapswap_engine_destroy(e);                                  /* double destroy: an error */
    CHECK(synapswap_engine_get_vram_ptr(e, r) == NULL);

    printf("misuse: every bad input returned an error and the engines kept working\n");
    return 0;
}
