//! The keep plan's unit tests.

use super::*;

const MIB: u64 = 1 << 20;
const LAYER: u64 = 3_983_616;
const CLASSIFIER: u64 = 36_864_000;

/// Issue 14's decoder: block 0 the classifier (steps 0 and 7), block 1 the final norm (step
/// 7), blocks 2..=7 the layers (steps 1..=6).
fn decoder() -> (Vec<Candidate>, Steps) {
    let cand = |index: u32, size, uses, first| Candidate {
        index,
        uses,
        size,
        priority: 5,
        first,
    };
    let mut cands = vec![cand(0, CLASSIFIER, 2.0, 0), cand(1, 1280, 1.0, 7)];
    for l in 0..6 {
        cands.push(cand(2 + l, LAYER, 1.0, 1 + l));
    }
    let at = |c: u32| Use {
        cand: Some(c),
        size: cands[c as usize].size,
        prob: 1.0,
    };
    let mut steps = vec![vec![at(0)]];
    steps.extend((0..6).map(|l| vec![at(2 + l)]));
    steps.push(vec![at(1), at(0)]);
    (cands, steps.into_iter().collect())
}

/// Compute per step of the decoder, each layer `layer_s`.
fn decoder_compute(layer_s: f64) -> Vec<f64> {
    let mut c = vec![1e-4];
    c.extend([layer_s; 6]);
    c.push(1e-3);
    c
}

fn inputs<'a>(
    cands: &'a [Candidate],
    steps: &'a Steps,
    room: u64,
    compute: Option<&'a [f64]>,
    bw: f64,
) -> Inputs<'a> {
    Inputs {
        candidates: cands,
        steps,
        room,
        timing: compute.map(|c| Timing {
            compute_s: c,
            bytes_per_s: bw,
        }),
    }
}

/// A tiny deterministic generator for noise.
fn lcg(state: &mut u64) -> f64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

#[test]
fn the_decoder_keeps_its_classifier() {
    let (cands, steps) = decoder();
    // Copies fit under compute (2.1 ms a layer against 2.0 ms a copy), and only just (the
    // pass streams 12 ms and computes 14 ms), and copy-bound (1 ms a layer).
    for layer_s in [None, Some(2.1e-3), Some(1.75e-3), Some(1e-3)] {
        let compute = layer_s.map(decoder_compute);
        let input = inputs(&cands, &steps, 45 * MIB, compute.as_deref(), 2e9);
        let plan = plan(&input, None);
        assert_eq!(plan.keep, vec![0, 1], "{layer_s:?}: {plan:?}");
        assert_eq!(plan.streamed_bytes, 6.0 * LAYER as f64);
        assert_eq!(plan.reserve, 45 * MIB - CLASSIFIER - 1280);
        if let Some(t) = plan.predicted_s {
            // At least the pass's compute and its copies; with per-step copies under the
            // compute, about the compute.
            let c: f64 = compute.as_ref().unwrap().iter().sum();
            assert!(t >= c.max(plan.streamed_bytes / 2e9) * 0.95, "{t} {c}");
            if layer_s == Some(2.1e-3) {
                assert!(t <= c * 1.05, "{t} {c}");
            }
        }
    }
}

#[test]
fn the_same_inputs_give_the_same_plan() {
    let (cands, steps) = decoder();
    let compute = decoder_compute(2.1e-3);
    let input = inputs(&cands, &steps, 45 * MIB, Some(&compute), 2e9);
    let first = plan(&input, None);
    assert_eq!(first, plan(&input, None));
    assert_eq!(first, plan(&input, Some(&first)));
    // The candidates' order is not an input.
    let mut reversed = cands.clone();
    reversed.reverse();
    let remap = |u: &Use| Use {
        cand: u.cand.map(|c| cands.len() as u32 - 1 - c),
        ..*u
    };
    let steps2: Steps = steps.iter().map(|s| s.iter().map(remap)).collect();
    let other = plan(
        &inputs(&reversed, &steps2, 45 * MIB, Some(&compute), 2e9),
        None,
    );
    assert_eq!(
        (other.keep, other.reserve, other.predicted_s),
        (first.keep, first.reserve, first.predicted_s)
    );
}

/// Ten 8 MiB blocks, one per step, five steps of `x` ms and five of `x / 10`, through 64 MiB
/// at 8 GB/s: a small reserve keeps more but stalls where compute is short, a large one
/// streams more but hides it. Which is faster depends on `x`.
fn tradeoff() -> (Vec<Candidate>, Steps) {
    let cands: Vec<Candidate> = (0..10)
        .map(|i| Candidate {
            index: i,
            uses: 1.0,
            size: 8 * MIB,
            priority: 5,
            first: i,
        })
        .collect();
    let steps = (0..10)
        .map(|i| {
            vec![Use {
                cand: Some(i),
                size: 8 * MIB,
                prob: 1.0,
            }]
        })
        .collect();
    (cands, steps)
}

fn tradeoff_compute(x: f64, noise: &mut dyn FnMut() -> f64) -> Vec<f64> {
    (0..10)
        .map(|i| if i < 5 { x } else { x / 10.0 } * 1e-3 * noise())
        .collect()
}

