//! Consumers' kernels on strict sim streams. A kernel queued on a stream runs later, on the
//! stream's own thread, like a GPU kernel; each test releases the block (guard drop, unacquire,
//! a stream-ordered release, free) while the kernel has not run yet, then makes the engine want
//! the block's memory, and checks every byte the kernel saw and wrote. An engine that reuses the
//! memory (or writes a mutable block back) before the consumer's fence fails these.
//!
//! Also here: a device whose copies keep failing (sticky and transient errors) must make calls
//! fail, never hang; shutdown writes dirty caller-owned blocks back; overlapping registrations.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{Hooked, Hooks, KIB, MIB};
use synapswap::backend::{Backend, DevicePtr, SimBackend, SimConfig};
use synapswap::{pattern, BlockId, BlockSpec, Engine, Error, Residency};

/// How long each kernel waits before it touches memory: far longer than a 1 MiB copy.
const KERNEL_DELAY: Duration = Duration::from_millis(60);

fn block(engine: &Engine, size: u64, mutable: bool, seed: u64) -> BlockId {
    common::filled(engine, BlockSpec::new(size).mutable(mutable), seed)
}

/// What a kernel found: whether every byte matched `seed`'s pattern.
#[derive(Clone, Default)]
struct Seen(Arc<(AtomicBool, AtomicBool)>);

impl Seen {
    fn ran_and_matched(&self) -> (bool, bool) {
        (
            self.0 .0.load(Ordering::SeqCst),
            self.0 .1.load(Ordering::SeqCst),
        )
    }
}

/// Queues a kernel on `stream` that sleeps, then checks `len` device bytes at `addr` against
/// `seed`'s pattern and, if `write` is given, overwrites them with that seed's pattern.
fn launch_check(
    sim: &SimBackend,
    stream: u64,
    addr: DevicePtr,
    len: u64,
    seed: u64,
    write: Option<u64>,
) -> Seen {
    let seen = Seen::default();
    let s = seen.clone();
    sim.launch(stream, move |dev| {
        std::thread::sleep(KERNEL_DELAY);
        let mut buf = vec![0u8; len as usize];
        dev.read(addr, &mut buf)?;
        s.0 .1.store(
            pattern::verify(pattern::seed(seed), 0, &buf),
            Ordering::SeqCst,
        );
        if let Some(w) = write {
            pattern::fill(pattern::seed(w), 0, &mut buf);
            dev.write(addr, &buf)?;
        }
        s.0 .0.store(true, Ordering::SeqCst);
        Ok(())
    })
    .unwrap();
    seen
}

/// Room for one block: using `b` needs `a`'s memory.
fn assert_b_waits_for_the_kernel(
    engine: &Engine,
    sim: &SimBackend,
    stream: u64,
    b: BlockId,
    seen: &Seen,
) {
    let g = engine.wait(b).unwrap();
    assert!(
        seen.ran_and_matched().0,
        "b was placed while the kernel using a had not run"
    );
    drop(g);
    sim.synchronize(stream).unwrap();
    assert_eq!(
        seen.ran_and_matched(),
        (true, true),
        "the kernel saw wrong bytes"
    );
}

#[test]
fn a_guard_drop_is_ordered_after_the_kernel_on_its_stream() {
    let (engine, sim) = common::engine(MIB);
    let s = sim.create_stream().unwrap();
    let a = block(&engine, MIB, false, 1);
    let b = block(&engine, MIB, false, 2);
    let g = engine.wait_on_stream(a, s).unwrap();
    let seen = launch_check(&sim, s, g.device_ptr(), MIB, 1, None);
    drop(g);
    assert_b_waits_for_the_kernel(&engine, &sim, s, b, &seen);
    engine.shutdown();
}

