//! Tests of what changes without starting over: the schedule's index edited in place, frees
//! that cost no replan, the review of a timed plan, and the joint step layout's fast path.

use proptest::prelude::*;

use super::tests::{complete_all, use_block};
use super::*;
use crate::block::Residency;

/// The index as [`Schedule::rebuild`] builds it from `declared`, and `s`'s own, both as
/// step -> (uses, probabilities) and block -> (steps, probabilities). An empty step of `s` (one
/// whose last use was removed: it stays until the next rebuild) is left out.
type Index = (Vec<(u64, Vec<u32>, Vec<f64>)>, Vec<(Vec<u64>, Vec<f64>)>);

fn index_of(s: &Schedule) -> Index {
    let steps = (0..s.steps.len())
        .filter(|&p| !s.uses[p].is_empty())
        .map(|p| (s.steps[p], s.uses[p].clone(), s.probs[p].clone()))
        .collect();
    let blocks = s
        .positions
        .iter()
        .zip(&s.pos_probs)
        .map(|(ps, pr)| {
            let steps = ps.iter().map(|&p| s.steps[p as usize]).collect();
            (steps, pr.clone())
        })
        .collect();
    (steps, blocks)
}

fn rebuilt(s: &Schedule, slots: usize) -> Index {
    let mut fresh = Schedule {
        declared: s.declared.clone(),
        stale: true,
        ..Default::default()
    };
    fresh.rebuild(slots);
    index_of(&fresh)
}

/// A planner with `n` blocks of `size`, one used per step, at `budget`.
fn one_a_step(n: u64, size: u64, budget: u64) -> (Planner, Vec<BlockId>) {
    let mut p = Planner::new(PlannerConfig::new(budget)).unwrap();
    let ids: Vec<BlockId> = (0..n)
        .map(|_| p.add_block(BlockSpec::new(size)).unwrap())
        .collect();
    for (s, &id) in ids.iter().enumerate() {
        p.declare(s as u64, id).unwrap();
    }
    (p, ids)
}

/// 64 blocks of 4 KiB, one a step, through half of them, after two passes (a keep plan in
/// force).
fn ran_two_passes() -> (Planner, Vec<BlockId>) {
    let n = 64u64;
    let (mut p, ids) = one_a_step(n, 4096, n * 4096 / 2);
    for _ in 0..2 {
        for (s, &id) in ids.iter().enumerate() {
            p.hint(s as u64, s as f64);
            use_block(&mut p, id);
        }
    }
    (p, ids)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Declaring into steps that exist, changing a probability and removing blocks edit the
    /// index in place; it must always equal the one a rebuild would make.
    #[test]
    fn the_edited_index_equals_a_rebuilt_one(
        ops in proptest::collection::vec((0u8..3, 0usize..10, 0u64..5, 1u8..=4), 1..40)
    ) {
        let mut p = Planner::new(PlannerConfig::new(64 * 4096)).unwrap();
        let ids: Vec<BlockId> = (0..10)
            .map(|_| p.add_block(BlockSpec::new(4096)).unwrap())
            .collect();
        let mut live = [true; 10];
        for s in 0..5u64 {
            p.declare(s, ids[s as usize]).unwrap();
            p.declare(s, ids[s as usize + 5]).unwrap();
        }
        p.sync_schedule();
        for (op, b, step, q) in ops {
            match op {
                0 | 1 if live[b] => {
                    p.declare_p(step, ids[b], f64::from(q) / 4.0).unwrap();
                }
                2 if live[b] => {
                    complete_all(&mut p);
                    p.remove_block(ids[b]).unwrap();
                    live[b] = false;
                }
                _ => p.sync_schedule(),
            }
            if !p.schedule.stale {
                prop_assert_eq!(index_of(&p.schedule), rebuilt(&p.schedule, p.slots.len()));
            }
        }
        // Every step exists from the start, so declarations were edits, not rebuilds.
        prop_assert!(!p.schedule.stale);
    }
}

