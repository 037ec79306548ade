//! The C ABI of SynapSwap: `libsynapswap.so` / `libsynapswap.a`, declared in
//! `include/synapswap.h`.
//!
//! The original global API (`synapswap_init` ... `synapswap_get_stats`) is kept exactly and runs on
//! one default engine; the instance API (`synapswap_engine_*`) runs any number of engines side by
//! side. Rules every entry point follows:
//! - no panic crosses the boundary: each entry runs under `catch_unwind`; a panic returns
//!   `SS_ERR_UNKNOWN` (or NULL) and poisons its engine, which then accepts only shutdown/destroy;
//! - bad input is an error code (or NULL) with the reason in `synapswap_last_error()`, never UB:
//!   engine handles are opaque tokens looked up in a registry (a forged or destroyed handle is
//!   `SS_ERR_INVALID_PTR`), block pointers are looked up in a map (the pointer `malloc` returned,
//!   exactly), and enum-typed inputs are read as `int` and range-checked;
//! - every entry point is thread-safe; blocking waits do not hold any lock that other calls need.
//!
//! The header is written by hand so the original declarations stay exactly as they were;
//! `tests/header.rs` regenerates the declarations from this file with cbindgen and fails if the
//! two drift apart.
#![allow(non_camel_case_types)]

mod instance;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};

use engine::backend::{Backend, SimConfig};
use engine::Engine;
use instance::{fail, Failure, Instance, Res};

/// Status codes (`ss_status_t`).
pub type ss_status_t = c_int;
/// Success.
pub const SS_SUCCESS: ss_status_t = 0;
/// Not initialised, initialised twice, shut down, or the engine could not start.
pub const SS_ERR_INITIALIZATION: ss_status_t = -1;
/// The device budget cannot hold the request.
pub const SS_ERR_OUT_OF_VRAM: ss_status_t = -2;
/// Host memory ran out.
pub const SS_ERR_OUT_OF_RAM: ss_status_t = -3;
/// NULL, unknown, forged or already-freed pointer or handle, or an invalid argument.
pub const SS_ERR_INVALID_PTR: ss_status_t = -4;
/// A node id that no dependency named.
pub const SS_ERR_NOT_FOUND: ss_status_t = -5;
/// The CUDA backend failed or is not available.
pub const SS_ERR_CUDA: ss_status_t = -6;
/// Anything else, including an internal panic (the engine is then poisoned).
pub const SS_ERR_UNKNOWN: ss_status_t = -99;

/// Block policies (`ss_policy_t`).
pub type ss_policy_t = c_int;
/// Farthest-next-use from the declared graph; least-recently-used when undeclared.
pub const SS_POLICY_AUTO: ss_policy_t = 0;
/// Stays on the device once loaded.
pub const SS_POLICY_STRICT_VRAM: ss_policy_t = 1;
/// Never predicted: least-recently-used.
pub const SS_POLICY_LRU: ss_policy_t = 2;
/// Evicted first once used.
pub const SS_POLICY_VOLATILE: ss_policy_t = 3;

/// Backends (`ss_backend_t`).
pub type ss_backend_t = c_int;
/// The best present: CUDA when a driver and a device are found, else sim.
pub const SS_BACKEND_AUTO: ss_backend_t = 0;
/// The simulated device: a host arena with paced copies.
pub const SS_BACKEND_SIM: ss_backend_t = 1;
/// CUDA.
pub const SS_BACKEND_CUDA: ss_backend_t = 2;

/// `synapswap_engine_malloc` flag: the device writes the block (a KV cache); it is written
/// back to its host copy before every eviction.
pub const SS_BLOCK_MUTABLE: u32 = 1;

/// Engine statistics.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ss_stats_t {
    /// Device budget.
    pub vram_total_bytes: usize,
    /// Device bytes allocated now.
    pub vram_used_bytes: usize,
    /// Bytes of the blocks' host copies.
    pub ram_swap_used_bytes: usize,
    /// Completed copies: loads plus write-backs.
    pub total_transfers: u64,
    /// Waits for blocks (`wait_for_data`, `get_vram_ptr`, acquires).
    pub total_access_count: u64,
    /// Mean duration of a completed copy, milliseconds.
    pub avg_transfer_latency_ms: f64,
    /// Waits that found the block already on the device (prefetched or kept), 0..1.
    pub prefetch_hit_rate: f32,
    /// Live blocks.
    pub active_blocks: u32,
}

