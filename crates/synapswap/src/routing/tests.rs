//! The draws and reveals of `routing.rs`.

use super::*;
use crate::workload::Workload;

/// Four steps: dense, a routed step of `n` single-block experts, dense, dense.
fn workload(n: usize, k: u32, choose: &str) -> Workload {
    let mut blocks = vec![r#"{"name":"d0","bytes":4096}"#.to_string()];
    let mut from = Vec::new();
    for e in 0..n {
        blocks.push(format!(r#"{{"name":"e{e}","bytes":4096}}"#));
        from.push(format!(r#""e{e}""#));
    }
    let json = format!(
        r#"{{"name":"t","blocks":[{}],"steps":[
            {{"compute_s":0.001,"uses":["d0"]}},
            {{"compute_s":0.001,"choose":{{"k":{k},"from":[{}]{choose}}}}},
            {{"compute_s":0.001,"uses":["d0"]}},
            {{"compute_s":0.001,"uses":["d0"]}}]}}"#,
        blocks.join(","),
        from.join(",")
    );
    serde_json::from_str(&json).unwrap()
}

#[test]
fn popularity_skews_the_draw() {
    let w = workload(8, 2, r#","popularity":[8,1,1,1,1,1,1,1]"#);
    let r = w.resolve().unwrap();
    let mut d = Draws::new(&r);
    let mut count = [0u32; 8];
    for pass in 0..4000 {
        let e = d.experts(pass, 1).to_vec();
        assert_eq!(e.len(), 2);
        assert_ne!(e[0], e[1], "without replacement");
        for x in e {
            count[x] += 1;
        }
    }
    // Expert 0 is in nearly every draw (P = 8/15 first, then most of the rest); the others
    // share what is left evenly.
    assert!(count[0] > 3000, "{count:?}");
    for &c in &count[1..] {
        assert!((500..1250).contains(&c), "{count:?}");
    }
}

#[test]
fn repeat_reuses_the_previous_passes_choice() {
    let overlap = |choose: &str| {
        let w = workload(16, 2, choose);
        let r = w.resolve().unwrap();
        let mut d = Draws::new(&r);
        let mut same = 0;
        let mut prev = d.experts(0, 1).to_vec();
        for pass in 1..2000 {
            let e = d.experts(pass, 1).to_vec();
            same += e.iter().filter(|x| prev.contains(x)).count();
            prev = e;
        }
        same as f64 / (2.0 * 1999.0)
    };
    // Uniform: a draw is in the previous pass's 2 of 16 about 1/8 of the time.
    let uniform = overlap("");
    assert!((0.09..0.16).contains(&uniform), "{uniform}");
    assert_eq!(overlap(r#","repeat":1"#), 1.0);
    let half = overlap(r#","repeat":0.5"#);
    assert!((0.5..0.62).contains(&half), "{half}");
}

#[test]
fn the_uniform_draw_is_a_uniform_subset_and_repeatable() {
    let w = workload(8, 2, "");
    let r = w.resolve().unwrap();
    let (mut a, mut b) = (Draws::new(&r), Draws::new(&r));
    let mut count = [0u32; 8];
    for pass in 0..4000 {
        let e = a.experts(pass, 1).to_vec();
        assert_eq!(e, b.experts(pass, 1));
        for x in e {
            count[x] += 1;
        }
    }
    for &c in &count {
        assert!((850..1150).contains(&c), "{count:?}");
    }
    // Going back to an earlier pass draws it again, the same.
    let early = Draws::new(&r).experts(3, 1).to_vec();
    assert_eq!(a.experts(3, 1), early);
}

#[test]
fn a_draw_is_revealed_known_ahead_steps_before_its_step() {
    let w = workload(8, 2, r#","known_ahead":2"#);
    let r = w.resolve().unwrap();
    let mut d = Draws::new(&r);
    let mut out = Vec::new();
    let mut blocks = Vec::new();
    for pass in 0..20 {
        for s in 0..4 {
            d.reveals(pass, s, &mut out);
            // Step 1 is revealed two steps before it: at step 3 of the previous pass.
            if s == 3 {
                assert_eq!(out.len(), 1);
                assert_eq!(out[0].step, 1);
                d.blocks(pass + 1, 1, &mut blocks);
                let shown: Vec<usize> = out[0].blocks.iter().map(|&(b, _)| b).collect();
                assert_eq!(shown, blocks);
                assert!(out[0].blocks.iter().all(|&(_, p)| p == 1.0));
            } else {
                assert!(out.is_empty(), "pass {pass} step {s}: {out:?}");
            }
        }
    }
    // By default, at the step itself.
    let w = workload(8, 2, "");
    let r = w.resolve().unwrap();
    let mut d = Draws::new(&r);
    d.reveals(0, 1, &mut out);
    d.blocks(0, 1, &mut blocks);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].blocks.iter().map(|&(b, _)| b).collect::<Vec<_>>(),
        blocks
    );
}

#[test]
fn a_guess_is_right_with_its_accuracy() {
    let w = workload(16, 2, r#","known_ahead":1,"accuracy":0.8"#);
    let r = w.resolve().unwrap();
    let mut d = Draws::new(&r);
    let (mut out, mut blocks) = (Vec::new(), Vec::new());
    let (mut right, mut total) = (0, 0);
    for pass in 0..3000 {
        d.reveals(pass, 0, &mut out);
        d.blocks(pass, 1, &mut blocks);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].blocks.len(), 2, "k guesses, distinct");
        assert_ne!(out[0].blocks[0].0, out[0].blocks[1].0);
        for &(b, p) in &out[0].blocks {
            assert_eq!(p, 0.8);
            total += 1;
            right += usize::from(blocks.contains(&b));
        }
    }
    let acc = right as f64 / total as f64;
    assert!((0.77..0.83).contains(&acc), "{acc}");
}

#[test]
fn bad_routing_fields_are_rejected() {
    for (choose, what) in [
        (r#","popularity":[1,1]"#, "2 weights for 8"),
        (r#","popularity":[1,0,0,0,0,0,0,0]"#, "fewer than k"),
        (r#","popularity":[1,-1,1,1,1,1,1,1]"#, "non-negative"),
        (r#","repeat":1.5"#, "choose.repeat"),
        (r#","accuracy":-0.1"#, "choose.accuracy"),
        (r#","known_ahead":4"#, "below the number of steps"),
    ] {
        let e = workload(8, 2, choose).resolve().unwrap_err().to_string();
        assert!(e.contains(what), "{choose}: {e}");
    }
    let unknown = std::panic::catch_unwind(|| workload(8, 2, r#","popular":[1]"#));
    assert!(unknown.is_err(), "an unknown field stays an error");
}