#[test]
fn hysteresis_keeps_a_plan_under_small_noise() {
    let (cands, steps) = tradeoff();
    let at = |x: f64, noise: &mut dyn FnMut() -> f64, prev: Option<&KeepPlan>| {
        let compute = tradeoff_compute(x, noise);
        plan(&inputs(&cands, &steps, 64 * MIB, Some(&compute), 8e9), prev)
    };
    // Without a previous plan the choice changes somewhere between copy-bound and
    // compute-bound: find where.
    let xs: Vec<f64> = (0..200).map(|i| 0.2 * 1.02f64.powi(i)).collect();
    let plans: Vec<KeepPlan> = xs.iter().map(|&x| at(x, &mut || 1.0, None)).collect();
    let flip = (1..xs.len())
        .find(|&i| plans[i].keep != plans[i - 1].keep)
        .expect("the best plan depends on the compute");
    // Noise of up to 3% on every step's time (and so on the pass's) near that point flips a
    // plan made without a previous one (at the first point near the flip where it does)...
    let mut seed = 1;
    let flips_at = |x: f64, seed: &mut u64| {
        let fresh: Vec<Vec<u32>> = (0..20)
            .map(|_| at(x, &mut || 1.0 + 0.06 * (lcg(seed) - 0.5), None).keep)
            .collect();
        fresh.iter().any(|k| *k != fresh[0])
    };
    let x = (flip.saturating_sub(4)..(flip + 4).min(xs.len()))
        .map(|i| xs[i])
        .find(|&x| flips_at(x, &mut seed))
        .expect("noise flips a fresh plan somewhere near the flip");
    let mut noisy = |prev: Option<&KeepPlan>| {
        let mut noise = || 1.0 + 0.06 * (lcg(&mut seed) - 0.5);
        at(x, &mut noise, prev)
    };
    // ...and never one made with the plan in force as the previous plan.
    let held = noisy(None);
    for _ in 0..20 {
        let next = noisy(Some(&held));
        assert_eq!(next.keep, held.keep, "{held:?} became {next:?}");
    }
    // A clear change of the measurements still changes the plan: copy-bound, the plan that
    // streams the least is a third faster than the one made just past the flip.
    let copy_bound = at(x / 4.0, &mut || 1.0, Some(&plans[flip]));
    assert_eq!(copy_bound.keep, plans[flip - 1].keep);
}

#[test]
fn a_plan_for_other_blocks_is_not_held() {
    let (cands, steps) = decoder();
    let compute = decoder_compute(2.1e-3);
    let held = plan(&inputs(&cands, &steps, 45 * MIB, Some(&compute), 2e9), None);
    // Room for everything: the previous plan (made for less room) does not hold.
    let more = plan(
        &inputs(&cands, &steps, 128 * MIB, Some(&compute), 2e9),
        Some(&held),
    );
    assert_eq!(more.keep.len(), cands.len());
}

#[test]
fn prefetch_deficit_is_the_quadratic_definition() {
    let reference = |streamed: &[f64], compute: &[f64], bw: f64| {
        let len = streamed.len();
        let total_copy: f64 = streamed.iter().sum::<f64>() / bw;
        if total_copy >= compute.iter().sum::<f64>() {
            return None;
        }
        let mut worst = 0.0f64;
        for i in 0..len {
            let (mut bytes, mut time) = (0.0, 0.0);
            for k in 0..len {
                let q = (i + k) % len;
                if k > 0 {
                    time += compute[(q + len - 1) % len];
                }
                bytes += streamed[q];
                worst = worst.max(bytes - bw * time);
            }
        }
        Some(worst.ceil() as u64)
    };
    let mut seed = 7;
    for len in 1..40 {
        for _ in 0..20 {
            let streamed: Vec<f64> = (0..len)
                .map(|_| {
                    let r = lcg(&mut seed);
                    if r < 0.3 {
                        0.0
                    } else {
                        (r * 1e8).round()
                    }
                })
                .collect();
            let compute: Vec<f64> = (0..len).map(|_| lcg(&mut seed) * 0.02).collect();
            let bw = 1e9 + lcg(&mut seed) * 1e10;
            let fast = prefetch_deficit(&streamed, &compute, bw);
            let slow = reference(&streamed, &compute, bw);
            match (fast, slow) {
                (Some(a), Some(b)) => assert!(a.abs_diff(b) <= 1, "{a} {b}"),
                (a, b) => assert_eq!(a, b),
            }
        }
    }
}

#[test]
fn the_pipeline_model_bounds() {
    // Ample ring, copies under compute: the compute. Copy-bound: the copies.
    let ahead = [4e6, 4e6, 0.0];
    let compute = [3e-3, 3e-3, 1e-3];
    let t = pass_time(&ahead, &[0.0; 3], &compute, 2e9, 1e9);
    assert!((t - 7e-3).abs() < 1e-9, "{t}");
    let t = pass_time(&ahead, &[0.0; 3], &[1e-4; 3], 2e9, 1e9);
    assert!((t - 4e-3).abs() < 1e-9, "{t}");
    // A ring that holds one step at a time: a copy overlaps only the step without bytes
    // (the 2 ms copy of step 0 under the 1 ms of step 2): 7 ms + 4 ms - 1 ms.
    let t = pass_time(&ahead, &[0.0; 3], &compute, 2e9, 4e6);
    assert!((t - 10e-3).abs() < 1e-9, "{t}");
    // Bytes loaded on demand are never hidden.
    let t = pass_time(&[0.0; 3], &[4e6, 4e6, 0.0], &compute, 2e9, 1e9);
    assert!((t - 11e-3).abs() < 1e-9, "{t}");
}