/// An engine of the instance API (opaque: a token, never dereferenced).
#[repr(C)]
pub struct ss_engine_t {
    _private: [u8; 0],
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Live engines by handle, and the default engine of the global API.
struct Registry {
    engines: BTreeMap<usize, Arc<Instance>>,
    default: Option<Arc<Instance>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    engines: BTreeMap::new(),
    default: None,
});

fn registry() -> MutexGuard<'static, Registry> {
    // Nothing panics while the registry lock is held (no engine call runs under it), so a
    // poisoned lock can only come from outside; its data is still consistent.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` with no panic escaping: a panic becomes `on_panic`, the reason goes to
/// `synapswap_last_error`, and `inst` (if any) is poisoned.
fn boundary<T>(inst: Option<&Instance>, on_panic: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            if let Some(i) = inst {
                i.poison();
            }
            set_error(&format!(
                "internal error (panic: {what}); the engine accepts only shutdown/destroy now"
            ));
            on_panic
        }
    }
}

/// Records a failure for `synapswap_last_error` (and on stderr for verbose engines).
fn report(inst: Option<&Instance>, f: &Failure) -> ss_status_t {
    set_error(&f.message);
    if inst.is_some_and(Instance::verbose) {
        eprintln!("synapswap: {}", f.message);
    }
    f.status
}

fn status(inst: &Instance, r: Res<()>) -> ss_status_t {
    match r {
        Ok(()) => SS_SUCCESS,
        Err(f) => report(Some(inst), &f),
    }
}

fn pointer(inst: &Instance, r: Res<usize>) -> *mut c_void {
    match r {
        Ok(p) => p as *mut c_void,
        Err(f) => {
            report(Some(inst), &f);
            std::ptr::null_mut()
        }
    }
}

/// The instance behind an engine handle.
fn lookup(e: *mut ss_engine_t) -> Res<Arc<Instance>> {
    if e.is_null() {
        return fail(instance::ERR_INVALID_PTR, "NULL engine");
    }
    registry()
        .engines
        .get(&(e as usize))
        .cloned()
        .ok_or_else(|| Failure {
            status: instance::ERR_INVALID_PTR,
            message: format!("{e:p} is not a live engine (destroyed, or never created)"),
        })
}

/// The default engine of the global API.
fn default_engine() -> Res<Arc<Instance>> {
    registry().default.clone().ok_or_else(|| Failure {
        status: instance::ERR_INITIALIZATION,
        message: "synapswap_init has not been called (or synapswap_shutdown has)".into(),
    })
}

/// Runs `f` on the engine behind the handle `engine`: a status call of the instance API (a dead
/// or forged handle is `SS_ERR_INVALID_PTR`, a panic `SS_ERR_UNKNOWN`).
fn on_engine(engine: *mut ss_engine_t, f: impl FnOnce(&Instance) -> Res<()>) -> ss_status_t {
    with(
        || lookup(engine),
        SS_ERR_INVALID_PTR,
        SS_ERR_UNKNOWN,
        |i| status(i, f(i)),
    )
}

/// Runs `f` on the instance `get` finds; failures and panics become `err`.
fn with<T: Copy>(
    get: impl FnOnce() -> Res<Arc<Instance>>,
    err: T,
    unknown: T,
    f: impl FnOnce(&Instance) -> T,
) -> T {
    boundary(None, unknown, || match get() {
        Ok(inst) => boundary(Some(&inst), unknown, || f(&inst)),
        Err(failure) => {
            report(None, &failure);
            err
        }
    })
}

