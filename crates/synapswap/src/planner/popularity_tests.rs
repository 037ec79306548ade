//! Learned popularity (`popularity.rs`): the keep plan keeps what is really used, the eviction
//! rule ranks recently used candidates nearer.

use super::tests::{routed, routed_pass};
use super::*;

/// [`routed`] with one of eight experts a pass (declared 1/8 each) and room for the dense
/// blocks and four experts.
fn one_of_eight() -> (Planner, [BlockId; 2], Vec<BlockId>) {
    routed(6, 0.125)
}

/// One pass using `expert`, each step 0.1 ms, each copy 1 ms (copy-bound: what is kept decides
/// the pass time).
fn pass(p: &mut Planner, dense: [BlockId; 2], expert: BlockId, now: &mut f64) {
    routed_pass(p, dense, &[expert], now, 0.0001);
}

#[test]
fn the_keep_plan_keeps_the_expert_that_is_used() {
    let (mut p, dense, e) = one_of_eight();
    let mut now = 0.0;
    // Expert 7 (declared like the others, last in every order) in four passes of five.
    for i in 0..80u64 {
        let x = if i % 5 == 0 {
            e[(i / 5 % 7) as usize]
        } else {
            e[7]
        };
        pass(&mut p, dense, x, &mut now);
    }
    assert!(p.is_kept(e[7]).unwrap(), "the popular expert is kept");
    let kept_others = e[..7].iter().filter(|&&x| p.is_kept(x).unwrap()).count();
    // What it learned: about 0.8 for expert 7, about 0.03 for each other.
    let learned = p.schedule.learned_p(e[7].index, 1).unwrap();
    assert!((0.65..0.95).contains(&learned), "{learned}");
    assert!(p.schedule.learned_p(e[0].index, 1).unwrap() < 0.15);
    // The hits follow: over 20 more passes, expert 7's uses are on the device.
    let before = p.stats();
    for _ in 0..20 {
        pass(&mut p, dense, e[7], &mut now);
    }
    let s = p.stats();
    assert_eq!(s.loads - before.loads, 0, "kept {kept_others} others too");
}

#[test]
fn a_candidate_used_recently_ranks_nearer_than_one_that_was_not() {
    let (mut p, dense, e) = one_of_eight();
    let mut now = 0.0;
    for &x in &e {
        pass(&mut p, dense, x, &mut now);
    }
    pass(&mut p, dense, e[3], &mut now);
    p.hint(0, now);
    // Expert 3 was used a pass ago (recent estimate 1/2 or more), expert 5 four passes ago.
    assert!(p.distance(e[3].index) < p.distance(e[5].index));
}
