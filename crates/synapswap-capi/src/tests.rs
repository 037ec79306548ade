//! The C ABI called from Rust: what C sees, including the panic path (a test-only hook).

use super::*;
use std::ffi::CStr;
use std::sync::Mutex as StdMutex;

/// The global API shares one default engine: its tests run one at a time.
static GLOBAL: StdMutex<()> = StdMutex::new(());

fn last_error() -> String {
    // SAFETY: synapswap_last_error returns a valid NUL-terminated string owned by this thread.
    unsafe { CStr::from_ptr(synapswap_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_panic_becomes_unknown_and_poisons_the_engine() {
    let e = synapswap_engine_create(1 << 20, SS_BACKEND_SIM, false);
    assert!(!e.is_null());
    let tag = c"__test_panic__";
    // SAFETY: a valid engine handle and a NUL-terminated tag.
    let p = unsafe { synapswap_engine_malloc(e, 64, 5, SS_POLICY_AUTO, tag.as_ptr(), 0) };
    assert!(p.is_null());
    assert!(last_error().contains("panic"), "{}", last_error());
    // Poisoned: everything but destroy is refused.
    // SAFETY: as above, NULL tag.
    let p = unsafe { synapswap_engine_malloc(e, 64, 5, SS_POLICY_AUTO, std::ptr::null(), 0) };
    assert!(p.is_null());
    assert!(last_error().contains("only shutdown"), "{}", last_error());
    assert_eq!(synapswap_engine_hint(e, 0), SS_ERR_UNKNOWN);
    synapswap_engine_destroy(e);
    assert_eq!(synapswap_engine_hint(e, 0), SS_ERR_INVALID_PTR);
}

#[test]
fn the_global_api_round_trip() {
    let _g = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(
        synapswap_wait_for_data(8 as *mut c_void),
        SS_ERR_INITIALIZATION
    );
    assert_eq!(synapswap_init(1 << 20, false), SS_SUCCESS);
    assert_eq!(synapswap_init(1 << 20, false), SS_ERR_INITIALIZATION);
    // SAFETY: NULL tag is allowed.
    let p = unsafe { synapswap_malloc(1000, 5, SS_POLICY_AUTO, std::ptr::null()) };
    assert!(!p.is_null());
    // SAFETY: the engine handed out 1000 writable bytes at p.
    unsafe { std::ptr::write_bytes(p as *mut u8, 0xAB, 1000) };
    synapswap_register_dependency(0, p, -1);
    synapswap_precompute_hint(0);
    let d = synapswap_get_vram_ptr(p);
    assert!(!d.is_null());
    // SAFETY: on sim the device pointer is host memory of the block's 1000 bytes, held.
    let bytes = unsafe { std::slice::from_raw_parts(d as *const u8, 1000) };
    assert!(bytes.iter().all(|&b| b == 0xAB));
    let mut s = ss_stats_t::default();
    // SAFETY: a valid out pointer.
    unsafe { synapswap_get_stats(&mut s) };
    assert_eq!(s.vram_total_bytes, 1 << 20);
    assert_eq!(s.active_blocks, 1);
    assert!(s.total_transfers >= 1 && s.total_access_count >= 1);
    synapswap_free(p);
    synapswap_free(p);
    assert!(last_error().contains("not a live block"));
    synapswap_shutdown();
    synapswap_shutdown();
    assert_eq!(synapswap_init(1 << 20, false), SS_SUCCESS);
    synapswap_shutdown();
}

#[test]
fn status_codes_follow_the_error_variant_not_its_message() {
    use engine::{BlockId, Error};
    let code = |e: Error| instance::Failure::from(e).status;
    let id = BlockId::from_raw(7);
    // Host memory: its own code, whatever the message says.
    assert_eq!(code(Error::OutOfHostMemory(1 << 40)), SS_ERR_OUT_OF_RAM);
    let short = Error::HostMemory {
        needed: 2 << 30,
        available: 1 << 30,
        limit: "MemAvailable",
    };
    assert_eq!(code(short), SS_ERR_OUT_OF_RAM);
    // Messages that merely mention host memory are not out of it.
    assert_eq!(
        code(Error::Backend(
            "cannot register host memory: the range overlaps one registered".into()
        )),
        SS_ERR_UNKNOWN
    );
    let transfer = Error::Transfer {
        block: id,
        reason: "copy from host memory failed".into(),
    };
    assert_eq!(code(transfer), SS_ERR_UNKNOWN);
    assert_eq!(code(Error::StaleBlock(id)), SS_ERR_INVALID_PTR);
    assert_eq!(code(Error::NotHeld(id)), SS_ERR_INVALID_PTR);
    let oom = Error::OutOfDeviceMemory {
        needed: 1,
        budget: 1,
        held: 1,
        pinned: 0,
    };
    assert_eq!(code(oom), SS_ERR_OUT_OF_VRAM);
    let short = Error::DeviceMemory {
        needed: 8 << 30,
        margin: 256 << 20,
        free: 4 << 30,
        total: 8 << 30,
    };
    assert_eq!(code(short), SS_ERR_OUT_OF_VRAM);
    let unavailable = Error::BackendUnavailable {
        name: "cuda".into(),
        reason: "no driver".into(),
    };
    assert_eq!(code(unavailable), SS_ERR_CUDA);
    assert_eq!(code(Error::ShutDown), SS_ERR_INITIALIZATION);
}

#[test]
fn routed_nodes_take_candidates_and_choice_hints() {
    let e = synapswap_engine_create(4 << 20, SS_BACKEND_SIM, false);
    assert!(!e.is_null());
    // SAFETY: a valid engine handle, NULL tags.
    let alloc = || unsafe {
        let p = synapswap_engine_malloc(e, 1 << 20, 5, SS_POLICY_AUTO, std::ptr::null(), 0);
        assert!(!p.is_null());
        p
    };
    let dense = alloc();
    let experts: Vec<*mut c_void> = (0..4).map(|_| alloc()).collect();
    assert_eq!(
        synapswap_engine_register_dependency(e, 0, dense, 1),
        SS_SUCCESS
    );
    for &x in &experts {
        assert_eq!(
            synapswap_engine_register_candidate(e, 1, x, 0.25),
            SS_SUCCESS
        );
    }
    assert_eq!(
        synapswap_engine_register_candidate(e, 1, experts[0], 1.5),
        SS_ERR_UNKNOWN
    );
    assert!(last_error().contains("probability"), "{}", last_error());
    assert_eq!(synapswap_engine_hint(e, 0), SS_SUCCESS);
    let probs = [1.0f64];
    // SAFETY: one readable element in each array.
    let hint = |node: c_int, p: *mut c_void| unsafe {
        synapswap_engine_hint_choice(e, node, &p, probs.as_ptr(), 1)
    };
    assert_eq!(hint(1, experts[2]), SS_SUCCESS);
    // The hinted expert loads before node 1 runs; wait until it is on the device.
    let mut s = ss_stats_t::default();
    for _ in 0..1000 {
        // SAFETY: a valid out pointer.
        unsafe { synapswap_engine_get_stats(e, &mut s) };
        // The dense block of node 0, and the hinted expert.
        if s.total_transfers >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(
        s.total_transfers, 2,
        "the hinted candidate was not loaded ahead"
    );
    // Refused: an unknown node, a block that is not a candidate there, NULL arrays.
    assert_eq!(hint(7, experts[2]), SS_ERR_NOT_FOUND);
    assert_eq!(hint(1, dense), SS_ERR_UNKNOWN);
    assert!(
        last_error().contains("not declared at step"),
        "{}",
        last_error()
    );
    // SAFETY: NULL arrays with a count are refused before they are read.
    let r = unsafe { synapswap_engine_hint_choice(e, 1, std::ptr::null(), std::ptr::null(), 1) };
    assert_eq!(r, SS_ERR_INVALID_PTR);
    // SAFETY: count 0 reads nothing.
    let r = unsafe { synapswap_engine_hint_choice(e, 1, std::ptr::null(), std::ptr::null(), 0) };
    assert_eq!(r, SS_SUCCESS);
    synapswap_engine_destroy(e);
}
