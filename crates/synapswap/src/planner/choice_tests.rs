//! Routing hints (`choice.rs`): hinted candidates load ahead, lapse after their occurrence, and
//! bad hints change nothing.

use super::tests::{complete_all, routed, routed_pass, use_block};
use super::*;
use crate::block::Residency;

const KIB: u64 = 1 << 10;

/// [`routed`] with two of eight experts a pass (declared `2 / 8` each) and room for the dense
/// blocks and five experts.
fn two_of_eight() -> (Planner, [BlockId; 2], Vec<BlockId>) {
    routed(7, 0.25)
}

/// The blocks the planner asks to load now.
fn loads(p: &mut Planner) -> Vec<BlockId> {
    let mut out = Vec::new();
    while let Some(c) = p.poll_command() {
        if let Command::Load { block, .. } = c {
            out.push(block);
            p.transfer_done(block, true, "", 0.001);
        }
    }
    out
}

/// One pass using experts `used` at step 1, every hint at time 0 (nothing measured).
fn pass(p: &mut Planner, dense: [BlockId; 2], used: &[BlockId]) {
    routed_pass(p, dense, used, &mut 0.0, 0.0);
}

#[test]
fn a_hinted_candidate_loads_ahead_and_an_unhinted_one_does_not() {
    let (mut p, dense, e) = two_of_eight();
    pass(&mut p, dense, &[e[0], e[1]]);
    pass(&mut p, dense, &[e[2], e[3]]);
    // Make room for both hinted experts at once (the plan may keep the experts used so far).
    for &x in &e[..4] {
        if p.residency(x).unwrap() == Residency::Resident {
            p.remove_block(x).unwrap();
        }
    }
    // At step 0, experts 6 and 7 (never used) are on the host; nothing loads them ahead.
    p.hint(0, 0.0);
    let ahead = loads(&mut p);
    assert!(
        !ahead.contains(&e[6]) && !ahead.contains(&e[7]),
        "{ahead:?}"
    );
    // The router's output for step 1: both load now, before step 1 is hinted.
    p.hint_choice(1, &[(e[6], 1.0), (e[7], 1.0)]).unwrap();
    let ahead = loads(&mut p);
    assert!(ahead.contains(&e[6]) && ahead.contains(&e[7]), "{ahead:?}");
    use_block(&mut p, dense[0]);
    p.hint(1, 0.0);
    assert!(matches!(p.acquire(e[6]).unwrap(), Acquire::Ready(_)));
    p.unhold(e[6]);
    assert!(matches!(p.acquire(e[7]).unwrap(), Acquire::Ready(_)));
    p.unhold(e[7]);
    complete_all(&mut p);
}

#[test]
fn a_hint_for_the_running_step_loads_its_choice_at_once() {
    let (mut p, dense, e) = two_of_eight();
    pass(&mut p, dense, &[e[0], e[1]]);
    p.hint(0, 0.0);
    use_block(&mut p, dense[0]);
    p.hint(1, 0.0);
    loads(&mut p);
    // Known only at its own step (a router just ran): the hint is for this occurrence.
    p.hint_choice(1, &[(e[5], 1.0)]).unwrap();
    assert_eq!(loads(&mut p), vec![e[5]]);
}

/// One pass as [`pass`] does, each step taking 4 ms from `*now` (copies take 1 ms: `use_block`).
fn timed_pass(p: &mut Planner, dense: [BlockId; 2], used: &[BlockId], now: &mut f64) {
    routed_pass(p, dense, used, now, 0.004);
}

#[test]
fn a_guess_loads_only_when_its_copy_fits_before_its_step() {
    let (mut p, dense, e) = two_of_eight();
    // Unmeasured: a guess (probability < 1) waits for the real choice.
    pass(&mut p, dense, &[e[0], e[1]]);
    p.hint(0, 0.0);
    p.hint_choice(1, &[(e[6], 0.8)]).unwrap();
    assert_eq!(loads(&mut p), vec![]);
    assert_eq!(
        p.distance(e[6].index),
        1,
        "it still ranks as needed at step 1"
    );
    // Measured: steps of 4 ms, copies of 1 ms: the guess loads at once.
    let (mut p, dense, e) = two_of_eight();
    let mut now = 0.0;
    for _ in 0..3 {
        timed_pass(&mut p, dense, &[e[0], e[1]], &mut now);
    }
    p.hint(0, now);
    loads(&mut p);
    p.hint_choice(1, &[(e[6], 0.8)]).unwrap();
    assert_eq!(loads(&mut p), vec![e[6]]);
}

