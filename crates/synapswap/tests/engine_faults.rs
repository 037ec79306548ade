//! Fault injection: a backend (compiled only in this test) that makes the next N device
//! allocations, host allocations, host pins (registering a caller's buffer), copy submits, copy
//! completions or stream-fence records fail. Each failure must reach the caller as an error,
//! waiters must return, nothing may leak, and the engine must stay usable.
//!
//! Every test prints `failpoint <name>: <n> injected` for the failpoints it fired (run with
//! `--nocapture`); `scripts/reliability.sh` adds them up and checks that each one fired.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

mod common;
use common::{Hooked, Hooks};
use synapswap::backend::{Backend, Fence, SimBackend};
use synapswap::{BlockSpec, Engine, Error, Residency};

#[derive(Debug, Default)]
struct Faults {
    device_allocs: AtomicU32,
    host_allocs: AtomicU32,
    host_pins: AtomicU32,
    submits: AtomicU32,
    completions: AtomicU32,
    fences: AtomicU32,
    injected: AtomicU64,
    /// Injected failures by failpoint, in the order of [`Faults::NAMES`].
    fired: [AtomicU64; 6],
}

impl Faults {
    const NAMES: [&'static str; 6] = [
        "device-alloc",
        "host-alloc",
        "host-pin",
        "copy-submit",
        "copy-completion",
        "fence-record",
    ];

    /// An injected error if failpoint `n` fires.
    fn fail(&self, n: &AtomicU32, what: &str) -> synapswap::Result<()> {
        if self.take(n) {
            return Err(Error::Backend(format!("injected: {what}")));
        }
        Ok(())
    }

    fn take(&self, n: &AtomicU32) -> bool {
        let hit = n
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
            .is_ok();
        if hit {
            self.injected.fetch_add(1, Ordering::SeqCst);
            let which = [
                &self.device_allocs,
                &self.host_allocs,
                &self.host_pins,
                &self.submits,
                &self.completions,
                &self.fences,
            ]
            .iter()
            .position(|c| std::ptr::eq(*c, n))
            .expect("a failpoint of this struct");
            self.fired[which].fetch_add(1, Ordering::SeqCst);
        }
        hit
    }
}

impl Drop for Faults {
    fn drop(&mut self) {
        for (name, n) in Self::NAMES.iter().zip(&self.fired) {
            let n = n.load(Ordering::SeqCst);
            if n > 0 {
                println!("failpoint {name}: {n} injected");
            }
        }
    }
}

/// The sim with the failpoints of [`Faults`].
type Faulty = Hooked<Arc<Faults>>;

impl Hooks for Arc<Faults> {
    fn alloc_device(&self) -> synapswap::Result<()> {
        self.fail(&self.device_allocs, "device allocation failed")
    }
    fn alloc_host(&self) -> synapswap::Result<()> {
        self.fail(&self.host_allocs, "out of host memory")
    }
    fn register_host(&self) -> synapswap::Result<()> {
        self.fail(&self.host_pins, "cannot pin the host buffer")
    }
    fn submit(&self) -> synapswap::Result<()> {
        self.fail(&self.submits, "copy submit failed")
    }
    fn wait(&self) -> synapswap::Result<()> {
        self.fail(&self.completions, "copy failed")
    }
    fn record_fence(&self, sim: &SimBackend, stream: u64) -> synapswap::Result<Option<Fence>> {
        self.fail(&self.fences, "cannot record a fence")?;
        sim.record_fence(stream)
    }
}

fn setup(budget: u64) -> (Engine, Arc<Faults>, Arc<Faulty>) {
    let faults = Arc::new(Faults::default());
    let backend = Arc::new(Faulty::unpaced(faults.clone()));
    let engine = Engine::builder()
        .budget(budget)
        .backend(backend.clone())
        .chunk_bytes(16 << 10)
        .build()
        .unwrap();
    (engine, faults, backend)
}

