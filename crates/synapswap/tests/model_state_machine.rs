//! Model-based testing: random sequences of engine operations run against the real engine (sim
//! backend, real copies, tiny pool, small chunks) and against a reference model that keeps each
//! block's bytes in a map. After every step: device bytes never exceed the budget, every byte read
//! equals the reference, and the published statistics equal a recount from the block table.
//!
//! Consumers run through strict sim streams: a `Kernel` step waits for a block on one of three
//! streams (the default one and two others), queues a kernel there that checks every byte and,
//! for a mutable block, overwrites some, and releases the block at once (guard drop or a
//! stream-ordered release), so the kernel races the engine's reuse of the memory. The sim's
//! random delays (jitter) shuffle when kernels and copies run. Every kernel must see the
//! reference bytes.
//!
//! Cases: `SYNAPSWAP_MODEL_CASES` (default 48, about 3,000 steps: the fast subset in the normal
//! test command; the reliability run sets more). The number of steps run is printed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use synapswap::backend::{SimBackend, SimConfig};
use synapswap::{BlockId, BlockSpec, Engine, Error, Policy, Residency};

const BUDGET: u64 = 64 << 10;

#[derive(Debug, Clone, Copy)]
enum Op {
    Alloc {
        size: u64,
        mutable: bool,
        policy: u8,
        priority: u8,
    },
    Write {
        block: usize,
        at: u64,
        len: u64,
        byte: u8,
    },
    Declare {
        step: u64,
        block: usize,
    },
    /// A routed use: `step` may use the block with this probability.
    Candidate {
        step: u64,
        block: usize,
        percent: u8,
    },
    /// A block whose host copy is caller memory (`alloc_external`).
    External {
        size: u64,
        byte: u8,
    },
    ClearSchedule,
    Hint {
        step: u64,
    },
    /// Wait, check every byte through the guard; for a mutable block also write some on the device.
    Use {
        block: usize,
        at: u64,
        len: u64,
        byte: u8,
    },
    Read {
        block: usize,
    },
    Acquire {
        block: usize,
    },
    Unacquire {
        block: usize,
    },
    /// Stream-ordered release (on sim: at once).
    UnacquireOnStream {
        block: usize,
    },
    Release {
        block: usize,
    },
    Free {
        block: usize,
    },
    /// Shutdown mid-sequence: every later operation must fail with `ShutDown`, statistics still
    /// answer, and no host copy is left.
    Shutdown,
    /// A consumer kernel on stream `stream % 3` reads the block (a mutable one: then writes
    /// `len` bytes at `at`), released at once through a guard or `unacquire_on_stream`.
    Kernel {
        block: usize,
        at: u64,
        len: u64,
        byte: u8,
        stream: u8,
        manual: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let b = 0usize..12;
    prop_oneof![
        30 => (1u64..24_000, any::<bool>(), 0u8..4, 0u8..11).prop_map(|(size, mutable, policy, priority)| Op::Alloc { size, mutable, policy, priority }),
        20 => (b.clone(), 0u64..30_000, 1u64..4_000, any::<u8>()).prop_map(|(block, at, len, byte)| Op::Write { block, at, len, byte }),
        20 => (0u64..8, b.clone()).prop_map(|(step, block)| Op::Declare { step, block }),
        10 => (0u64..8, b.clone(), 1u8..100).prop_map(|(step, block, percent)| Op::Candidate { step, block, percent }),
        10 => (1u64..16_000, any::<u8>()).prop_map(|(size, byte)| Op::External { size, byte }),
        10 => Just(Op::ClearSchedule),
        30 => (0u64..8).prop_map(|step| Op::Hint { step }),
        60 => (b.clone(), 0u64..30_000, 1u64..2_000, any::<u8>()).prop_map(|(block, at, len, byte)| Op::Use { block, at, len, byte }),
        20 => b.clone().prop_map(|block| Op::Read { block }),
        10 => b.clone().prop_map(|block| Op::Acquire { block }),
        10 => b.clone().prop_map(|block| Op::Unacquire { block }),
        10 => b.clone().prop_map(|block| Op::UnacquireOnStream { block }),
        10 => b.clone().prop_map(|block| Op::Release { block }),
        20 => b.clone().prop_map(|block| Op::Free { block }),
        40 => (b, 0u64..30_000, 1u64..2_000, any::<u8>(), 0u8..3, any::<bool>()).prop_map(|(block, at, len, byte, stream, manual)| Op::Kernel { block, at, len, byte, stream, manual }),
        // About one sequence in six shuts down before its end.
        1 => Just(Op::Shutdown),
    ]
}

struct Model {
    blocks: Vec<Option<(BlockId, Vec<u8>, bool)>>, // id, bytes, mutable
    holds: BTreeMap<usize, u32>,
    /// Streams with kernels queued on a block (by model index) that the host has not waited for.
    kernels: BTreeMap<usize, Vec<u64>>,
}

/// A host-side read of a block's device bytes is ordered after its kernels only once their
/// streams are synchronised (as on CUDA); the engine orders its own reuse by fences.
fn sync_kernels(m: &mut Model, k: usize, backend: &SimBackend) {
    for s in m.kernels.remove(&k).unwrap_or_default() {
        backend.synchronize(s).unwrap();
    }
}

fn policy(p: u8) -> Policy {
    [Policy::Auto, Policy::Lru, Policy::Volatile, Policy::Pinned][p as usize % 4]
}

/// Sequences that shut the engine down before their end.
static MID_SHUTDOWNS: AtomicU64 = AtomicU64::new(0);
/// Kernel steps drawn (some are skipped: no live block, no room).
static KERNELS: AtomicU64 = AtomicU64::new(0);

fn run(ops: &[Op], steps: &AtomicU64) -> Result<(), TestCaseError> {
    let seed = ops.len() as u64 * 7919 + steps.load(Ordering::Relaxed);
    let backend = Arc::new(
        SimBackend::new(
            SimConfig::unpaced().with_jitter(std::time::Duration::from_micros(40), seed),
        )
        .unwrap(),
    );
    let engine = Engine::builder()
        .budget(BUDGET)
        .backend(backend.clone())
        .chunk_bytes(4096)
        .build()
        .unwrap();
    let stream = backend.create_stream().unwrap();
    let streams = [0, stream, backend.create_stream().unwrap()];
    let kernel_failures = Arc::new(AtomicU64::new(0));
    let mut m = Model {
        blocks: Vec::new(),
        holds: BTreeMap::new(),
        kernels: BTreeMap::new(),
    };
    let mut external: Vec<Box<[u8]>> = Vec::new();
    let mut shut = false;
    let live = |m: &Model, i: usize| -> Option<usize> {
        let n = m.blocks.len();
        (n > 0).then(|| i % n).filter(|&k| m.blocks[k].is_some())
    };
    for op in ops {
        steps.fetch_add(1, Ordering::Relaxed);
        if shut {
            // After shutdown: a clear error from every call, nothing changes, nothing leaks.
            let any = m.blocks.iter().flatten().next().map(|b| b.0);
            let r = match (*op, any) {
                (Op::Alloc { size, .. }, _) => engine.alloc(BlockSpec::new(size)).map(|_| ()),
                (Op::Hint { step }, _) => engine.hint(step),
                (Op::Declare { step, .. }, Some(id)) => engine.declare(step, id),
                (Op::Use { .. }, Some(id)) => engine.wait(id).map(|_| ()),
                (Op::Read { .. }, Some(id)) => engine.read(id, 0, &mut [0u8; 1]),
                (Op::Write { byte, .. }, Some(id)) => engine.write(id, 0, &[byte]),
                (Op::Acquire { .. }, Some(id)) => engine.acquire(id).map(|_| ()),
                (Op::Release { .. }, Some(id)) => engine.release(id),
                (Op::Free { .. }, Some(id)) => engine.free(id),
                _ => engine.clear_schedule(),
            };
            prop_assert!(matches!(r, Err(Error::ShutDown)), "after shutdown: {:?}", r);
            prop_assert!(engine.is_shut_down());
            prop_assert_eq!(
                engine.stats().blocks,
                m.blocks.iter().flatten().count() as u64
            );
            prop_assert_eq!(backend.live_host_bytes(), 0);
            continue;
        }
        match *op {
            Op::Alloc {
                size,
                mutable,
                policy: p,
                priority,
            } => {
                let spec = BlockSpec::new(size)
                    .mutable(mutable)
                    .policy(policy(p))
                    .priority(priority);
                match engine.alloc(spec) {
                    Ok(id) => m.blocks.push(Some((id, vec![0; size as usize], mutable))),
                    // Pinned blocks must fit together: a clear refusal, nothing allocated.
                    Err(Error::PinnedOverBudget { .. }) => {
                        prop_assert_eq!(policy(p), Policy::Pinned)
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("alloc: {e}"))),
                }
            }
            Op::Write {
                block,
                at,
                len,
                byte,
            } => {
                let Some(k) = live(&m, block) else { continue };
                let (id, bytes, _) = m.blocks[k].as_mut().unwrap();
                let size = bytes.len() as u64;
                let r = engine.write(*id, at, &vec![byte; len as usize]);
                if at + len > size {
                    prop_assert!(matches!(r, Err(Error::OutOfBounds { .. })), "{r:?}");
                } else if m.holds.get(&k).copied().unwrap_or(0) > 0 {
                    prop_assert!(matches!(r, Err(Error::BlockInUse(_))), "{r:?}");
                } else {
                    r.unwrap();
                    bytes[at as usize..(at + len) as usize].fill(byte);
                }
            }
            Op::Declare { step, block } => {
                let Some(k) = live(&m, block) else { continue };
                engine
                    .declare(step, m.blocks[k].as_ref().unwrap().0)
                    .unwrap();
            }
            Op::Candidate {
                step,
                block,
                percent,
            } => {
                let Some(k) = live(&m, block) else { continue };
                let id = m.blocks[k].as_ref().unwrap().0;
                engine
                    .declare_candidate(step, id, f64::from(percent) / 100.0)
                    .unwrap();
            }
            Op::External { size, byte } => {
                // The caller's memory: kept alive in `external` until the engine is gone.
                let mut buf = vec![byte; size as usize].into_boxed_slice();
                // SAFETY: the buffer lives in `external` past every use and past shutdown, and
                // only the engine writes it (write() goes through the engine).
                let id =
                    unsafe { engine.alloc_external(BlockSpec::new(size), buf.as_mut_ptr(), false) }
                        .unwrap();
                m.blocks.push(Some((id, buf.to_vec(), false)));
                external.push(buf);
            }
            Op::ClearSchedule => engine.clear_schedule().unwrap(),
            Op::Hint { step } => engine.hint(step).unwrap(),
            Op::Use {
                block,
                at,
                len,
                byte,
            } => {
                let Some(k) = live(&m, block) else { continue };
                sync_kernels(&mut m, k, &backend);
                let (id, bytes, mutable) = m.blocks[k].as_mut().unwrap();
                let g = match engine.wait(*id) {
                    Ok(g) => g,
                    // Everything else held (or the hinted step cannot fit the budget at all): a
                    // clear error, never a wrong byte.
                    Err(Error::OutOfDeviceMemory { .. } | Error::BudgetTooSmall { .. }) => continue,
                    Err(e) => return Err(TestCaseError::fail(format!("wait: {e}"))),
                };
                let mut seen = vec![0u8; bytes.len()];
                g.read_device(0, &mut seen).unwrap();
                prop_assert!(seen == *bytes, "device bytes differ from the reference");
                if *mutable {
                    let at = at.min(bytes.len() as u64 - 1);
                    let len = len.min(bytes.len() as u64 - at);
                    g.write_device(at, &vec![byte; len as usize]).unwrap();
                    bytes[at as usize..(at + len) as usize].fill(byte);
                }
            }
            Op::Read { block } => {
                let Some(k) = live(&m, block) else { continue };
                let (id, bytes, _) = m.blocks[k].as_ref().unwrap();
                let mut seen = vec![0u8; bytes.len()];
                engine.read(*id, 0, &mut seen).unwrap();
                prop_assert!(seen == *bytes, "read differs from the reference");
            }
            Op::Acquire { block } => {
                let Some(k) = live(&m, block) else { continue };
                // At most two holds a block, and never more than half the pool held: leaves room.
                let held: u64 = m
                    .holds
                    .iter()
                    .filter(|(_, &n)| n > 0)
                    .map(|(&b, _)| m.blocks[b].as_ref().unwrap().1.len() as u64)
                    .sum();
                let size = m.blocks[k].as_ref().unwrap().1.len() as u64;
                if m.holds.get(&k).copied().unwrap_or(0) >= 2 || held + size > BUDGET / 2 {
                    continue;
                }
                match engine.acquire(m.blocks[k].as_ref().unwrap().0) {
                    Ok(_) => *m.holds.entry(k).or_insert(0) += 1,
                    Err(Error::OutOfDeviceMemory { .. } | Error::BudgetTooSmall { .. }) => {}
                    Err(e) => return Err(TestCaseError::fail(format!("acquire: {e}"))),
                }
            }
            Op::Unacquire { block } => {
                let Some(k) = live(&m, block) else { continue };
                let r = engine.unacquire(m.blocks[k].as_ref().unwrap().0);
                match m.holds.get_mut(&k) {
                    Some(n) if *n > 0 => {
                        r.unwrap();
                        *n -= 1;
                    }
                    _ => prop_assert!(matches!(r, Err(Error::NotHeld(_))), "{r:?}"),
                }
            }
            Op::UnacquireOnStream { block } => {
                let Some(k) = live(&m, block) else { continue };
                let r = engine.unacquire_on_stream(m.blocks[k].as_ref().unwrap().0, stream);
                match m.holds.get_mut(&k) {
                    Some(n) if *n > 0 => {
                        r.unwrap();
                        *n -= 1;
                    }
                    _ => prop_assert!(matches!(r, Err(Error::NotHeld(_))), "{r:?}"),
                }
            }
            Op::Release { block } => {
                let Some(k) = live(&m, block) else { continue };
                engine.release(m.blocks[k].as_ref().unwrap().0).unwrap();
            }
            Op::Shutdown => {
                engine.shutdown();
                shut = true;
                MID_SHUTDOWNS.fetch_add(1, Ordering::Relaxed);
                prop_assert_eq!(
                    backend.live_host_bytes(),
                    0,
                    "host copies outlived shutdown"
                );
                continue;
            }
            Op::Kernel {
                block,
                at,
                len,
                byte,
                stream,
                manual,
            } => {
                let Some(k) = live(&m, block) else { continue };
                // Kernels on other streams are ordered with this one only by the host.
                sync_kernels(&mut m, k, &backend);
                let s = streams[stream as usize % 3];
                let (id, bytes, mutable) = m.blocks[k].as_mut().unwrap();
                let id = *id;
                let (addr, guard) = if manual {
                    match engine.acquire_on_stream(id, s) {
                        Ok(a) => (a, None),
                        Err(Error::OutOfDeviceMemory { .. }) => continue,
                        Err(e) => return Err(TestCaseError::fail(format!("acquire: {e}"))),
                    }
                } else {
                    match engine.wait_on_stream(id, s) {
                        Ok(g) => (g.device_ptr(), Some(g)),
                        Err(Error::OutOfDeviceMemory { .. }) => continue,
                        Err(e) => return Err(TestCaseError::fail(format!("wait: {e}"))),
                    }
                };
                let expect = bytes.clone();
                let write = mutable.then(|| {
                    let at = at.min(bytes.len() as u64 - 1);
                    let len = len.min(bytes.len() as u64 - at);
                    bytes[at as usize..(at + len) as usize].fill(byte);
                    (at, vec![byte; len as usize])
                });
                if write.is_some() {
                    engine.mark_dirty(id).unwrap();
                }
                let failures = kernel_failures.clone();
                backend
                    .launch(s, move |dev| {
                        let mut seen = vec![0u8; expect.len()];
                        dev.read(addr, &mut seen)?;
                        if seen != expect {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                        if let Some((at, data)) = write {
                            dev.write(addr + at, &data)?;
                        }
                        Ok(())
                    })
                    .unwrap();
                // The release races the kernel.
                match guard {
                    Some(g) => drop(g),
                    None => engine.unacquire_on_stream(id, s).unwrap(),
                }
                m.kernels.entry(k).or_default().push(s);
            }
            Op::Free { block } => {
                let Some(k) = live(&m, block) else { continue };
                let id = m.blocks[k].as_ref().unwrap().0;
                let r = engine.free(id);
                if m.holds.get(&k).copied().unwrap_or(0) > 0 {
                    prop_assert!(matches!(r, Err(Error::BlockInUse(_))), "{r:?}");
                } else {
                    r.unwrap();
                    prop_assert!(matches!(engine.wait(id), Err(Error::StaleBlock(_))));
                    m.blocks[k] = None;
                }
            }
        }
        // Invariants after every step.
        let s = engine.stats();
        prop_assert!(s.device_used_bytes <= BUDGET && s.peak_device_bytes <= BUDGET);
        let live_blocks: Vec<_> = m.blocks.iter().flatten().collect();
        prop_assert_eq!(s.blocks, live_blocks.len() as u64);
        prop_assert_eq!(
            s.host_bytes,
            live_blocks.iter().map(|b| b.1.len() as u64).sum::<u64>()
        );
        // The published resident count equals a recount from the block table once no copy is
        // moving (copies complete on their own thread, so wait for a quiet moment).
        let mut consistent = false;
        for _ in 0..400 {
            let count = || {
                live_blocks
                    .iter()
                    .filter(|b| engine.residency(b.0).unwrap() == Residency::Resident)
                    .count() as u64
            };
            let before = count();
            let published = engine.stats().resident_blocks;
            if before == published && count() == before {
                consistent = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(250));
        }
        if !consistent {
            let states: Vec<_> = live_blocks
                .iter()
                .map(|b| {
                    (
                        engine.residency(b.0).unwrap(),
                        engine.is_dirty(b.0).unwrap(),
                    )
                })
                .collect();
            let st = engine.stats();
            prop_assert!(
                false,
                "resident_blocks {} never matched a recount; states {:?}; writebacks {} evictions {}",
                st.resident_blocks,
                states,
                st.writebacks,
                st.evictions
            );
        }
        let after = engine.stats();
        prop_assert!(after.hits <= after.waits && after.loads >= after.demand_loads);
        let external_bytes: u64 = external.iter().map(|b| b.len() as u64).sum::<u64>();
        // Allocated blocks' host copies are cut from slabs (`host_tier`), which a block holds
        // open: these sequences' blocks take far less than one slab, so at most one is open.
        prop_assert!(
            backend.live_host_bytes() <= s.host_bytes + synapswap::host_tier::SLAB_BYTES,
            "{} live host bytes for {} bytes of blocks",
            backend.live_host_bytes(),
            s.host_bytes
        );
        prop_assert!(backend.live_host_bytes() + external_bytes >= s.host_bytes);
    }
    for (k, n) in m.holds.into_iter().filter(|_| !shut) {
        if let Some((id, ..)) = &m.blocks[k] {
            for _ in 0..n {
                engine.unacquire(*id).unwrap();
            }
        }
    }
    engine.shutdown();
    prop_assert_eq!(backend.live_host_bytes(), 0, "host copies leaked");
    for s in streams {
        backend.synchronize(s).unwrap();
    }
    prop_assert_eq!(
        kernel_failures.load(Ordering::SeqCst),
        0,
        "a kernel saw bytes that were not the block's"
    );
    KERNELS.fetch_add(
        ops.iter()
            .filter(|o| matches!(o, Op::Kernel { .. }))
            .count() as u64,
        Ordering::Relaxed,
    );
    drop(external);
    Ok(())
}

#[test]
fn engine_matches_the_reference_model() {
    let cases: u32 = std::env::var("SYNAPSWAP_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let steps = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 20..100), |ops| {
            run(&ops, &steps)
        })
        .unwrap();
    eprintln!(
        "model state machine: {cases} sequences, {} steps, 0 failures ({} shut down mid-sequence, {} kernel steps on strict sim streams)",
        steps.load(Ordering::Relaxed),
        MID_SHUTDOWNS.load(Ordering::Relaxed),
        KERNELS.load(Ordering::Relaxed)
    );
}