#[test]
fn a_plain_guard_and_unacquire_are_ordered_after_the_default_stream() {
    let (engine, sim) = common::engine(MIB);
    let a = block(&engine, MIB, false, 1);
    let b = block(&engine, MIB, false, 2);
    let g = engine.wait(a).unwrap();
    let seen = launch_check(&sim, 0, g.device_ptr(), MIB, 1, None);
    drop(g);
    assert_b_waits_for_the_kernel(&engine, &sim, 0, b, &seen);
    let addr = engine.acquire(a).unwrap();
    let seen = launch_check(&sim, 0, addr, MIB, 1, None);
    engine.unacquire(a).unwrap();
    assert_b_waits_for_the_kernel(&engine, &sim, 0, b, &seen);
    engine.shutdown();
}

#[test]
fn a_stream_ordered_release_waits_for_the_kernel() {
    let (engine, sim) = common::engine(MIB);
    let s = sim.create_stream().unwrap();
    let a = block(&engine, MIB, false, 1);
    let b = block(&engine, MIB, false, 2);
    let addr = engine.acquire_on_stream(a, s).unwrap();
    let seen = launch_check(&sim, s, addr, MIB, 1, None);
    engine.unacquire_on_stream(a, s).unwrap();
    assert_b_waits_for_the_kernel(&engine, &sim, s, b, &seen);
    engine.shutdown();
}

#[test]
fn a_mutable_block_is_written_back_after_the_kernel_wrote_it() {
    let (engine, sim) = common::engine(MIB);
    let s = sim.create_stream().unwrap();
    let kv = block(&engine, MIB, true, 1);
    let w = block(&engine, MIB, false, 2);
    let g = engine.wait_on_stream(kv, s).unwrap();
    let seen = launch_check(&sim, s, g.device_ptr(), MIB, 1, Some(9));
    engine.mark_dirty(kv).unwrap();
    drop(g);
    // Evicts kv: its write-back must copy what the kernel wrote.
    assert_b_waits_for_the_kernel(&engine, &sim, s, w, &seen);
    assert_eq!(engine.residency(kv).unwrap(), Residency::Host);
    let mut buf = vec![0u8; MIB as usize];
    engine.read(kv, 0, &mut buf).unwrap();
    assert!(
        pattern::verify(pattern::seed(9), 0, &buf),
        "the write-back lost what the kernel wrote"
    );
    engine.shutdown();
}

#[test]
fn free_waits_for_the_kernel_before_the_memory_is_reused() {
    let (engine, sim) = common::engine(MIB);
    let s = sim.create_stream().unwrap();
    let a = block(&engine, MIB, false, 1);
    let b = block(&engine, MIB, false, 2);
    let g = engine.wait_on_stream(a, s).unwrap();
    let seen = launch_check(&sim, s, g.device_ptr(), MIB, 1, None);
    drop(g);
    engine.free(a).unwrap();
    assert_b_waits_for_the_kernel(&engine, &sim, s, b, &seen);
    engine.shutdown();
}

#[test]
fn read_and_write_wait_for_the_kernel_that_writes_the_block() {
    let (engine, sim) = common::engine(2 * MIB);
    let s = sim.create_stream().unwrap();
    let kv = block(&engine, MIB, true, 1);
    let g = engine.wait_on_stream(kv, s).unwrap();
    let seen = launch_check(&sim, s, g.device_ptr(), MIB, 1, Some(4));
    engine.mark_dirty(kv).unwrap();
    drop(g);
    let mut buf = vec![0u8; MIB as usize];
    engine.read(kv, 0, &mut buf).unwrap();
    assert!(seen.ran_and_matched().0, "read ran before the kernel");
    assert!(pattern::verify(pattern::seed(4), 0, &buf));
    engine.shutdown();
}