fn new_instance(vram_limit: usize, backend: ss_backend_t, verbose: bool) -> Res<Instance> {
    let kind = match backend {
        SS_BACKEND_AUTO => engine::backend::BackendKind::Auto,
        SS_BACKEND_SIM => engine::backend::BackendKind::Sim,
        SS_BACKEND_CUDA => engine::backend::BackendKind::Cuda,
        b => {
            return fail(
                instance::ERR_INVALID_PTR,
                format!("backend {b} is not an ss_backend_t"),
            )
        }
    };
    let (backend, fell_back): (Arc<dyn Backend>, _) =
        engine::backend::open(kind, SimConfig::default()).map_err(|e| {
            let mut f = Failure::from(e);
            if kind == engine::backend::BackendKind::Cuda {
                f.status = instance::ERR_CUDA;
            }
            f
        })?;
    if let (Some(why), true) = (fell_back, verbose) {
        eprintln!("synapswap: backend auto chose sim ({why})");
    }
    if vram_limit == 0 {
        return fail(instance::ERR_INITIALIZATION, "vram_limit is 0");
    }
    let engine = Engine::builder()
        .budget(vram_limit as u64)
        .backend(backend)
        .build()
        .map_err(|e| {
            let mut f = Failure::from(e);
            f.status = instance::ERR_INITIALIZATION;
            f
        })?;
    if verbose {
        eprintln!(
            "synapswap: engine started, {} bytes of device budget on {}",
            vram_limit,
            engine.backend_info().description
        );
    }
    Ok(Instance::new(engine, verbose))
}

/// # Safety
/// `tag` is NULL or a NUL-terminated string.
unsafe fn tag_string(tag: *const c_char) -> Option<String> {
    if tag.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    Some(
        unsafe { CStr::from_ptr(tag) }
            .to_string_lossy()
            .into_owned(),
    )
}

fn fill_stats(inst: &Instance, out: *mut ss_stats_t) -> Res<()> {
    if out.is_null() {
        return fail(instance::ERR_INVALID_PTR, "NULL stats pointer");
    }
    let s = inst.stats()?;
    let transfers = s.loads + s.writebacks;
    let stats = ss_stats_t {
        vram_total_bytes: s.vram_budget_bytes as usize,
        vram_used_bytes: s.device_used_bytes as usize,
        ram_swap_used_bytes: s.host_bytes as usize,
        total_transfers: transfers,
        total_access_count: s.waits,
        avg_transfer_latency_ms: if transfers == 0 {
            0.0
        } else {
            s.transfer_busy_s * 1e3 / transfers as f64
        },
        prefetch_hit_rate: s.hit_rate() as f32,
        active_blocks: u32::try_from(s.blocks).unwrap_or(u32::MAX),
    };
    // SAFETY: `out` is non-null and, by the caller's contract, points to writable memory for
    // one `ss_stats_t`; `write` does not read the old contents.
    unsafe { out.write(stats) };
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The original global API, on the default engine.

/// Starts the default engine with `vram_limit` bytes of device budget on the best backend (CUDA
/// when present, else sim; the environment variable `SYNAPSWAP_BACKEND=auto|sim|cuda` chooses).
/// `SS_ERR_INITIALIZATION` if it is already running; after `synapswap_shutdown` it starts anew.
#[no_mangle]
pub extern "C" fn synapswap_init(vram_limit: usize, verbose: bool) -> ss_status_t {
    boundary(None, SS_ERR_UNKNOWN, || {
        let mut reg = registry();
        if reg.default.is_some() {
            return report(
                None,
                &Failure {
                    status: SS_ERR_INITIALIZATION,
                    message: "synapswap_init was already called (call synapswap_shutdown first)"
                        .into(),
                },
            );
        }
        // Starting an engine spawns threads and allocates the pool: not under the registry lock.
        drop(reg);
        let backend = match std::env::var("SYNAPSWAP_BACKEND").as_deref() {
            Ok("sim") => SS_BACKEND_SIM,
            Ok("cuda") => SS_BACKEND_CUDA,
            Ok("auto") | Err(_) => SS_BACKEND_AUTO,
            Ok(other) => {
                return report(
                    None,
                    &Failure {
                        status: SS_ERR_INITIALIZATION,
                        message: format!("SYNAPSWAP_BACKEND={other}: expected auto, sim or cuda"),
                    },
                )
            }
        };
        match new_instance(vram_limit, backend, verbose) {
            Ok(inst) => {
                reg = registry();
                if reg.default.is_some() {
                    // Another thread won the race; this engine stops again.
                    drop(reg);
                    inst.shutdown();
                    return report(
                        None,
                        &Failure {
                            status: SS_ERR_INITIALIZATION,
                            message: "synapswap_init was already called".into(),
                        },
                    );
                }
                reg.default = Some(Arc::new(inst));
                SS_SUCCESS
            }
            Err(f) => report(None, &f),
        }
    })
}

/// Stops the default engine and frees every block. A no-op when it is not running.
#[no_mangle]
pub extern "C" fn synapswap_shutdown() {
    boundary(None, (), || {
        let inst = registry().default.take();
        if let Some(inst) = inst {
            inst.shutdown();
        }
    })
}

/// Allocates a block of `size` bytes and returns the address of its host copy, which the caller
/// fills. NULL on failure (size 0, larger than the budget, bad priority or policy, not
/// initialised), with the reason in `synapswap_last_error()`.
///
/// # Safety
/// `tag` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn synapswap_malloc(
    size: usize,
    priority: c_int,
    policy: ss_policy_t,
    tag: *const c_char,
) -> *mut c_void {
    // SAFETY: forwarded from this function's contract.
    let tag = unsafe { tag_string(tag) };
    with(
        default_engine,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        |i| pointer(i, i.malloc(size, priority, policy, tag, false)),
    )
}