fn filled(engine: &Engine, size: u64, byte: u8) -> synapswap::BlockId {
    let id = engine.alloc(BlockSpec::new(size)).unwrap();
    engine.write(id, 0, &vec![byte; size as usize]).unwrap();
    id
}

fn check(engine: &Engine, id: synapswap::BlockId, byte: u8) {
    let g = engine.wait(id).unwrap();
    assert!(g.as_slice().unwrap().iter().all(|&x| x == byte));
}

#[test]
fn a_failed_device_allocation_is_an_error_at_build() {
    let faults = Arc::new(Faults::default());
    faults.device_allocs.store(1, Ordering::SeqCst);
    let backend = Arc::new(Faulty::unpaced(faults.clone()));
    let r = Engine::builder()
        .budget(1 << 20)
        .backend(backend.clone())
        .build();
    assert!(matches!(r, Err(Error::Backend(_))), "{r:?}");
    assert_eq!(backend.inner.live_device_bytes(), 0);
    // The same backend works once the fault is spent.
    let e = Engine::builder()
        .budget(1 << 20)
        .backend(backend)
        .build()
        .unwrap();
    e.shutdown();
    assert_eq!(faults.injected.load(Ordering::SeqCst), 1);
}

#[test]
fn a_failed_host_allocation_is_an_error_and_nothing_changes() {
    let big = synapswap::host_tier::SLAB_MAX_BLOCK + (64 << 10);
    let (engine, faults, backend) = setup(2 * big);
    // Small blocks are cut from host slabs: the first one opens a slab, and that allocation
    // fails (twice); the placer gives the place back, so the third try opens it.
    faults.host_allocs.store(2, Ordering::SeqCst);
    for _ in 0..2 {
        assert!(matches!(
            engine.alloc(BlockSpec::new(64 << 10)),
            Err(Error::Backend(m)) if m.contains("injected")
        ));
    }
    assert_eq!(engine.stats().blocks, 0);
    let a = filled(&engine, 64 << 10, 1);
    // A block past the slab limit takes its own allocation: failing it leaves `a` as it was.
    faults.host_allocs.store(2, Ordering::SeqCst);
    for _ in 0..2 {
        assert!(matches!(
            engine.alloc(BlockSpec::new(big)),
            Err(Error::Backend(m)) if m.contains("injected")
        ));
    }
    assert_eq!(engine.stats().blocks, 1);
    let b = filled(&engine, 64 << 10, 2);
    let c = filled(&engine, big, 3);
    check(&engine, a, 1);
    check(&engine, b, 2);
    check(&engine, c, 3);
    engine.shutdown();
    assert_eq!(backend.inner.live_host_bytes(), 0);
}

#[test]
fn failed_copies_reach_every_waiter_and_the_engine_recovers() {
    for (kind, submits, completions) in [("submit", 1u32, 0u32), ("completion", 0, 1)] {
        // Room for one block: every wait below loads.
        let (engine, faults, backend) = setup(256 << 10);
        let a = filled(&engine, 200 << 10, 1);
        let b = filled(&engine, 200 << 10, 2);
        check(&engine, a, 1);
        faults.submits.store(submits, Ordering::SeqCst);
        faults.completions.store(completions, Ordering::SeqCst);
        // Three threads wait for b; its load fails: all three get the error.
        std::thread::scope(|s| {
            let waiters: Vec<_> = (0..3)
                .map(|_| s.spawn(|| engine.wait(b).map(|g| g.len())))
                .collect();
            for w in waiters {
                let r = w.join().unwrap();
                match r {
                    Err(Error::Transfer { reason, .. }) => {
                        assert!(reason.contains("injected"), "{kind}: {reason}")
                    }
                    // A waiter that arrived after the failure starts a fresh load, which succeeds.
                    Ok(len) => assert_eq!(len, 200 << 10),
                    Err(e) => panic!("{kind}: {e}"),
                }
            }
        });
        // The engine is still usable and the bytes are right.
        check(&engine, b, 2);
        check(&engine, a, 1);
        assert!(faults.injected.load(Ordering::SeqCst) >= 1, "{kind}");
        engine.free(a).unwrap();
        engine.free(b).unwrap();
        engine.shutdown();
        assert_eq!(backend.inner.live_host_bytes(), 0, "{kind}");
    }
}