#[test]
fn shutdown_writes_dirty_caller_owned_blocks_back() {
    let (engine, _sim) = common::engine(MIB);
    let mut buf = vec![1u8; 64 * KIB as usize];
    // SAFETY: `buf` outlives the engine (shut down below) and is not touched meanwhile.
    let kv = unsafe {
        engine.alloc_external(
            BlockSpec::new(64 * KIB).mutable(true),
            buf.as_mut_ptr(),
            false,
        )
    }
    .unwrap();
    let g = engine.wait(kv).unwrap();
    g.write_device(0, &[7u8; 1000]).unwrap();
    drop(g);
    assert!(engine.is_dirty(kv).unwrap());
    engine.shutdown();
    assert!(
        buf[..1000].iter().all(|&x| x == 7),
        "shutdown dropped device bytes"
    );
    assert!(buf[1000..].iter().all(|&x| x == 1));
}

#[test]
fn buffers_sharing_a_page_are_refused_by_the_device_and_still_work() {
    let (engine, sim) = common::engine(MIB);
    let mut buf = vec![0u8; 8192];
    buf[..100].fill(3);
    buf[100..200].fill(4);
    let p = buf.as_mut_ptr();
    // SAFETY: two disjoint ranges of `buf`, which outlives both registrations.
    let (r1, r2) = unsafe {
        (
            sim.register_host(p, 100, true).unwrap(),
            sim.register_host(p.add(100), 100, true),
        )
    };
    assert!(matches!(r2, Err(Error::AlreadyRegistered { .. })), "{r2:?}");
    drop(r1);
    // The engine uses the second buffer as it is (pageable) and serves its bytes.
    // SAFETY: as above; the engine is shut down before `buf` drops.
    let (x, y) = unsafe {
        (
            engine.alloc_external(BlockSpec::new(100), p, true).unwrap(),
            engine
                .alloc_external(BlockSpec::new(100), p.add(100), true)
                .unwrap(),
        )
    };
    assert_eq!(engine.wait(x).unwrap().as_slice().unwrap(), &[3u8; 100][..]);
    assert_eq!(engine.wait(y).unwrap().as_slice().unwrap(), &[4u8; 100][..]);
    engine.shutdown();
}

/// Failures of a sim device's copies from some point on: submits fail (sticky or transient),
/// or copies complete with a transient error.
#[derive(Debug, Default)]
struct Link {
    failing: AtomicBool,
    sticky: bool,
    submits: AtomicU64,
    /// Copies complete with a (transient) error.
    failing_copies: AtomicBool,
}

type FailingLink = Hooked<Link>;

impl Hooks for Link {
    fn submit(&self) -> synapswap::Result<()> {
        self.submits.fetch_add(1, Ordering::SeqCst);
        if !self.failing.load(Ordering::SeqCst) {
            return Ok(());
        }
        Err(if self.sticky {
            Error::DeviceLost("injected: the context is lost".into())
        } else {
            Error::Backend("injected: copy submit failed".into())
        })
    }
    fn wait(&self) -> synapswap::Result<()> {
        if self.failing_copies.load(Ordering::SeqCst) {
            return Err(Error::Backend("injected: copy failed".into()));
        }
        Ok(())
    }
}

/// Runs `f` on a thread; fails the test if it has not returned within 10 s (a hang).
fn within_10s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} hung for more than 10 s"))
}

fn failing_engine(sticky: bool) -> (Arc<Engine>, Arc<FailingLink>, Vec<BlockId>) {
    let link = Arc::new(FailingLink::unpaced(Link {
        sticky,
        ..Link::default()
    }));
    let engine = Arc::new(
        Engine::builder()
            .budget(2 * MIB)
            .backend(link.clone())
            .chunk_bytes(64 * KIB)
            .build()
            .unwrap(),
    );
    let ids: Vec<BlockId> = (0..4).map(|i| block(&engine, MIB, false, i)).collect();
    for (step, &id) in ids.iter().enumerate() {
        engine.declare(step as u64, id).unwrap();
    }
    // One good pass, so prefetch is running.
    for (step, &id) in ids.iter().enumerate() {
        engine.hint(step as u64).unwrap();
        drop(engine.wait(id).unwrap());
    }
    (engine, link, ids)
}

