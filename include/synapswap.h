/*
 * SynapSwap: run models whose weights do not fit in GPU memory.
 *
 * Link with libsynapswap (`cargo build --release` builds target/release/libsynapswap.so and
 * libsynapswap.a; see the README for the link lines).
 *
 * The first part is the original API, kept exactly: code written against it compiles and runs
 * unchanged. It runs on one default engine. The second part adds an instance API (any number of
 * engines side by side), an explicit release, stream-ordered acquire/release, and
 * synapswap_last_error().
 *
 * Rules of every function:
 * - thread-safe; no Rust panic crosses this boundary: an internal panic returns SS_ERR_UNKNOWN
 *   (or NULL) and poisons its engine, which then accepts only shutdown/destroy;
 * - bad input is an error code or NULL, with the reason in synapswap_last_error(): NULL (except
 *   to the free and shutdown/destroy functions, where it is a no-op), unknown, forged or freed
 *   pointers and engine handles (SS_ERR_INVALID_PTR), size 0 or larger than the budget (NULL),
 *   calls before init or after shutdown (SS_ERR_INITIALIZATION), init twice
 *   (SS_ERR_INITIALIZATION); init after shutdown starts a new engine;
 * - a block is named by the pointer synapswap_malloc returned, exactly (not an interior one).
 *
 * Data: synapswap_malloc returns the block's host copy, zeroed; fill it before the block is
 * first used. Later writes to the host copy reach the device when the block is next loaded.
 * Device pointers (synapswap_get_vram_ptr) are valid until a hint moves past the node that
 * obtained them, or the block is released or freed; on the sim backend they are host addresses
 * the CPU can read.
 *
 * Stream order: the original API has no stream argument, so a hint past a node, release and free
 * end a hold after the work queued so far on the default (legacy) stream: the engine records an
 * event there and reuses the block's memory (or writes a mutable block back) only once it has
 * completed. On CUDA that covers kernels on the legacy default stream and on every *blocking*
 * stream (created without CU_STREAM_NON_BLOCKING) queued before the release; it does NOT cover
 * non-blocking streams (PyTorch's side streams, for one) or the per-thread default stream:
 * use synapswap_engine_acquire_on_stream/release_on_stream for work on those.
 */
#ifndef SYNAPSWAP_H
#define SYNAPSWAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- The original API ------------------------------------------------------------------ */

typedef enum {
    SS_SUCCESS = 0,
    SS_ERR_INITIALIZATION = -1,
    SS_ERR_OUT_OF_VRAM = -2,
    SS_ERR_OUT_OF_RAM = -3,
    SS_ERR_INVALID_PTR = -4,
    SS_ERR_NOT_FOUND = -5,
    SS_ERR_CUDA = -6,
    SS_ERR_UNKNOWN = -99
} ss_status_t;

typedef enum {
    SS_POLICY_AUTO = 0,
    SS_POLICY_STRICT_VRAM,
    SS_POLICY_LRU,
    SS_POLICY_VOLATILE
} ss_policy_t;

typedef struct {
    size_t vram_total_bytes, vram_used_bytes, ram_swap_used_bytes;
    uint64_t total_transfers, total_access_count;
    double avg_transfer_latency_ms;
    float prefetch_hit_rate;
    uint32_t active_blocks;
} ss_stats_t;

/* Starts the default engine with vram_limit bytes of device budget (rounded down to 256 B), on
 * CUDA when a driver and a device are present, else on sim; SYNAPSWAP_BACKEND=auto|sim|cuda in
 * the environment chooses. */
ss_status_t synapswap_init(size_t vram_limit, bool verbose);
/* Stops the default engine and frees every block (no-op when not running). */
void        synapswap_shutdown(void);
/* A block of size bytes; returns its host copy for the caller to fill (NULL on failure).
 * priority: 0 (evict first) .. 10 (keep longest). */