/// Freeing a model block by block, after it ran (a keep plan in force), costs no replan: each
/// free edits the index and drops the block from the plan. Before, every free remade the plan
/// (O(n)), so freeing n blocks cost O(n^2): 4,000 replans at the end of `synapswap run
/// --workload small-tensors`.
#[test]
fn freeing_blocks_one_by_one_costs_no_replan() {
    let (mut p, ids) = ran_two_passes();
    let before = p.stats();
    assert!(before.kept_blocks > 0, "a plan is in force");
    let kept = ids
        .iter()
        .find(|id| p.keep[id.index as usize])
        .copied()
        .unwrap();
    p.remove_block(kept).unwrap();
    let after = p.stats();
    assert_eq!(
        after.kept_blocks,
        before.kept_blocks - 1,
        "it left the plan"
    );
    assert_eq!(after.kept_bytes, before.kept_bytes - 4096);
    for &id in ids.iter().filter(|&&id| id != kept) {
        p.remove_block(id).unwrap();
        complete_all(&mut p);
    }
    assert_eq!(p.stats().replans, before.replans, "no free remade the plan");
    assert_eq!(p.stats().kept_blocks, 0);
    assert_eq!(p.stats().device_used_bytes, 0);
}

/// A plan timed on first passes whose steps were slow (a warm-up: in `synapswap run`, first
/// touches of fresh pages) is reviewed once the steps are fast, and changes. Without the
/// review it stayed for good: a run that kept nothing and streamed twice the bytes to the end.
#[test]
fn a_plan_timed_on_a_slow_first_pass_is_reviewed() {
    let n = 64u64;
    let (mut p, ids) = one_a_step(n, 1 << 20, n << 19);
    let mut now = 0.0;
    let mut pass = |p: &mut Planner, step_s: &dyn Fn(usize) -> f64| {
        for (s, &id) in ids.iter().enumerate() {
            p.hint(s as u64, now);
            use_block(p, id);
            now += step_s(s);
        }
    };
    // Two slow passes (the plan is timed on them): every 16th step takes 0.2 s (against 1 ms
    // per copy of 1 MiB), the others 1 us.
    let warm = |s: usize| if s % 16 == 0 { 0.2 } else { 1e-6 };
    pass(&mut p, &warm);
    pass(&mut p, &warm);
    let slow = p.stats();
    // Then every step takes 1 us: copy-bound, where every kept byte saves a copy. The slow
    // steps' smoothed times decay by 0.7 a pass, so the reviews after 1, 2, 4, 8 and 16 passes
    // see it late but do see it.
    for _ in 0..20 {
        pass(&mut p, &|_| 1e-6);
    }
    let fast = p.stats();
    assert!(fast.replans > slow.replans, "the plan was reviewed");
    assert!(
        fast.kept_bytes > slow.kept_bytes,
        "copy-bound, it keeps more: {} then {} kept bytes",
        slow.kept_bytes,
        fast.kept_bytes
    );
}

/// A hinted step whose streamed blocks are not on the device (the prefetch walk fell behind)
/// takes its ring slots without a map of the pool (O(regions) per hint, and at 4,000 blocks the
/// general layout made every hint cost milliseconds).
#[test]
fn a_step_behind_the_prefetch_takes_its_ring_slots_without_a_map_of_the_pool() {
    let (n, (mut p, ids)) = (64u64, ran_two_passes());
    assert!(p.planned, "a keep plan is in force");
    let far = (0..n)
        .find(|&s| {
            let id = ids[s as usize];
            p.residency(id).unwrap() == Residency::Host && !p.keep[id.index as usize]
        })
        .expect("a streamed block on the host");
    let maps = p.n.step_maps;
    p.hint(far, 1e3);
    let id = ids[far as usize];
    assert_ne!(
        p.residency(id).unwrap(),
        Residency::Host,
        "placed at the hint"
    );
    assert_eq!(p.n.step_maps, maps, "placed without a map of the pool");
    use_block(&mut p, id);
}
