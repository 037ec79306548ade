//! Shutdown with copies in flight: waiters return, the transfer thread stops, nothing leaks.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use synapswap::backend::{SimBackend, SimConfig};
use synapswap::{BlockSpec, Engine, Error};

#[test]
fn shutdown_with_copies_in_flight_returns_and_leaks_nothing() {
    // A slow link (50 MB/s): 16 blocks of 1 MiB take ~0.3 s to stream, so copies are in flight.
    let backend = Arc::new(
        SimBackend::new(SimConfig {
            h2d_bytes_per_s: Some(50e6),
            ..SimConfig::default()
        })
        .unwrap(),
    );
    let engine = Engine::builder()
        .budget(4 * MIB)
        .backend(backend.clone())
        .build()
        .unwrap();
    let ids: Vec<_> = (0..16)
        .map(|i| filled(&engine, BlockSpec::new(MIB), i))
        .collect();
    for (i, &id) in ids.iter().enumerate() {
        engine.declare(i as u64, id).unwrap();
    }
    assert!(backend.live_host_bytes() >= 16 * MIB);
    engine.hint(0).unwrap();
    std::thread::scope(|s| {
        let waiters: Vec<_> = ids[8..12]
            .iter()
            .map(|&id| {
                let engine = &engine;
                s.spawn(move || engine.wait(id).map(|g| g.len()))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(30));
        let t = Instant::now();
        engine.shutdown();
        // Returns after at most the chunks already queued on the link (2 x 8 MiB would be the
        // worst case; 1 MiB blocks here): well under a second.
        assert!(t.elapsed() < Duration::from_secs(5));
        for w in waiters {
            match w.join().unwrap() {
                Err(Error::ShutDown) | Ok(_) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
    });
    assert_eq!(
        backend.live_host_bytes(),
        0,
        "host copies freed at shutdown"
    );
    assert!(
        backend.live_device_bytes() > 0,
        "the pool lives until the engine is dropped"
    );
    drop(engine);
    assert_eq!(backend.live_device_bytes(), 0, "device pool freed on drop");
}

#[test]
fn a_blocked_waiter_is_woken_by_shutdown() {
    let backend = Arc::new(
        SimBackend::new(SimConfig {
            h2d_bytes_per_s: Some(1e5), // 100 kB/s: the 1 MiB load would take 10 s
            ..SimConfig::default()
        })
        .unwrap(),
    );
    let engine = Engine::builder()
        .budget(2 * MIB)
        .backend(backend)
        .chunk_bytes(16 * KIB)
        .build()
        .unwrap();
    let a = engine.alloc(BlockSpec::new(MIB)).unwrap();
    std::thread::scope(|s| {
        let w = s.spawn(|| engine.wait(a).map(|_| ()));
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        engine.shutdown();
        assert_eq!(w.join().unwrap(), Err(Error::ShutDown));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    });
}

#[test]
fn many_threads_share_one_engine() {
    let (engine, backend) = engine(512 * KIB);
    let ids: Vec<_> = (0..16)
        .map(|i| filled(&engine, BlockSpec::new(64 * KIB), i))
        .collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (engine, ids) = (&engine, &ids);
            s.spawn(move || {
                for k in 0..300 {
                    let i = (k * 7 + t * 3) % ids.len();
                    check(engine, ids[i], i as u64);
                }
            });
        }
    });
    assert_eq!(engine.stats().waits, 1200);
    drop(engine);
    assert_eq!(backend.live_host_bytes() + backend.live_device_bytes(), 0);
}