#[test]
fn a_failed_write_back_loses_nothing() {
    // A mutable block written on the device, then a link on which every copy fails: the load
    // that needs the block's room must fail with an error (not retry the write-back forever), the
    // block must stay on the device with its bytes, and once the link works again everything
    // goes through and the host copy holds the device writes.
    let (engine, faults, backend) = setup(256 << 10);
    let kv = engine
        .alloc(BlockSpec::new(200 << 10).mutable(true))
        .unwrap();
    let other = filled(&engine, 200 << 10, 9);
    {
        let g = engine.wait(kv).unwrap();
        g.write_device(0, &vec![7u8; 200 << 10]).unwrap();
    }
    faults.submits.store(u32::MAX, Ordering::SeqCst);
    let r = engine.wait(other).map(|g| g.len());
    assert!(matches!(r, Err(Error::OutOfDeviceMemory { .. })), "{r:?}");
    assert_eq!(
        engine.residency(kv).unwrap(),
        Residency::Resident,
        "the dirty block was dropped"
    );
    assert!(engine.is_dirty(kv).unwrap());
    faults.submits.store(0, Ordering::SeqCst);
    // Using the block again makes it a candidate again; the next load writes it back first.
    drop(engine.wait(kv).unwrap());
    check(&engine, other, 9);
    let mut host = vec![0u8; 200 << 10];
    engine.read(kv, 0, &mut host).unwrap();
    assert!(host.iter().all(|&x| x == 7), "device writes were lost");
    engine.shutdown();
    assert_eq!(backend.inner.live_host_bytes(), 0);
}

#[test]
fn a_failed_host_pin_is_an_error_and_the_buffer_stays_the_callers() {
    let (engine, faults, backend) = setup(1 << 20);
    let mut buf = vec![5u8; 64 << 10];
    faults.host_pins.store(1, Ordering::SeqCst);
    // SAFETY: `buf` outlives the engine's use of it (freed below, before `buf` drops) and is not
    // written meanwhile.
    let r = unsafe { engine.alloc_external(BlockSpec::new(64 << 10), buf.as_mut_ptr(), true) };
    assert!(
        matches!(&r, Err(Error::Backend(m)) if m.contains("injected")),
        "{r:?}"
    );
    assert_eq!(engine.stats().blocks, 0);
    // SAFETY: as above.
    let id =
        unsafe { engine.alloc_external(BlockSpec::new(64 << 10), buf.as_mut_ptr(), true) }.unwrap();
    check(&engine, id, 5);
    engine.free(id).unwrap();
    engine.shutdown();
    assert!(buf.iter().all(|&b| b == 5), "the caller's buffer changed");
    assert_eq!(backend.inner.live_host_bytes(), 0);
}

#[test]
fn a_failed_fence_record_keeps_the_hold_with_the_caller() {
    // Room for one block: while `a` is held, `b` cannot load.
    let (engine, faults, backend) = setup(256 << 10);
    let stream = backend.inner.create_stream().unwrap();
    let a = filled(&engine, 200 << 10, 1);
    let b = filled(&engine, 200 << 10, 2);
    engine.acquire_on_stream(a, stream).unwrap();
    faults.fences.store(1, Ordering::SeqCst);
    let r = engine.unacquire_on_stream(a, stream);
    assert!(
        matches!(&r, Err(Error::Backend(m)) if m.contains("injected")),
        "{r:?}"
    );
    // The hold is still the caller's: `b` has no room, and the retry succeeds.
    assert!(matches!(
        engine.wait(b).map(|g| g.len()),
        Err(Error::OutOfDeviceMemory { .. })
    ));
    engine.unacquire_on_stream(a, stream).unwrap();
    check(&engine, b, 2);
    check(&engine, a, 1);
    engine.shutdown();
}