/// Frees a block. NULL is a no-op; an unknown or already-freed pointer sets the last error.
#[no_mangle]
pub extern "C" fn synapswap_free(ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    with(default_engine, (), (), |i| {
        status(i, i.free(ptr as usize));
    })
}

/// Node `node_id` uses the block at `data_ptr`; node `next_node_id` follows it (-1: none).
#[no_mangle]
pub extern "C" fn synapswap_register_dependency(
    node_id: c_int,
    data_ptr: *mut c_void,
    next_node_id: c_int,
) {
    with(default_engine, (), (), |i| {
        status(
            i,
            i.register_dependency(node_id, data_ptr as usize, next_node_id),
        );
    })
}

/// Execution is at `node_id`: its blocks are protected, prefetching looks ahead from here, and
/// the device pointers handed out for earlier nodes stop being valid.
#[no_mangle]
pub extern "C" fn synapswap_precompute_hint(node_id: c_int) {
    with(default_engine, (), (), |i| {
        status(i, i.hint(node_id));
    })
}

/// Returns once the block is on the device (holding it there until a hint moves past this
/// node or the block is released).
#[no_mangle]
pub extern "C" fn synapswap_wait_for_data(ptr: *mut c_void) -> ss_status_t {
    with(default_engine, SS_ERR_INITIALIZATION, SS_ERR_UNKNOWN, |i| {
        status(i, i.device_ptr(ptr as usize).map(|_| ()))
    })
}

/// The block's device address (waiting for it first if needed); a host-readable address on
/// the sim backend. Valid until a hint moves past the current node or the block is released or
/// freed. NULL on failure.
#[no_mangle]
pub extern "C" fn synapswap_get_vram_ptr(ptr: *mut c_void) -> *mut c_void {
    with(
        default_engine,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        |i| pointer(i, i.device_ptr(ptr as usize)),
    )
}

/// Fills `*stats` with the default engine's statistics (left untouched on failure).
///
/// # Safety
/// `stats` is NULL or points to writable memory for one `ss_stats_t`.
#[no_mangle]
pub unsafe extern "C" fn synapswap_get_stats(stats: *mut ss_stats_t) {
    with(default_engine, (), (), |i| {
        status(i, fill_stats(i, stats));
    })
}

/// The reason for the last failure on this thread ("" if none). Valid until the next failing
/// call on this thread.
#[no_mangle]
pub extern "C" fn synapswap_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

// ---------------------------------------------------------------------------------------------
// The instance API.

/// Creates an engine with `vram_limit` bytes of device budget on `backend`. NULL on failure.
#[no_mangle]
pub extern "C" fn synapswap_engine_create(
    vram_limit: usize,
    backend: ss_backend_t,
    verbose: bool,
) -> *mut ss_engine_t {
    boundary(None, std::ptr::null_mut(), || {
        match new_instance(vram_limit, backend, verbose) {
            Ok(inst) => {
                let inst = Arc::new(inst);
                let handle = Arc::as_ptr(&inst) as usize;
                registry().engines.insert(handle, inst);
                handle as *mut ss_engine_t
            }
            Err(f) => {
                report(None, &f);
                std::ptr::null_mut()
            }
        }
    })
}

