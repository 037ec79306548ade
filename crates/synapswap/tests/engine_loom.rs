//! loom models of the waiter / transfer-thread hand-off (issue 7).
//!
//! Built only with `RUSTFLAGS="--cfg loom"` (`scripts/reliability.sh` runs it): the engine's
//! mutexes, condition variables and threads (`crate::sync`) then come from loom, and its clock is
//! frozen, so each scenario below runs the real engine, its transfer thread and the sim backend's
//! DMA thread under every interleaving loom explores (bounded by `LOOM_MAX_PREEMPTIONS`, default
//! 2 here). A lost wake-up shows up as a loom deadlock, wrong bytes or counts as a failed assertion.
//!
//! Each scenario prints how many interleavings it explored.
#![cfg(loom)]

use std::sync::atomic::{AtomicUsize, Ordering};

use loom::sync::Arc;
use synapswap::backend::{SimBackend, SimConfig};
use synapswap::{pattern, BlockId, BlockSpec, Engine, Error};

const SIZE: u64 = 4096;

fn explore(name: &str, f: impl Fn() + Sync + Send + 'static) {
    // Tests run in parallel: each scenario counts its own runs.
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    let bound = b.preemption_bound;
    let counter = runs.clone();
    b.check(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        f()
    });
    println!(
        "loom scenario {name}: {} interleavings explored (preemption bound {:?})",
        runs.load(Ordering::SeqCst),
        bound
    );
}

fn engine(blocks_of_room: u64) -> Engine {
    let backend = std::sync::Arc::new(SimBackend::new(SimConfig::unpaced()).unwrap());
    Engine::builder()
        .budget(blocks_of_room * SIZE)
        .backend(backend)
        .chunk_bytes(SIZE)
        .pipeline_depth(1)
        .build()
        .unwrap()
}

fn filled(engine: &Engine, seed: u64) -> BlockId {
    let id = engine.alloc(BlockSpec::new(SIZE)).unwrap();
    let mut buf = vec![0u8; SIZE as usize];
    pattern::fill(pattern::seed(seed), 0, &mut buf);
    engine.write(id, 0, &buf).unwrap();
    id
}

/// Waits for `id` and checks every device byte.
fn use_block(engine: &Engine, id: BlockId, seed: u64) -> Result<(), Error> {
    let g = engine.wait(id)?;
    let bytes = g.as_slice().expect("sim is host-addressable");
    assert!(
        pattern::verify(pattern::seed(seed), 0, bytes),
        "block {id} served wrong bytes"
    );
    Ok(())
}

/// A prefetch completes while the caller arrives to wait for it: the waiter either finds the
/// block resident (a hit) or blocks and is woken by the completion, never sleeps through it.
#[test]
fn wait_vs_completion() {
    explore("wait-vs-completion", || {
        let e = Arc::new(engine(2));
        let a = filled(&e, 1);
        e.declare(0, a).unwrap();
        e.hint(0).unwrap(); // queues the prefetch of `a`
        let e2 = e.clone();
        let t = loom::thread::spawn(move || use_block(&e2, a, 1).unwrap());
        t.join().unwrap();
        let s = e.stats();
        assert_eq!(s.loads, 1, "one load serves the prefetch and the wait");
        assert_eq!(s.bytes_h2d, SIZE);
        assert_eq!(s.waits, 1);
        e.shutdown();
    });
}

/// Two callers whose loads must evict each other's blocks (room for two of three blocks): an
/// eviction never takes a held block or one with a waiter, and every use sees its own bytes.
#[test]
fn wait_vs_eviction() {
    explore("wait-vs-eviction", || {
        let e = Arc::new(engine(2));
        let a = filled(&e, 1);
        let b = filled(&e, 2);
        let c = filled(&e, 3);
        let e2 = e.clone();
        let t = loom::thread::spawn(move || {
            use_block(&e2, a, 1).unwrap();
            use_block(&e2, b, 2).unwrap();
        });
        use_block(&e, c, 3).unwrap();
        use_block(&e, a, 1).unwrap();
        t.join().unwrap();
        let s = e.stats();
        assert!(s.device_used_bytes <= 2 * SIZE);
        assert!(s.loads >= 3 && s.evictions >= 1, "{s:?}");
        assert_eq!(s.bytes_h2d, s.loads * SIZE);
        e.shutdown();
    });
}

/// Shutdown while a caller waits for a load: the waiter returns (the bytes, if the load won the
/// race, else `ShutDown`), shutdown returns, and no host copy outlives it.
#[test]
fn wait_vs_shutdown() {
    explore("wait-vs-shutdown", || {
        let backend = std::sync::Arc::new(SimBackend::new(SimConfig::unpaced()).unwrap());
        let e = Arc::new(
            Engine::builder()
                .budget(2 * SIZE)
                .backend(backend.clone())
                .chunk_bytes(SIZE)
                .pipeline_depth(1)
                .build()
                .unwrap(),
        );
        let a = filled(&e, 1);
        let e2 = e.clone();
        let t = loom::thread::spawn(move || match use_block(&e2, a, 1) {
            Ok(()) | Err(Error::ShutDown) => {}
            Err(other) => panic!("wait during shutdown: {other}"),
        });
        e.shutdown();
        t.join().unwrap();
        assert!(e.is_shut_down());
        assert_eq!(
            backend.live_host_bytes(),
            0,
            "a host copy outlived shutdown"
        );
        assert!(matches!(e.wait(a), Err(Error::ShutDown)));
    });
}

/// Two callers wait for the same block at once: one load serves both, both see the bytes, and
/// the block is evictable once both guards are gone.
#[test]
fn two_waiters_one_block() {
    explore("two-waiters-one-block", || {
        let e = Arc::new(engine(1));
        let a = filled(&e, 1);
        let b = filled(&e, 2);
        let e2 = e.clone();
        let t = loom::thread::spawn(move || use_block(&e2, a, 1).unwrap());
        use_block(&e, a, 1).unwrap();
        t.join().unwrap();
        let s = e.stats();
        assert_eq!(s.loads, 1, "two waiters, one load: {s:?}");
        assert_eq!(s.waits, 2);
        // Room for one block: `b` can load only if both holds on `a` were dropped.
        use_block(&e, b, 2).unwrap();
        e.shutdown();
    });
}
