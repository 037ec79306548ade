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