#[test]
fn a_hint_lapses_once_its_occurrence_is_past() {
    let (mut p, dense, e) = two_of_eight();
    let mut now = 0.0;
    for _ in 0..3 {
        timed_pass(&mut p, dense, &[e[0], e[1]], &mut now);
    }
    p.hint(0, now);
    loads(&mut p);
    // A guess, then the step runs with other experts.
    p.hint_choice(1, &[(e[6], 0.8)]).unwrap();
    assert_eq!(loads(&mut p), vec![e[6]]);
    assert_eq!(p.choices.len(), 1);
    use_block(&mut p, dense[0]);
    p.hint(1, 0.0);
    use_block(&mut p, e[2]);
    p.hint(2, 0.0);
    assert!(p.choices.is_empty(), "{:?}", p.choices);
    use_block(&mut p, dense[1]);
    complete_all(&mut p);
    // A wrong guess cost its own copy and nothing else: the next pass loads no expert ahead.
    p.hint(0, 0.0);
    let ahead = loads(&mut p);
    assert!(ahead.iter().all(|b| !e.contains(b)), "{ahead:?}");
    // The same step hinted again (a one-step cycle's next pass) ends the hint for it too.
    p.hint_choice(0, &[(dense[0], 1.0)]).unwrap();
    p.hint(0, 0.0);
    assert!(p.choices.is_empty());
}

#[test]
fn bad_hints_are_errors_and_change_nothing() {
    let (mut p, dense, e) = two_of_eight();
    pass(&mut p, dense, &[e[0], e[1]]);
    p.hint(0, 0.0);
    complete_all(&mut p);
    assert_eq!(
        p.hint_choice(7, &[(e[0], 1.0)]),
        Err(Error::NotACandidate {
            step: 7,
            block: None
        })
    );
    assert_eq!(
        p.hint_choice(1, &[(e[6], 1.0), (dense[1], 1.0)]),
        Err(Error::NotACandidate {
            step: 1,
            block: Some(dense[1])
        })
    );
    for bad in [0.0, -1.0, 1.5, f64::NAN] {
        assert!(matches!(
            p.hint_choice(1, &[(e[6], bad)]),
            Err(Error::InvalidProbability(_))
        ));
    }
    assert!(p.choices.is_empty());
    assert!(
        p.poll_command().is_none(),
        "nothing loads after a refused hint"
    );
    // An empty hint withdraws one.
    p.hint_choice(1, &[(e[6], 0.5)]).unwrap();
    loads(&mut p);
    p.hint_choice(1, &[]).unwrap();
    assert!(p.choices.is_empty());
}

#[test]
fn a_hinted_block_ranks_as_needed_at_its_step() {
    let (mut p, dense, e) = two_of_eight();
    pass(&mut p, dense, &[e[0], e[1]]);
    p.hint(0, 0.0);
    complete_all(&mut p);
    let before = p.distance(e[0].index);
    p.hint_choice(1, &[(e[0], 1.0)]).unwrap();
    assert_eq!(p.distance(e[0].index), 1);
    assert!(before > 1, "declared 1/4 per pass: {before}");
}

#[test]
fn a_hint_given_before_its_steps_hint_stays_for_it() {
    // The router's choice told before the step is hinted (here the very first step, where a
    // fresh planner already sits): the hint is for that coming occurrence, not a lapsed one.
    let mut p = Planner::new(PlannerConfig::new(64 * KIB * 7)).unwrap();
    let e: Vec<BlockId> = (0..4)
        .map(|_| p.add_block(BlockSpec::new(64 * KIB)).unwrap())
        .collect();
    let dense = p.add_block(BlockSpec::new(64 * KIB)).unwrap();
    for &x in &e {
        p.declare_p(0, x, 0.25).unwrap();
    }
    p.declare(1, dense).unwrap();
    p.hint_choice(0, &[(e[2], 1.0)]).unwrap();
    p.hint(0, 0.0);
    assert_eq!(p.choices.len(), 1, "the hint survives its own step's hint");
    use_block(&mut p, e[2]);
    p.hint(1, 0.0);
    assert!(p.choices.is_empty(), "and lapses once the step ran");
}

#[test]
fn a_removed_blocks_hints_go_with_it() {
    let (mut p, dense, e) = two_of_eight();
    pass(&mut p, dense, &[e[0], e[1]]);
    p.hint(0, 0.0);
    complete_all(&mut p);
    p.hint_choice(1, &[(e[6], 1.0), (e[7], 1.0)]).unwrap();
    complete_all(&mut p);
    p.remove_block(e[7]).unwrap();
    assert_eq!(p.choices.len(), 1);
    assert!(p.choices.iter().all(|c| c.block == e[6].index));
}