/// Stops an engine and frees its blocks. NULL is a no-op; an unknown handle sets the last error.
#[no_mangle]
pub extern "C" fn synapswap_engine_destroy(engine: *mut ss_engine_t) {
    if engine.is_null() {
        return;
    }
    boundary(None, (), || {
        let inst = registry().engines.remove(&(engine as usize));
        match inst {
            Some(inst) => inst.shutdown(),
            None => {
                report(
                    None,
                    &Failure {
                        status: SS_ERR_INVALID_PTR,
                        message: format!("{engine:p} is not a live engine"),
                    },
                );
            }
        }
    })
}

/// `synapswap_malloc` on `engine`; `flags` may hold `SS_BLOCK_MUTABLE`.
///
/// # Safety
/// `tag` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn synapswap_engine_malloc(
    engine: *mut ss_engine_t,
    size: usize,
    priority: c_int,
    policy: ss_policy_t,
    tag: *const c_char,
    flags: u32,
) -> *mut c_void {
    // SAFETY: forwarded from this function's contract.
    let tag = unsafe { tag_string(tag) };
    with(
        || lookup(engine),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        |i| {
            if flags & !SS_BLOCK_MUTABLE != 0 {
                return pointer(
                    i,
                    fail(SS_ERR_INVALID_PTR, format!("unknown flags {flags:#x}")),
                );
            }
            pointer(
                i,
                i.malloc(size, priority, policy, tag, flags & SS_BLOCK_MUTABLE != 0),
            )
        },
    )
}

/// Frees a block of `engine`. NULL `ptr` is a no-op.
#[no_mangle]
pub extern "C" fn synapswap_engine_free(engine: *mut ss_engine_t, ptr: *mut c_void) -> ss_status_t {
    if ptr.is_null() {
        return SS_SUCCESS;
    }
    on_engine(engine, |i| i.free(ptr as usize))
}

/// `synapswap_register_dependency` on `engine`.
#[no_mangle]
pub extern "C" fn synapswap_engine_register_dependency(
    engine: *mut ss_engine_t,
    node_id: c_int,
    data_ptr: *mut c_void,
    next_node_id: c_int,
) -> ss_status_t {
    on_engine(engine, |i| {
        i.register_dependency(node_id, data_ptr as usize, next_node_id)
    })
}

/// Node `node_id` may use the block at `data_ptr`, with `probability` per pass (a routed
/// expert: `k / n` of its candidates). A candidate is not loaded ahead on that alone (loading
/// every one would move `n / k` times the bytes used): it loads when waited for, or ahead once
/// `synapswap_engine_hint_choice` names it. `probability` lies in (0, 1]; registering the same
/// pair again updates it.
#[no_mangle]
pub extern "C" fn synapswap_engine_register_candidate(
    engine: *mut ss_engine_t,
    node_id: c_int,
    data_ptr: *mut c_void,
    probability: f64,
) -> ss_status_t {
    on_engine(engine, |i| {
        i.register_candidate(node_id, data_ptr as usize, probability)
    })
}

/// A routed node's choice before it runs: the `count` blocks at `data_ptrs` (each a candidate
/// registered for `node_id`) will be used at the node's coming occurrence (the node being run,
/// else its next one), `probabilities[i]` each: 1 for a router's output, less for a guess. They
/// are loaded ahead in deadline order; a wrong guess costs at most its own copy. The hint lapses
/// once that occurrence is past; a new one for the node replaces it; `count` 0 withdraws it.
/// `SS_ERR_NOT_FOUND` for an unknown node, `SS_ERR_INVALID_PTR` for an unknown block or NULL
/// arrays with `count` > 0, `SS_ERR_UNKNOWN` for a block that is not a candidate of the node or
/// a probability outside (0, 1]; nothing changes then.
///
/// # Safety
/// With `count` > 0, `data_ptrs` and `probabilities` point to `count` readable elements each.
#[no_mangle]
pub unsafe extern "C" fn synapswap_engine_hint_choice(
    engine: *mut ss_engine_t,
    node_id: c_int,
    data_ptrs: *const *mut c_void,
    probabilities: *const f64,
    count: usize,
) -> ss_status_t {
    on_engine(engine, |i| {
        if count > 0 && (data_ptrs.is_null() || probabilities.is_null()) {
            return fail(SS_ERR_INVALID_PTR, "NULL data_ptrs or probabilities");
        }
        let choices: Vec<(usize, f64)> = if count == 0 {
            Vec::new()
        } else {
            // SAFETY: non-null, and `count` readable elements each by the caller's contract.
            let (ptrs, probs) = unsafe {
                (
                    std::slice::from_raw_parts(data_ptrs, count),
                    std::slice::from_raw_parts(probabilities, count),
                )
            };
            ptrs.iter()
                .zip(probs)
                .map(|(&p, &q)| (p as usize, q))
                .collect()
        };
        i.hint_choice(node_id, &choices)
    })
}

