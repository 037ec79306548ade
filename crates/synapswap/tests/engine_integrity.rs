//! Byte-exact integrity of the real runtime (threads, copies) across thousands of evictions.

mod common;

use common::*;
use synapswap::{pattern, BlockSpec, Policy, Residency};

#[test]
fn every_byte_survives_thousands_of_evictions() {
    // 48 blocks of mixed sizes (16-200 KiB) cycle through a 1 MiB pool; every use checks every byte.
    let (engine, _b) = engine(MIB);
    let sizes: Vec<u64> = (0..48).map(|i| (16 + (i * 37) % 185) * KIB + i).collect();
    let ids: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &s)| filled(&engine, BlockSpec::new(s).name(format!("b{i}")), i as u64))
        .collect();
    for (i, &id) in ids.iter().enumerate() {
        engine.declare(i as u64, id).unwrap();
    }
    for pass in 0..60 {
        for (i, &id) in ids.iter().enumerate() {
            engine.hint(i as u64).unwrap();
            check(&engine, id, i as u64);
            // Every few passes, touch a block out of schedule too.
            if pass % 7 == 3 && i % 11 == 0 {
                let j = (i * 5 + pass) % ids.len();
                check(&engine, ids[j], j as u64);
            }
        }
    }
    let s = engine.stats();
    assert!(s.evictions > 2000, "only {} evictions", s.evictions);
    assert!(s.peak_device_bytes <= MIB);
    assert!(s.unpredicted > 0);
    assert!(s.prefetch.issued > 0 && s.hits > 0);
}

#[test]
fn mutable_blocks_keep_every_write_across_evictions() {
    let (engine, _b) = engine(256 * KIB);
    let kv: Vec<_> = (0..6)
        .map(|i| {
            filled(
                &engine,
                BlockSpec::new(64 * KIB).mutable(true),
                1000 * (100 + i),
            )
        })
        .collect();
    let mut version = vec![0u64; kv.len()];
    for round in 1..=40u64 {
        for (i, &id) in kv.iter().enumerate() {
            let g = engine.wait(id).unwrap();
            assert!(
                g.as_slice().is_none(),
                "mutable blocks are not lent as shared slices"
            );
            // The block holds the pattern of its current version.
            let mut buf = vec![0u8; 64 * KIB as usize];
            g.read_device(0, &mut buf).unwrap();
            let seed = pattern::seed(1000 * (100 + i as u64) + version[i]);
            assert!(
                pattern::verify(seed, 0, &buf),
                "kv {i} lost a write (round {round})"
            );
            // Rewrite it entirely with the next version, on the device.
            version[i] = round;
            pattern::fill(pattern::seed(1000 * (100 + i as u64) + round), 0, &mut buf);
            g.write_device(0, &buf).unwrap();
        }
    }
    let s = engine.stats();
    assert!(s.writebacks > 50, "only {} write-backs", s.writebacks);
    assert_eq!(s.bytes_d2h, s.writebacks * 64 * KIB);
    // The host view (read) returns the latest version whether resident or not.
    for (i, &id) in kv.iter().enumerate() {
        let mut buf = vec![0u8; 64 * KIB as usize];
        engine.read(id, 0, &mut buf).unwrap();
        assert!(pattern::verify(
            pattern::seed(1000 * (100 + i as u64) + version[i]),
            0,
            &buf
        ));
    }
}

#[test]
fn pinned_and_held_blocks_are_never_evicted() {
    let (engine, _b) = engine(512 * KIB);
    let pinned = filled(&engine, BlockSpec::new(128 * KIB).policy(Policy::Pinned), 1);
    let held = filled(&engine, BlockSpec::new(128 * KIB), 2);
    let others: Vec<_> = (0..12)
        .map(|i| filled(&engine, BlockSpec::new(64 * KIB), 10 + i))
        .collect();
    check(&engine, pinned, 1);
    let guard = engine.wait(held).unwrap();
    for _ in 0..50 {
        for (i, &o) in others.iter().enumerate() {
            check(&engine, o, 10 + i as u64);
            assert_eq!(engine.residency(pinned).unwrap(), Residency::Resident);
            assert_eq!(engine.residency(held).unwrap(), Residency::Resident);
        }
    }
    assert!(pattern::verify(
        pattern::seed(2),
        0,
        guard.as_slice().unwrap()
    ));
    drop(guard);
    assert!(engine.stats().evictions > 500);
}