void*       synapswap_malloc(size_t size, int priority /*0..10*/, ss_policy_t policy, const char* tag);
/* Frees a block (NULL: no-op). */
void        synapswap_free(void* ptr);
/* Node node_id uses the block at data_ptr; node next_node_id follows it (-1: none). */
void        synapswap_register_dependency(int node_id, void* data_ptr, int next_node_id);
/* Execution is at node_id. */
void        synapswap_precompute_hint(int node_id);
/* Returns once the block is on the device. */
ss_status_t synapswap_wait_for_data(void* ptr);
/* The block's device address (waits for it first if needed); NULL on failure. */
void*       synapswap_get_vram_ptr(void* ptr);
/* Fills *stats (left untouched on failure). */
void        synapswap_get_stats(ss_stats_t* stats);

/* ---- Added ----------------------------------------------------------------------------- */

/* The reason for the last failure on this thread ("" if none); valid until the next failure. */
const char* synapswap_last_error(void);

/* An engine of the instance API (opaque). */
typedef struct ss_engine ss_engine_t;

typedef enum {
    SS_BACKEND_AUTO = 0, /* CUDA when a driver and a device are present, else sim */
    SS_BACKEND_SIM = 1,  /* simulated device: a host arena with paced copies */
    SS_BACKEND_CUDA = 2
} ss_backend_t;

/* synapswap_engine_malloc flag: the device writes this block (a KV cache); it is written back
 * to its host copy before eviction. The C API cannot tell whether a kernel wrote through the
 * device pointer, so every hold of such a block counts as a write. */
#define SS_BLOCK_MUTABLE 1u

/* A new engine (NULL on failure). */
ss_engine_t* synapswap_engine_create(size_t vram_limit, ss_backend_t backend, bool verbose);
/* Stops an engine and frees its blocks (NULL: no-op). */
void         synapswap_engine_destroy(ss_engine_t* engine);
void*        synapswap_engine_malloc(ss_engine_t* engine, size_t size, int priority, ss_policy_t policy, const char* tag, uint32_t flags);
ss_status_t  synapswap_engine_free(ss_engine_t* engine, void* ptr);
ss_status_t  synapswap_engine_register_dependency(ss_engine_t* engine, int node_id, void* data_ptr, int next_node_id);
/* Routed (MoE) nodes: node_id may use data_ptr with this probability per pass (k / n of its
 * candidates). A candidate loads when waited for, or ahead once hint_choice names it. */
ss_status_t  synapswap_engine_register_candidate(ss_engine_t* engine, int node_id, void* data_ptr, double probability);
/* The router's output (probability 1) or a guess (< 1) for node_id's coming occurrence (the node
 * being run, else its next one): these candidates load ahead in deadline order; the hint lapses
 * once that occurrence is past. count 0 withdraws it. */
ss_status_t  synapswap_engine_hint_choice(ss_engine_t* engine, int node_id, void* const* data_ptrs, const double* probabilities, size_t count);
/* SS_ERR_NOT_FOUND for a node no dependency named. */
ss_status_t  synapswap_engine_hint(ss_engine_t* engine, int node_id);
ss_status_t  synapswap_engine_wait_for_data(ss_engine_t* engine, void* ptr);
void*        synapswap_engine_get_vram_ptr(ss_engine_t* engine, void* ptr);
/* Ends the hold of wait_for_data/get_vram_ptr and the current hint's protection of the block. */
ss_status_t  synapswap_engine_release(ss_engine_t* engine, void* ptr);
/* Makes the block available to work on stream (a CUstream; NULL: default stream) and stores its
 * device address in *device_ptr; pair each with release_on_stream. A block whose copy is already
 * in flight is not waited for on the host: the stream waits on the copy's event, so only work
 * queued on the stream may use the bytes (host code that reads them, as on the sim backend, calls
 * wait_for_data first). A block not on its way is loaded and waited for on the host. */
ss_status_t  synapswap_engine_acquire_on_stream(ss_engine_t* engine, void* ptr, void* stream, void** device_ptr);
/* The block's memory may be reused once the work queued on stream so far has completed.
 * synapswap_engine_free ends any remaining acquire_on_stream holds on their own streams. */
ss_status_t  synapswap_engine_release_on_stream(ss_engine_t* engine, void* ptr, void* stream);
ss_status_t  synapswap_engine_get_stats(ss_engine_t* engine, ss_stats_t* stats);

#ifdef __cplusplus
}
#endif

#endif /* SYNAPSWAP_H */
