//! Fuzzes the C ABI (issue 7): the input is decoded (with `arbitrary`) into a sequence of calls to
//! the instance API and the global API, with NULL, forged, interior and stale block pointers and
//! engine handles, size 0 and sizes above the budget, out-of-range priorities, policies, flags and
//! backends, double frees, calls after destroy and shutdown, and stream acquire/release.
//!
//! The C ABI crate builds only a cdylib and a staticlib (its library is named `synapswap`, like
//! the engine's), so its source is compiled into this target as a module: the functions called
//! below are exactly the `extern "C"` entry points of libsynapswap.
//!
//! Besides "no crash, no sanitizer report, no hang" (libFuzzer's -timeout), the target checks
//! what it can know from outside:
//! - every call with a dead or forged engine, or with a pointer that is not a live block of that
//!   engine, fails (an error status or NULL);
//! - a call that hands out a device pointer hands out the block's bytes: the shadow copy of what
//!   the caller wrote to the host pointer at malloc, or later through a device pointer of a
//!   mutable block (so a lost write-back is caught);
//! - `get_stats` reports no more device bytes than the budget and as many blocks as are live.
//!
//! libfuzzer-sys turns any panic into an abort, so a panic caught at the C boundary is a finding
//! too. Each input starts from no engines and ends by destroying every engine it created and
//! shutting the global engine down, so inputs replay alone.
#![no_main]

#[path = "../../crates/synapswap-capi/src/lib.rs"]
#[allow(dead_code)]
mod capi;

use std::ffi::{c_void, CString};

use arbitrary::Arbitrary;
use capi::*;
use libfuzzer_sys::fuzz_target;

/// At most this many engines live at once (each has two threads).
const MAX_ENGINES: usize = 4;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Budget {
    /// 256 B .. 256 KiB.
    Small(u16),
    Zero,
    Huge(bool),
}