#[test]
fn a_lost_device_fails_every_call_and_never_hangs() {
    let (engine, link, ids) = failing_engine(true);
    link.hooks.failing.store(true, Ordering::SeqCst);
    let e = engine.clone();
    let results = within_10s("hint + wait on a lost device", move || {
        let mut errors = Vec::new();
        for (step, &id) in ids.iter().enumerate() {
            let h = e.hint(step as u64);
            let w = e.wait(id).map(|_| ());
            errors.push((h, w));
        }
        errors
    });
    assert!(
        results
            .iter()
            .any(|(_, w)| matches!(w, Err(Error::DeviceLost(_)))),
        "{results:?}"
    );
    // Sticky: every later call fails with it; stats, shutdown and drop still work.
    assert!(matches!(engine.hint(0), Err(Error::DeviceLost(_))));
    assert!(matches!(
        engine.alloc(BlockSpec::new(10)),
        Err(Error::DeviceLost(_))
    ));
    let _ = engine.stats();
    let e = engine.clone();
    within_10s("shutdown of a lost engine", move || e.shutdown());
    drop(engine);
}

#[test]
fn a_link_that_keeps_failing_fails_the_waits_and_the_engine_lives_on() {
    let (engine, link, ids) = failing_engine(false);
    link.hooks.failing.store(true, Ordering::SeqCst);
    let e = engine.clone();
    let ids2 = ids.clone();
    let results = within_10s("hint + wait on a failing link", move || {
        let mut results = Vec::new();
        for (step, &id) in ids2.iter().enumerate() {
            e.hint(step as u64).unwrap();
            results.push(e.wait(id).map(|_| ()));
        }
        results
    });
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(Error::Transfer { .. }))),
        "{results:?}"
    );
    // Transient: no prefetch storm (each block failed at most once per use), and once the link
    // works again so does the engine.
    let before = link.hooks.submits.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        link.hooks.submits.load(Ordering::SeqCst),
        before,
        "the engine retries on its own"
    );
    link.hooks.failing.store(false, Ordering::SeqCst);
    for (step, &id) in ids.iter().enumerate() {
        engine.hint(step as u64).unwrap();
        let g = engine.wait(id).unwrap();
        assert!(pattern::verify(
            pattern::seed(step as u64),
            0,
            g.as_slice().unwrap()
        ));
    }
    engine.shutdown();
}

#[test]
fn acquire_on_stream_of_a_block_in_flight_does_not_wait_on_the_host() {
    // 50 MB/s: a 4 MiB copy takes ~80 ms, so the host can be seen running ahead of it.
    let sim = Arc::new(
        SimBackend::new(SimConfig {
            h2d_bytes_per_s: Some(50e6),
            ..SimConfig::unpaced()
        })
        .unwrap(),
    );
    let engine = Engine::builder()
        .budget(16 * MIB)
        .backend(sim.clone())
        .build()
        .unwrap();
    let s = sim.create_stream().unwrap();
    let a = block(&engine, 4 * MIB, false, 1);
    let b = block(&engine, 4 * MIB, false, 2);
    engine.declare(0, a).unwrap();
    engine.declare(1, b).unwrap();
    // The hint at step 0 prefetches a, then b: both copies are in flight.
    engine.hint(0).unwrap();
    let addr = engine.acquire_on_stream(b, s).unwrap();
    assert_eq!(
        engine.residency(b).unwrap(),
        Residency::Loading,
        "acquire_on_stream waited on the host for a copy in flight"
    );
    // The kernel queued now runs only once the copy is done: it sees b's bytes.
    let seen = Seen::default();
    let s2 = seen.clone();
    sim.launch(s, move |dev| {
        let mut buf = vec![0u8; (4 * MIB) as usize];
        dev.read(addr, &mut buf)?;
        s2.0 .1
            .store(pattern::verify(pattern::seed(2), 0, &buf), Ordering::SeqCst);
        s2.0 .0.store(true, Ordering::SeqCst);
        Ok(())
    })
    .unwrap();
    engine.unacquire_on_stream(b, s).unwrap();
    sim.synchronize(s).unwrap();
    assert_eq!(
        seen.ran_and_matched(),
        (true, true),
        "the kernel ran before the copy"
    );
    let st = engine.stats();
    assert_eq!(
        (st.waits, st.hits),
        (1, 1),
        "a use the host did not wait for is a hit"
    );
    drop(engine.wait(a).unwrap());
    engine.shutdown();
}