#[test]
fn unpredicted_access_returns_correct_data() {
    let (engine, _b) = engine(256 * KIB);
    let ids: Vec<_> = (0..8)
        .map(|i| filled(&engine, BlockSpec::new(64 * KIB), i))
        .collect();
    for (i, &id) in ids.iter().enumerate().take(4) {
        engine.declare(i as u64, id).unwrap();
    }
    for round in 0..20u64 {
        for step in 0..4u64 {
            engine.hint(step).unwrap();
            // The declared block, then one the schedule never mentions.
            check(&engine, ids[step as usize], step);
            let odd = 4 + ((round + step) % 4) as usize;
            check(&engine, ids[odd], odd as u64);
        }
    }
    let s = engine.stats();
    assert!(s.unpredicted >= 80);
    assert!(s.demand_loads > 0);
}

#[test]
fn run_decodes_a_small_model_exactly() {
    use synapswap::run::{run, RunConfig};
    use synapswap::workload::{llama, DeviceModel, LlamaShape};
    let wl = llama("tiny", LlamaShape::TINY, DeviceModel::CONSUMER);
    let (engine, backend) = engine(wl.model_bytes() / 3);
    let cfg = RunConfig {
        tokens: 5,
        warmup_tokens: 1,
        bound_bytes_per_s: 1e9,
        bound_source: "test".into(),
        seed: 0,
        verify: synapswap::run::Verify::Full,
    };
    let mut updates = 0;
    let r = run(&engine, &wl, &cfg, &mut |_| updates += 1).unwrap();
    assert_eq!(updates, 6);
    assert_eq!(r.integrity.mismatches, 0);
    assert!(r.integrity.verified_blocks > 5 * wl.blocks.len() as u64);
    assert!(r.peak_device_bytes <= r.vram_budget_bytes);
    assert!(
        r.bytes_h2d >= r.min_bytes_h2d,
        "moved less than the minimum?"
    );
    // `run` frees what it allocated.
    assert_eq!(engine.stats().blocks, 0);
    engine.shutdown();
    assert_eq!(backend.live_host_bytes(), 0);
}

#[test]
fn routed_steps_stay_exact() {
    use synapswap::run::RunConfig;
    use synapswap::workload::{llama, Choose, DeviceModel, LlamaShape, StepDesc};
    // A tiny MoE: each pass draws 2 of 6 experts at step 1; the engine is told the candidates.
    let mut w = llama("tiny-moe", LlamaShape::TINY, DeviceModel::CONSUMER);
    let experts: Vec<String> = (0..6).map(|e| format!("expert{e}")).collect();
    for e in &experts {
        w.blocks.push(synapswap::workload::BlockDesc {
            name: e.clone(),
            bytes: 300_000,
            priority: 5,
            policy: synapswap::Policy::Auto,
            mutable: false,
        });
    }
    w.steps.insert(
        1,
        StepDesc {
            compute_s: 0.0,
            uses: vec![],
            choose: Some(Choose::new(
                2,
                experts.iter().cloned().map(Into::into).collect(),
            )),
        },
    );
    let budget = w.model_bytes() / 3;
    let engine = synapswap::Engine::builder().budget(budget).build().unwrap();
    let cfg = RunConfig {
        tokens: 12,
        warmup_tokens: 1,
        bound_bytes_per_s: 1e9,
        bound_source: "test".into(),
        seed: 3,
        verify: synapswap::run::Verify::Full,
    };
    let r = synapswap::run::run(&engine, &w, &cfg, &mut |_| {}).unwrap();
    assert_eq!(r.integrity.mismatches, 0);
    assert!(r.evictions > 0);
    // 12 timed passes use exactly 2 experts each, plus the fixed blocks of every step.
    let per_pass = w.steps.iter().map(|s| s.uses.len()).sum::<usize>() + 2;
    assert!(r.integrity.verified_blocks as usize >= 13 * per_pass);
    engine.shutdown();
}

#[test]
fn sampled_verification_checks_less_and_still_passes() {
    use synapswap::run::{run, RunConfig, Verify};
    use synapswap::workload::{llama, DeviceModel, LlamaShape};
    let shape = LlamaShape {
        layers: 1,
        ..LlamaShape::LLAMA_8L
    };
    let wl = llama("one-layer", shape, DeviceModel::CONSUMER);
    let (engine, _backend) = engine(wl.model_bytes() / 2);
    let cfg = |verify| RunConfig {
        tokens: 2,
        warmup_tokens: 1,
        bound_bytes_per_s: 1e9,
        bound_source: "test".into(),
        seed: 0,
        verify,
    };
    let full = run(&engine, &wl, &cfg(Verify::Full), &mut |_| {}).unwrap();
    let sampled = run(&engine, &wl, &cfg(Verify::Sampled), &mut |_| {}).unwrap();
    assert_eq!(full.integrity.mismatches + sampled.integrity.mismatches, 0);
    assert_eq!(
        full.integrity.verified_blocks,
        sampled.integrity.verified_blocks
    );
    assert!(sampled.integrity.verified_bytes * 4 < full.integrity.verified_bytes);
    engine.shutdown();
}