/// `synapswap_precompute_hint` on `engine`; `SS_ERR_NOT_FOUND` for an unknown node.
#[no_mangle]
pub extern "C" fn synapswap_engine_hint(engine: *mut ss_engine_t, node_id: c_int) -> ss_status_t {
    on_engine(engine, |i| i.hint(node_id))
}

/// `synapswap_wait_for_data` on `engine`.
#[no_mangle]
pub extern "C" fn synapswap_engine_wait_for_data(
    engine: *mut ss_engine_t,
    ptr: *mut c_void,
) -> ss_status_t {
    on_engine(engine, |i| i.device_ptr(ptr as usize).map(|_| ()))
}

/// `synapswap_get_vram_ptr` on `engine`.
#[no_mangle]
pub extern "C" fn synapswap_engine_get_vram_ptr(
    engine: *mut ss_engine_t,
    ptr: *mut c_void,
) -> *mut c_void {
    with(
        || lookup(engine),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        |i| pointer(i, i.device_ptr(ptr as usize)),
    )
}

/// Ends the hold that `wait_for_data`/`get_vram_ptr` took on the block and the protection of the
/// current hint: the block may be evicted from now on (its device pointer is invalid).
#[no_mangle]
pub extern "C" fn synapswap_engine_release(
    engine: *mut ss_engine_t,
    ptr: *mut c_void,
) -> ss_status_t {
    on_engine(engine, |i| i.release(ptr as usize))
}

/// Stream-ordered acquire: makes the block's data available to work queued on `stream` (a
/// `CUstream`, or NULL for the default stream) and stores its device address in `*device_ptr`.
/// Each acquire needs a `synapswap_engine_release_on_stream`. On the sim backend, which has no
/// streams, the host waits until the block is on the device.
///
/// # Safety
/// `device_ptr` is NULL or points to writable memory for one pointer.
#[no_mangle]
pub unsafe extern "C" fn synapswap_engine_acquire_on_stream(
    engine: *mut ss_engine_t,
    ptr: *mut c_void,
    stream: *mut c_void,
    device_ptr: *mut *mut c_void,
) -> ss_status_t {
    on_engine(engine, |i| {
        if device_ptr.is_null() {
            return fail(SS_ERR_INVALID_PTR, "NULL device_ptr");
        }
        let addr = i.acquire_on_stream(ptr as usize, stream as u64)?;
        // SAFETY: non-null and writable by the caller's contract.
        unsafe { device_ptr.write(addr as *mut c_void) };
        Ok(())
    })
}

/// Stream-ordered release: the block's memory may be reused once the work queued on `stream`
/// so far has completed. On the sim backend: at once.
#[no_mangle]
pub extern "C" fn synapswap_engine_release_on_stream(
    engine: *mut ss_engine_t,
    ptr: *mut c_void,
    stream: *mut c_void,
) -> ss_status_t {
    on_engine(engine, |i| i.release_on_stream(ptr as usize, stream as u64))
}

/// Fills `*stats` with `engine`'s statistics.
///
/// # Safety
/// `stats` is NULL or points to writable memory for one `ss_stats_t`.
#[no_mangle]
pub unsafe extern "C" fn synapswap_engine_get_stats(
    engine: *mut ss_engine_t,
    stats: *mut ss_stats_t,
) -> ss_status_t {
    on_engine(engine, |i| fill_stats(i, stats))
}

#[cfg(test)]
mod tests;