#[test]
fn a_failed_load_that_a_stream_waits_on_loses_the_device() {
    let link = Arc::new(FailingLink {
        inner: SimBackend::new(SimConfig {
            h2d_bytes_per_s: Some(50e6),
            ..SimConfig::unpaced()
        })
        .unwrap(),
        hooks: Link::default(),
    });
    let engine = Engine::builder()
        .budget(16 * MIB)
        .backend(link.clone())
        .build()
        .unwrap();
    let s = link.inner.create_stream().unwrap();
    let a = block(&engine, 4 * MIB, false, 1);
    let b = block(&engine, 4 * MIB, false, 2);
    engine.declare(0, a).unwrap();
    engine.declare(1, b).unwrap();
    engine.hint(0).unwrap();
    link.hooks.failing_copies.store(true, Ordering::SeqCst);
    engine.acquire_on_stream(b, s).unwrap();
    assert_eq!(engine.residency(b).unwrap(), Residency::Loading);
    // The copy fails after work on `s` was ordered behind it: nothing can undo that work.
    let e = engine_lost_within_10s(&engine);
    assert!(
        matches!(e, Error::DeviceLost(ref m) if m.contains("stream")),
        "{e:?}"
    );
    engine.shutdown();
}

fn engine_lost_within_10s(engine: &Engine) -> Error {
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if let Err(e) = engine.hint(0) {
            return e;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the engine did not fail within 10 s");
}

#[test]
fn shutdown_finishes_a_write_back_in_progress() {
    // 50 MB/s in 64 KiB chunks: a 4 MiB write-back takes ~80 ms, 64 chunks.
    let sim = Arc::new(
        SimBackend::new(SimConfig {
            h2d_bytes_per_s: Some(50e6),
            ..SimConfig::unpaced()
        })
        .unwrap(),
    );
    let engine = Arc::new(
        Engine::builder()
            .budget(4 * MIB)
            .backend(sim.clone())
            .chunk_bytes(64 * KIB)
            .build()
            .unwrap(),
    );
    let mut buf = vec![1u8; (4 * MIB) as usize];
    // SAFETY: `buf` outlives the engine's use of it (shut down below) and is not touched
    // meanwhile.
    let kv = unsafe {
        engine.alloc_external(
            BlockSpec::new(4 * MIB).mutable(true),
            buf.as_mut_ptr(),
            false,
        )
    }
    .unwrap();
    let other = block(&engine, 4 * MIB, false, 3);
    let g = engine.wait(kv).unwrap();
    g.write_device(0, &vec![7u8; (4 * MIB) as usize]).unwrap();
    drop(g);
    // Using `other` evicts kv: its write-back starts; shut down in the middle of it.
    let e = engine.clone();
    let waiter = std::thread::spawn(move || e.wait(other).map(|_| ()));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(engine.residency(kv).unwrap(), Residency::WritingBack);
    engine.shutdown();
    assert!(matches!(waiter.join().unwrap(), Err(Error::ShutDown)));
    assert!(
        buf.iter().all(|&x| x == 7),
        "shutdown abandoned a write-back: {} of {} bytes are stale",
        buf.iter().filter(|&&x| x != 7).count(),
        buf.len()
    );
}