#[test]
fn external_buffers_are_used_in_place() {
    // Four caller buffers streamed through a pool that holds two: the bytes the device sees are
    // the caller's, and the engine never frees or copies them aside.
    let (engine, backend) = engine(2 << 20);
    let mut bufs: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i + 1; 1 << 20]).collect();
    let ids: Vec<_> = bufs
        .iter_mut()
        .map(|b| {
            // SAFETY: each buffer outlives its block (freed below before the vectors drop) and
            // is not written while the engine may copy it.
            unsafe { engine.alloc_external(BlockSpec::new(1 << 20), b.as_mut_ptr(), true) }.unwrap()
        })
        .collect();
    assert_eq!(backend.live_host_bytes(), 0, "no host copy was allocated");
    for round in 0..20 {
        let i = (round * 3) % 4;
        let g = engine.wait(ids[i]).unwrap();
        assert!(g.as_slice().unwrap().iter().all(|&x| x == i as u8 + 1));
    }
    assert_eq!(engine.host_ptr(ids[2]).unwrap(), bufs[2].as_ptr() as u64);
    for id in ids {
        engine.free(id).unwrap();
    }
    engine.shutdown();
    assert!(bufs
        .iter()
        .enumerate()
        .all(|(i, b)| b.iter().all(|&x| x == i as u8 + 1)));
}

/// Regression (found by the state machine): a hit that frees prefetch room makes the planner
/// issue the next prefetches (and the write-backs their evictions need) at once; `wait` used to
/// leave those commands queued until some later call, so with no further call the copies never
/// started and the blocks stayed "loading" (or a dirty victim "writing back") forever.
#[test]
fn a_hit_starts_the_prefetches_it_makes_room_for_without_another_call() {
    // `Volatile` blocks are outside the keep plan, so the prefetch pipeline is bounded by its
    // byte cap (a quarter of the pool), which a hit on a prefetched block frees; mutable ones
    // make the evictions write back first.
    let mut hits_that_prefetched = 0;
    for room in [4u64, 8, 16] {
        for mutable in [false, true] {
            hits_that_prefetched += hit_path_case(room, mutable);
        }
    }
    assert!(
        hits_that_prefetched > 0,
        "no hit made prefetch room: the scenario no longer tests the hit path"
    );
}

/// 16 `Volatile` blocks stream through `room` blocks of pool. Returns how many hits started a
/// copy; fails if a copy a use started never ran.
fn hit_path_case(room: u64, mutable: bool) -> u32 {
    let unit = 16 * KIB;
    let (engine, _b) = engine(room * unit);
    let ids: Vec<_> = (0..16)
        .map(|i| {
            let spec = BlockSpec::new(unit)
                .policy(Policy::Volatile)
                .mutable(mutable);
            filled(&engine, spec, i)
        })
        .collect();
    for (i, &id) in ids.iter().enumerate() {
        engine.declare(i as u64, id).unwrap();
    }
    // One pass to settle the pipeline, checking the bytes.
    for (i, &id) in ids.iter().enumerate() {
        engine.hint(i as u64).unwrap();
        let g = engine.wait(id).unwrap();
        let mut buf = vec![0u8; unit as usize];
        g.read_device(0, &mut buf).unwrap();
        assert!(pattern::verify(pattern::seed(i as u64), 0, &buf));
    }
    let settled = || {
        // `residency` only reads the state; it hands nothing to the transfer thread.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let moving = ids.iter().any(|&id| {
                matches!(
                    engine.residency(id).unwrap(),
                    Residency::Loading | Residency::WritingBack
                )
            });
            if !moving {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    };
    // Second pass: after each hint let the copies drain, then take each block with `acquire`
    // (no guard, whose drop would hand queued commands over) and check that every copy the use
    // started finishes with no further call.
    let mut hits_that_prefetched = 0;
    for (i, &id) in ids.iter().enumerate() {
        engine.hint(i as u64).unwrap();
        assert!(
            settled(),
            "room {room} mutable {mutable}: copies stuck after hint({i})"
        );
        let loads = engine.stats().loads;
        let hit = engine.residency(id).unwrap() == Residency::Resident;
        engine.acquire(id).unwrap();
        assert!(
            settled(),
            "room {room} mutable {mutable}: a copy started by the use of block {i} never ran"
        );
        if hit && engine.stats().loads > loads {
            hits_that_prefetched += 1;
        }
        engine.unacquire(id).unwrap();
    }
    engine.shutdown();
    hits_that_prefetched
}
