//! Coalesced copies through the real engine: a step's small blocks, allocated one after another
//! (end to end in a host slab) and placed end to end on the device, go as fewer copies than
//! blocks; blocks that do not follow on go as separate copies, batched into fewer submissions;
//! and every byte still arrives where it belongs.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{check, filled, Hooked, Hooks, KIB};
use synapswap::{BlockId, BlockSpec, Engine, Result};

/// Submissions to the backend, and the contiguous copies (segments) in them.
#[derive(Debug, Default)]
struct Count {
    submissions: AtomicU64,
    copies: AtomicU64,
}

impl Hooks for Count {
    fn submit(&self) -> Result<()> {
        self.batch(1)
    }
    fn batch(&self, segments: usize) -> Result<()> {
        self.submissions.fetch_add(1, Ordering::SeqCst);
        self.copies.fetch_add(segments as u64, Ordering::SeqCst);
        Ok(())
    }
}

/// What [`run`] counted.
struct Counted {
    loads: u64,
    copies: u64,
    submissions: u64,
}

/// 64 blocks used, 16 a step, budget for half of them, over `passes`. Only every `stride`-th
/// block allocated is used.
fn run(block: u64, passes: u64, stride: usize) -> Counted {
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
    Counted {
        loads,
        copies: backend.hooks.copies.load(Ordering::SeqCst),
        submissions: backend.hooks.submissions.load(Ordering::SeqCst),
    }
}

#[test]
fn a_steps_small_blocks_go_as_fewer_copies_with_every_byte_right() {
    // A step of 16 goes as one to a few copies, depending on how far prefetch got when each
    // chunk was carved (timing); without merging, copies == loads.
    let Counted { loads, copies, .. } = run(16 * KIB, 4, 1);
    assert!(loads >= 64, "the streamed half loads every pass: {loads}");
    assert!(
        copies * 2 <= loads,
        "{copies} copies for {loads} loads: the step's blocks were not merged"
    );
}

#[test]
fn blocks_that_do_not_follow_on_are_copied_one_by_one_in_fewer_submissions() {
    // 16 KiB + 100 bytes: the host slab packs them at granule (256 B) steps, so neither side
    // follows on, and no copy may cover two blocks.
    let c = run(16 * KIB + 100, 2, 1);
    assert!(
        c.copies >= c.loads,
        "{} copies for {} loads",
        c.copies,
        c.loads
    );
    // Every other block allocated: end to end on the device (the ring), not on the host. A
    // merged copy would carry the unused neighbours' bytes, which `check` would see.
    let c = run(16 * KIB, 2, 2);
    assert!(
        c.copies >= c.loads,
        "{} copies for {} loads",
        c.copies,
        c.loads
    );
    // They are batched: a step's separate copies go in one submission, or a few (how far
    // prefetch got when each chunk was carved); without batching, submissions == copies.
    assert!(
        c.submissions * 2 <= c.copies,
        "{} submissions for {} copies: not batched",
        c.submissions,
        c.copies
    );
}