impl Budget {
    fn bytes(self) -> usize {
        match self {
            Budget::Small(v) => (v as usize % 1024 + 1) * 256,
            Budget::Zero => 0,
            Budget::Huge(false) => 1 << 50,
            Budget::Huge(true) => usize::MAX,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Size {
    /// 1 B .. 16 KiB.
    Small(u16),
    Zero,
    Huge(bool),
}

impl Size {
    fn bytes(self) -> usize {
        match self {
            Size::Small(v) => v as usize % (16 << 10) + 1,
            Size::Zero => 0,
            Size::Huge(false) => 1 << 48,
            Size::Huge(true) => usize::MAX,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum PtrSel {
    Live(u8),
    Stale(u8),
    Interior(u8, u16),
    Null,
    Forged(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum EngSel {
    Live(u8),
    Stale(u8),
    Null,
    Forged(u64),
}

#[derive(Arbitrary, Debug)]
struct Alloc {
    size: Size,
    priority: i8,
    policy: i8,
    flags: u8,
    tag: Option<Vec<u8>>,
    fill: u8,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Create {
        budget: Budget,
        backend: i8,
    },
    Destroy(EngSel),
    Malloc(EngSel, Alloc),
    Free(EngSel, PtrSel),
    Register {
        engine: EngSel,
        node: i8,
        ptr: PtrSel,
        next: i8,
    },
    Hint(EngSel, i8),
    Wait(EngSel, PtrSel),
    VramPtr {
        engine: EngSel,
        ptr: PtrSel,
        write: Option<u8>,
    },
    Release(EngSel, PtrSel),
    AcquireOnStream {
        engine: EngSel,
        ptr: PtrSel,
        stream: u8,
        null_out: bool,
        write: Option<u8>,
    },
    ReleaseOnStream {
        engine: EngSel,
        ptr: PtrSel,
        stream: u8,
    },
    Stats(EngSel, bool),
    Init(Budget),
    Shutdown,
    GMalloc(Alloc),
    GFree(PtrSel),
    GRegister {
        node: i8,
        ptr: PtrSel,
        next: i8,
    },
    GHint(i8),
    GWait(PtrSel),
    GVramPtr {
        ptr: PtrSel,
        write: Option<u8>,
    },
    GStats(bool),
}

/// A block the target allocated: its owner (an engine handle, 0 for the global engine), host
/// pointer, and the bytes it must hold.
struct Block {
    owner: usize,
    ptr: usize,
    mutable: bool,
    shadow: Vec<u8>,
    live: bool,
}

#[derive(Default)]
struct World {
    /// Engine handles ever created, and whether each is live.
    engines: Vec<(usize, bool)>,
    blocks: Vec<Block>,
}

const GLOBAL: usize = 0;

impl World {
    fn live_engine(&self, h: usize) -> bool {
        h != GLOBAL && self.engines.iter().any(|&(e, live)| live && e == h)
    }

    fn engine(&self, sel: EngSel) -> usize {
        let pick = |live: bool, i: u8| {
            let v: Vec<usize> = self
                .engines
                .iter()
                .filter(|e| e.1 == live)
                .map(|e| e.0)
                .collect();
            (!v.is_empty()).then(|| v[i as usize % v.len()])
        };
        match sel {
            EngSel::Live(i) => pick(true, i).unwrap_or(0),
            EngSel::Stale(i) => pick(false, i).unwrap_or(0xdead_0000),
            EngSel::Null => 0,
            EngSel::Forged(v) => v as usize,
        }
    }

    fn pointer(&self, sel: PtrSel) -> usize {
        let pick = |live: bool, i: u8| {
            let v: Vec<&Block> = self.blocks.iter().filter(|b| b.live == live).collect();
            (!v.is_empty()).then(|| v[i as usize % v.len()])
        };
        match sel {
            PtrSel::Live(i) => pick(true, i).map_or(0, |b| b.ptr),
            PtrSel::Stale(i) => pick(false, i).map_or(0xbad0, |b| b.ptr),
            PtrSel::Interior(i, off) => {
                pick(true, i).map_or(0x10, |b| b.ptr + 1 + off as usize % b.shadow.len().max(1))
            }
            PtrSel::Null => 0,
            PtrSel::Forged(v) => v as usize,
        }
    }

    /// The live block of `owner` at `ptr`, if there is one (a stale or forged pointer can equal a
    /// live one when an address is reused; then it is that block).
    fn block(&mut self, owner: usize, ptr: usize) -> Option<&mut Block> {
        self.blocks
            .iter_mut()
            .find(|b| b.live && b.owner == owner && b.ptr == ptr)
    }

    /// Whether `h` is a live engine and `p` one of its live blocks: what a call needs to succeed.
    fn valid(&mut self, h: usize, p: usize) -> bool {
        self.live_engine(h) && self.block(h, p).is_some()
    }

    fn live_blocks(&self, owner: usize) -> usize {
        self.blocks
            .iter()
            .filter(|b| b.live && b.owner == owner)
            .count()
    }

    fn drop_blocks_of(&mut self, owner: usize) {
        for b in &mut self.blocks {
            if b.owner == owner {
                b.live = false;
            }
        }
    }

    /// Records a block `malloc` returned and fills its host copy.
    fn allocated(&mut self, owner: usize, p: *mut c_void, a: &Alloc, size: usize) {
        if p.is_null() {
            return;
        }
        let ptr = p as usize;
        assert!(
            !self.blocks.iter().any(|b| b.live && b.ptr == ptr),
            "malloc returned the pointer of a live block"
        );
        let shadow: Vec<u8> = (0..size)
            .map(|i| a.fill.wrapping_add((i % 251) as u8))
            .collect();
        // SAFETY: malloc returned a host copy of `size` bytes for the caller to fill, and the
        // block has not been used yet, so no copy of it is in flight.
        unsafe { std::ptr::copy_nonoverlapping(shadow.as_ptr(), p.cast::<u8>(), size) };
        self.blocks.push(Block {
            owner,
            ptr,
            mutable: a.flags as u32 & SS_BLOCK_MUTABLE != 0,
            shadow,
            live: true,
        });
    }

    /// Checks the bytes behind a device pointer just handed out for the block at `ptr`, and, if
    /// asked and the block is mutable, writes new ones there (the sim device is host memory).
    fn device(&mut self, owner: usize, ptr: usize, dev: *mut c_void, write: Option<u8>) {
        let Some(b) = self.block(owner, ptr) else {
            panic!("a device pointer for {ptr:#x}, which is not a live block of {owner:#x}");
        };
        assert!(!dev.is_null());
        let len = b.shadow.len();
        // SAFETY: the call that returned `dev` holds the block on the device until the next
        // hint, release or free; on the sim backend device memory is host memory of `len` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(dev.cast::<u8>(), len) };
        assert!(bytes == &b.shadow[..], "block {ptr:#x} served wrong bytes");
        if let (Some(w), true) = (write, b.mutable) {
            for (i, s) in b.shadow.iter_mut().enumerate() {
                *s = w.wrapping_mul(3).wrapping_add((i % 241) as u8);
            }
            // SAFETY: as above; the block is mutable, so the engine writes these bytes back to
            // its host copy before it evicts it.
            unsafe { std::ptr::copy_nonoverlapping(b.shadow.as_ptr(), dev.cast::<u8>(), len) };
        }
    }
}

fn tag(t: &Option<Vec<u8>>) -> Option<CString> {
    t.as_ref().map(|v| {
        let cut: Vec<u8> = v.iter().copied().take_while(|&c| c != 0).collect();
        CString::new(cut).expect("no interior NUL")
    })
}

fn check_stats(w: &World, owner: usize, s: &ss_stats_t) {
    assert!(
        s.vram_used_bytes <= s.vram_total_bytes,
        "device bytes over budget: {s:?}"
    );
    assert_eq!(
        s.active_blocks as usize,
        w.live_blocks(owner),
        "active_blocks disagrees with the live blocks"
    );
}

fn run(ops: Vec<Op>) {
    let mut w = World::default();
    let mut global_up = false;
    for op in ops {
        match op {
            Op::Create { budget, backend } => {
                let live: Vec<usize> = w.engines.iter().filter(|e| e.1).map(|e| e.0).collect();
                if live.len() >= MAX_ENGINES {
                    synapswap_engine_destroy(live[0] as *mut ss_engine_t);
                    w.engines.iter_mut().find(|e| e.0 == live[0]).unwrap().1 = false;
                    w.drop_blocks_of(live[0]);
                }
                let e = synapswap_engine_create(budget.bytes(), backend as ss_backend_t, false);
                if !e.is_null() {
                    let h = e as usize;
                    assert!(!w.live_engine(h), "create returned a live handle");
                    w.engines.retain(|x| x.0 != h);
                    w.engines.push((h, true));
                }
            }
            Op::Destroy(sel) => {
                let h = w.engine(sel);
                synapswap_engine_destroy(h as *mut ss_engine_t);
                if w.live_engine(h) {
                    w.engines.iter_mut().find(|e| e.0 == h).unwrap().1 = false;
                    w.drop_blocks_of(h);
                }
            }
            Op::Malloc(sel, a) => {
                let h = w.engine(sel);
                let size = a.size.bytes();
                let t = tag(&a.tag);
                // SAFETY: the tag is NULL or a NUL-terminated string.
                let p = unsafe {
                    synapswap_engine_malloc(
                        h as *mut ss_engine_t,
                        size,
                        a.priority as i32,
                        a.policy as ss_policy_t,
                        t.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
                        a.flags as u32,
                    )
                };
                if !w.live_engine(h) || size == 0 {
                    assert!(
                        p.is_null(),
                        "malloc on a dead engine or of 0 bytes succeeded"
                    );
                }
                w.allocated(h, p, &a, size);
            }
            Op::Free(sel, ps) => {
                let (h, p) = (w.engine(sel), w.pointer(ps));
                let r = synapswap_engine_free(h as *mut ss_engine_t, p as *mut c_void);
                let valid = w.valid(h, p);
                if !valid {
                    assert!(
                        r != SS_SUCCESS || p == 0,
                        "free of {p:#x} on {h:#x} succeeded"
                    );
                } else if r == SS_SUCCESS {
                    w.block(h, p).unwrap().live = false;
                }
            }
            Op::Register {
                engine,
                node,
                ptr,
                next,
            } => {
                let (h, p) = (w.engine(engine), w.pointer(ptr));
                let r = synapswap_engine_register_dependency(
                    h as *mut ss_engine_t,
                    node as i32,
                    p as *mut c_void,
                    next as i32,
                );
                if !(w.valid(h, p)) {
                    assert_ne!(r, SS_SUCCESS, "register with a bad engine or pointer");
                }
            }
            Op::Hint(sel, node) => {
                let h = w.engine(sel);
                let r = synapswap_engine_hint(h as *mut ss_engine_t, node as i32);
                if !w.live_engine(h) {
                    assert_ne!(r, SS_SUCCESS);
                }
            }
            Op::Wait(sel, ps) => {
                let (h, p) = (w.engine(sel), w.pointer(ps));
                let r = synapswap_engine_wait_for_data(h as *mut ss_engine_t, p as *mut c_void);
                if !(w.valid(h, p)) {
                    assert_ne!(r, SS_SUCCESS, "wait with a bad engine or pointer");
                }
            }
            Op::VramPtr { engine, ptr, write } => {
                let (h, p) = (w.engine(engine), w.pointer(ptr));
                let d = synapswap_engine_get_vram_ptr(h as *mut ss_engine_t, p as *mut c_void);
                if w.valid(h, p) {
                    if !d.is_null() {
                        w.device(h, p, d, write);
                    }
                } else {
                    assert!(d.is_null(), "a device pointer for a bad engine or pointer");
                }
            }
            Op::Release(sel, ps) => {
                let (h, p) = (w.engine(sel), w.pointer(ps));
                let r = synapswap_engine_release(h as *mut ss_engine_t, p as *mut c_void);
                if !(w.valid(h, p)) {
                    assert_ne!(r, SS_SUCCESS, "release with a bad engine or pointer");
                }
            }
            Op::AcquireOnStream {
                engine,
                ptr,
                stream,
                null_out,
                write,
            } => {
                let (h, p) = (w.engine(engine), w.pointer(ptr));
                let mut dev: *mut c_void = std::ptr::null_mut();
                let out = if null_out {
                    std::ptr::null_mut()
                } else {
                    &mut dev as *mut *mut c_void
                };
                // SAFETY: `out` is NULL or points to a writable pointer; a stream is an opaque
                // CUstream, which the sim backend never dereferences.
                let r = unsafe {
                    synapswap_engine_acquire_on_stream(
                        h as *mut ss_engine_t,
                        p as *mut c_void,
                        stream as usize as *mut c_void,
                        out,
                    )
                };
                if !(w.valid(h, p)) || null_out {
                    assert_ne!(r, SS_SUCCESS, "acquire_on_stream with bad arguments");
                } else if r == SS_SUCCESS {
                    w.device(h, p, dev, write);
                }
            }
            Op::ReleaseOnStream {
                engine,
                ptr,
                stream,
            } => {
                let (h, p) = (w.engine(engine), w.pointer(ptr));
                let r = synapswap_engine_release_on_stream(
                    h as *mut ss_engine_t,
                    p as *mut c_void,
                    stream as usize as *mut c_void,
                );
                if !(w.valid(h, p)) {
                    assert_ne!(r, SS_SUCCESS, "release_on_stream with bad arguments");
                }
            }
            Op::Stats(sel, null) => {
                let h = w.engine(sel);
                let mut s = ss_stats_t::default();
                let out = if null {
                    std::ptr::null_mut()
                } else {
                    &mut s as *mut ss_stats_t
                };
                // SAFETY: NULL or a pointer to one writable ss_stats_t.
                let r = unsafe { synapswap_engine_get_stats(h as *mut ss_engine_t, out) };
                if !w.live_engine(h) || null {
                    assert_ne!(r, SS_SUCCESS);
                } else if r == SS_SUCCESS {
                    check_stats(&w, h, &s);
                }
            }
            Op::Init(budget) => {
                let r = synapswap_init(budget.bytes(), false);
                if global_up {
                    assert_ne!(r, SS_SUCCESS, "init twice succeeded");
                }
                global_up |= r == SS_SUCCESS;
            }
            Op::Shutdown => {
                synapswap_shutdown();
                global_up = false;
                w.drop_blocks_of(GLOBAL);
            }
            Op::GMalloc(a) => {
                let size = a.size.bytes();
                let t = tag(&a.tag);
                // SAFETY: the tag is NULL or a NUL-terminated string.
                let p = unsafe {
                    synapswap_malloc(
                        size,
                        a.priority as i32,
                        a.policy as ss_policy_t,
                        t.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
                    )
                };
                if !global_up || size == 0 {
                    assert!(p.is_null());
                }
                // The global API has no flags: its blocks are read-only on the device.
                let a = Alloc { flags: 0, ..a };
                w.allocated(GLOBAL, p, &a, size);
            }
            Op::GFree(ps) => {
                let p = w.pointer(ps);
                synapswap_free(p as *mut c_void);
                if let Some(b) = w.block(GLOBAL, p) {
                    b.live = false;
                }
            }
            Op::GRegister { node, ptr, next } => {
                let p = w.pointer(ptr);
                synapswap_register_dependency(node as i32, p as *mut c_void, next as i32);
            }
            Op::GHint(node) => synapswap_precompute_hint(node as i32),
            Op::GWait(ps) => {
                let p = w.pointer(ps);
                let r = synapswap_wait_for_data(p as *mut c_void);
                if !(global_up && w.block(GLOBAL, p).is_some()) {
                    assert_ne!(r, SS_SUCCESS, "global wait with a bad pointer");
                }
            }
            Op::GVramPtr { ptr, write } => {
                let p = w.pointer(ptr);
                let d = synapswap_get_vram_ptr(p as *mut c_void);
                if global_up && w.block(GLOBAL, p).is_some() {
                    if !d.is_null() {
                        w.device(GLOBAL, p, d, write);
                    }
                } else {
                    assert!(d.is_null(), "a global device pointer for a bad pointer");
                }
            }
            Op::GStats(null) => {
                let mut s = ss_stats_t {
                    vram_total_bytes: 12345,
                    ..Default::default()
                };
                let out = if null {
                    std::ptr::null_mut()
                } else {
                    &mut s as *mut ss_stats_t
                };
                // SAFETY: NULL or a pointer to one writable ss_stats_t.
                unsafe { synapswap_get_stats(out) };
                // Untouched (the sentinel budget, not a multiple of 256) means the call failed.
                if global_up && !null && s.vram_total_bytes != 12345 {
                    check_stats(&w, GLOBAL, &s);
                }
            }
        }
        // The last error is always a valid C string.
        // SAFETY: synapswap_last_error returns a NUL-terminated string owned by this thread.
        let _ = unsafe { std::ffi::CStr::from_ptr(synapswap_last_error()) }.to_bytes();
    }
    for &(h, live) in &w.engines {
        if live {
            synapswap_engine_destroy(h as *mut ss_engine_t);
        }
    }
    synapswap_shutdown();
}

fuzz_target!(|ops: Vec<Op>| run(ops));
