//! Coalesced copies through the real engine: a step's small blocks, allocated one after another
//! (end to end in a host slab) and placed end to end on the device, go as fewer copies than
//! blocks, and every byte still arrives where it belongs.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{check, filled, Hooked, Hooks, KIB};
use synapswap::{BlockId, BlockSpec, Engine, Result};

#[derive(Debug, Default)]
struct Count {
    submits: AtomicU64,
}

impl Hooks for Count {
    fn submit(&self) -> Result<()> {
        self.submits.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// 64 blocks used, 16 a step, budget for half of them: returns (loads, copies) over `passes`.
/// Only every `stride`-th block allocated is used.
fn run(block: u64, passes: u64, stride: usize) -> (u64, u64) {
    let backend = Arc::new(Hooked::unpaced(Count::default()));
    let engine = Engine::builder()
        .budget(32 * block)
        .backend(backend.clone())
        .build()
        .unwrap();
    let all: Vec<BlockId> = (0..64 * stride as u64)
        .map(|i| filled(&engine, BlockSpec::new(block), i))
        .collect();
    let ids: Vec<BlockId> = all.iter().copied().step_by(stride).collect();
    for (i, &id) in ids.iter().enumerate() {
        engine.declare(i as u64 / 16, id).unwrap();
    }
    for _ in 0..passes {
        for step in 0..4u64 {
            engine.hint(step).unwrap();
            for k in 0..16 {
                let i = (step * 16 + k) as usize;
                check(&engine, ids[i], (i * stride) as u64);
            }
        }
    }
    let loads = engine.stats().loads;
    engine.shutdown();
    (loads, backend.hooks.submits.load(Ordering::SeqCst))
}

#[test]
fn a_steps_small_blocks_go_as_fewer_copies_with_every_byte_right() {
    // A step of 16 goes as one to a few copies, depending on how far prefetch got when each
    // chunk was carved (timing); without merging, copies == loads.
    let (loads, copies) = run(16 * KIB, 4, 1);
    assert!(loads >= 64, "the streamed half loads every pass: {loads}");
    assert!(
        copies * 2 <= loads,
        "{copies} copies for {loads} loads: the step's blocks were not merged"
    );
}

#[test]
fn blocks_that_do_not_follow_on_are_copied_one_by_one() {
    // 16 KiB + 100 bytes: the host slab packs them at granule (256 B) steps, so neither side
    // follows on, and no copy may cover two blocks.
    let (loads, copies) = run(16 * KIB + 100, 2, 1);
    assert!(copies >= loads, "{copies} copies for {loads} loads");
    // Every other block allocated: end to end on the device (the ring), not on the host. A
    // merged copy would carry the unused neighbours' bytes, which `check` would see.
    let (loads, copies) = run(16 * KIB, 2, 2);
    assert!(copies >= loads, "{copies} copies for {loads} loads");
}
