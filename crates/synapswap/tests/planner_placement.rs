//! Placement: whenever every step's blocks fit in the budget together, a workload runs, at every
//! such budget, with no `OutOfDeviceMemory` (issue 12). Fragmentation is the planner's problem,
//! not the caller's.
//!
//! Random workloads (3-60 blocks of 4 KiB to 200 MiB, 1-4 blocks a step, a mix of policies,
//! priorities and mutable blocks) are simulated at budgets from the largest step's footprint (its
//! blocks granule-rounded, plus every pinned block) up to the model's size. The simulator drives
//! the same pure planner as the runtime, on a virtual clock.
//!
//! Cases: `SYNAPSWAP_PLACEMENT_CASES` (default 1000, about a second in release).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use synapswap::pool::{granules, GRANULE};
use synapswap::simulate::{self, SimPolicy, SimulateConfig};
use synapswap::workload::{BlockDesc, StepDesc, Workload};
use synapswap::{Error, Policy};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn rounded(bytes: u64) -> u64 {
    granules(bytes) * GRANULE
}

/// The least budget the rule promises to run at: the largest step's blocks plus every pinned
/// block, each granule-rounded, a pinned block of the step counted once.
fn min_budget(w: &Workload) -> u64 {
    let index = |name: &str| w.blocks.iter().position(|b| b.name == name).unwrap();
    let pinned: u64 = w
        .blocks
        .iter()
        .filter(|b| b.policy == Policy::Pinned)
        .map(|b| rounded(b.bytes))
        .sum();
    let step = w
        .steps
        .iter()
        .map(|s| {
            s.uses
                .iter()
                .map(|n| &w.blocks[index(n)])
                .filter(|b| b.policy != Policy::Pinned)
                .map(|b| rounded(b.bytes))
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0);
    step + pinned
}

#[derive(Debug, Clone)]
struct Case {
    /// (bytes, policy 0..8 (6: pinned, 7: lru, 5: volatile, else auto), priority, mutable)
    blocks: Vec<(u64, u8, u8, bool)>,
    /// Block indices (modulo the block count) of each step.
    steps: Vec<Vec<usize>>,
    /// Where the budget lies between the minimum and the model's size, in 1/1000 (cubed, so
    /// tight budgets, where fragmentation bites, come up most).
    at: u32,
    /// Every block `auto`, equal priorities, nothing mutable.
    plain: bool,
    compute_us: u32,
    /// The link: 0 the simulator's default (copy-bound), 1 25 GB/s, 2 1 TB/s (compute-bound,
    /// prefetch runs far ahead).
    link: u8,
}

fn case() -> impl Strategy<Value = Case> {
    (3usize..=60)
        .prop_flat_map(|n| {
            (
                proptest::collection::vec(
                    (
                        12u32..=27,
                        0u64..1000,
                        0u8..8,
                        0u8..=10,
                        proptest::bool::weighted(0.2),
                    ),
                    n,
                ),
                proptest::collection::vec(proptest::collection::vec(0usize..n, 1..=4), 1..=n),
                0u32..=1000,
                proptest::bool::weighted(0.3),
                1u32..2000,
                0u8..3,
            )
        })
        .prop_map(|(blocks, steps, at, plain, compute_us, link)| Case {
            blocks: blocks
                .into_iter()
                .map(|(exp, frac, pol, prio, m)| {
                    // Log-uniform in 4 KiB..=200 MiB.
                    let lo = 1u64 << exp;
                    let bytes = (lo + lo * frac / 1000).clamp(4 * KIB, 200 * MIB);
                    (bytes, pol, prio, m)
                })
                .collect(),
            steps,
            at,
            plain,
            compute_us,
            link,
        })
}

fn workload(c: &Case) -> Workload {
    let n = c.blocks.len();
    let blocks: Vec<BlockDesc> = c
        .blocks
        .iter()
        .enumerate()
        .map(|(i, &(bytes, pol, prio, m))| BlockDesc {
            name: format!("b{i}"),
            bytes,
            priority: if c.plain { 5 } else { prio },
            policy: match pol {
                _ if c.plain => Policy::Auto,
                5 => Policy::Volatile,
                6 => Policy::Pinned,
                7 => Policy::Lru,
                _ => Policy::Auto,
            },
            mutable: !c.plain && m,
        })
        .collect();
    let mut steps: Vec<Vec<usize>> = c
        .steps
        .iter()
        .map(|s| {
            let mut v: Vec<usize> = Vec::new();
            for &b in s {
                if !v.contains(&(b % n)) {
                    v.push(b % n);
                }
            }
            v
        })
        .collect();
    // Every block is used somewhere (an unused one could be larger than the budget).
    for b in 0..n {
        if !steps.iter().any(|s| s.contains(&b)) {
            steps.push(vec![b]);
        }
    }
    Workload {
        name: "random".into(),
        vram_budget: None,
        h2d_bytes_per_s: None,
        passes: None,
        blocks,
        steps: steps
            .into_iter()
            .map(|s| StepDesc {
                compute_s: f64::from(c.compute_us) * 1e-6,
                uses: s.into_iter().map(|b| format!("b{b}")).collect(),
                choose: None,
            })
            .collect(),
    }
}

fn budget(c: &Case, w: &Workload) -> u64 {
    let lo = min_budget(w);
    let model: u64 = w.blocks.iter().map(|b| rounded(b.bytes)).sum();
    let hi = model.max(lo);
    let f = f64::from(c.at) / 1000.0;
    let b = lo + ((hi - lo) as f64 * f * f * f) as u64;
    b.div_ceil(GRANULE) * GRANULE
}

fn check(c: &Case) -> Result<(), TestCaseError> {
    let w = workload(c);
    let budget = budget(c, &w);
    let base = SimulateConfig::for_workload(&w);
    let bw = [base.h2d_bytes_per_s, 25e9, 1e12][usize::from(c.link % 3)];
    let cfg = SimulateConfig {
        budget,
        tokens: 3,
        warmup_tokens: 1,
        policy: SimPolicy::Synapswap,
        h2d_bytes_per_s: bw,
        d2h_bytes_per_s: bw,
        ..base
    };
    match simulate::simulate(&w, &cfg, &mut |_| {}) {
        Ok(sim) => {
            prop_assert!(sim.report.peak_device_bytes <= budget);
            Ok(())
        }
        Err(e) => {
            let oom = matches!(e, Error::OutOfDeviceMemory { .. });
            Err(TestCaseError::fail(format!(
                "{} at budget {budget} ({:.3}x the minimum {}, model {}): {e}",
                if oom { "OutOfDeviceMemory" } else { "error" },
                budget as f64 / min_budget(&w) as f64,
                min_budget(&w),
                w.model_bytes(),
            )))
        }
    }
}

#[test]
fn every_budget_that_fits_a_step_runs() {
    let cases: u32 = std::env::var("SYNAPSWAP_PLACEMENT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner.run(&case(), |c| check(&c)).unwrap();
    eprintln!("placement: {cases} random workloads, 0 failures");
}

/// The `run` preset (`synapswap run`'s default model) at budgets between its lm_head step and a
/// little more: 256-276 MiB failed with "held 8192 bytes" while 252 and 280 MiB worked.
#[test]
fn run_preset_runs_at_every_budget_above_its_largest_step() {
    let w = synapswap::workload::preset("run").unwrap();
    for mib in [251, 252, 256, 260, 264, 268, 272, 276, 280, 300] {
        let cfg = SimulateConfig {
            budget: mib * MIB,
            tokens: 2,
            ..SimulateConfig::for_workload(&w)
        };
        let r = simulate::simulate(&w, &cfg, &mut |_| {});
        assert!(r.is_ok(), "{mib} MiB: {}", r.unwrap_err());
    }
}

/// Random cases that failed before the joint step placement (`OutOfDeviceMemory ... held by
/// blocks in use`), smallest first; the fourth and fifth with every block `auto`, equal
/// priorities and nothing mutable.
#[test]
fn cases_that_failed_before() {
    let cases = [
        Case {
            blocks: vec![
                (6501171, 7, 7, false),
                (98369, 1, 0, true),
                (8536, 7, 9, false),
            ],
            steps: vec![vec![2, 0, 2]],
            at: 801,
            plain: false,
            compute_us: 1002,
            link: 0,
        },
        Case {
            blocks: vec![
                (231997, 0, 6, false),
                (32522, 2, 2, false),
                (878706, 0, 9, true),
            ],
            steps: vec![vec![1], vec![0, 2]],
            at: 873,
            plain: false,
            compute_us: 585,
            link: 0,
        },
        Case {
            blocks: vec![
                (203423, 2, 8, false),
                (5058, 4, 5, false),
                (8056, 5, 0, false),
                (167772, 0, 4, true),
            ],
            steps: vec![vec![2, 0]],
            at: 199,
            plain: false,
            compute_us: 1970,
            link: 0,
        },
        Case {
            blocks: vec![
                (520355, 0, 6, true),
                (43889197, 5, 10, false),
                (69926, 3, 5, false),
                (29835, 5, 9, false),
            ],
            steps: vec![vec![3, 0], vec![3, 3], vec![2, 1], vec![1, 2, 2, 1]],
            at: 524,
            plain: true,
            compute_us: 400,
            link: 0,
        },
        Case {
            blocks: vec![
                (205755777, 3, 3, false),
                (23957864, 3, 8, false),
                (127976603, 3, 4, false),
                (4282384, 5, 3, false),
                (56262, 6, 4, false),
                (409206, 0, 7, false),
                (5611978, 7, 3, false),
            ],
            steps: vec![vec![2, 1], vec![6, 1, 2], vec![3, 0, 0], vec![2, 5, 3, 4]],
            at: 380,
            plain: true,
            compute_us: 580,
            link: 0,
        },
        // Found at 100,000 census cases by a first version of the joint placement, which laid
        // the 121 MB block over a pinned one still loading at its home, to evict it once landed.
        Case {
            blocks: vec![
                (12754, 7, 5, false),
                (121198608, 7, 7, false),
                (1897922, 2, 4, false),
                (4763, 2, 1, false),
                (53888417, 6, 8, true),
                (503840, 7, 0, true),
            ],
            steps: vec![
                vec![0, 1],
                vec![5, 2, 1, 3],
                vec![2, 0, 1],
                vec![2],
                vec![3, 1],
            ],
            at: 967,
            plain: false,
            compute_us: 826,
            link: 0,
        },
    ];
    for c in &cases {
        if let Err(e) = check(c) {
            panic!("{e}: {c:?}");
        }
    }
}

/// A budget under the minimum fails up front with that minimum (the lm_head step of the `run`
/// preset, 250 MiB + 8 KiB), not with the first block that does not fit; pinned blocks count.
#[test]
fn a_budget_too_small_names_the_real_minimum() {
    let w = synapswap::workload::preset("run").unwrap();
    let minimum = 262_144_000 + 8192;
    assert_eq!(w.min_budget().unwrap(), (minimum, 64));
    for budget in [100 * MIB, 250 * MIB, minimum - GRANULE] {
        let cfg = SimulateConfig {
            budget,
            ..SimulateConfig::for_workload(&w)
        };
        let e = simulate::simulate(&w, &cfg, &mut |_| {}).unwrap_err();
        assert_eq!(
            e,
            Error::BudgetTooSmall {
                budget,
                minimum,
                step: 64
            }
        );
    }
    let cfg = SimulateConfig {
        budget: minimum,
        tokens: 1,
        ..SimulateConfig::for_workload(&w)
    };
    simulate::simulate(&w, &cfg, &mut |_| {}).unwrap();
    let mut pinned = w.clone();
    pinned.blocks[0].policy = Policy::Pinned;
    let extra = rounded(pinned.blocks[0].bytes);
    assert_eq!(pinned.min_budget().unwrap(), (minimum + extra, 64));
    assert_eq!(min_budget(&pinned), minimum + extra);
}

/// Counts failures over `SYNAPSWAP_PLACEMENT_CASES` random workloads without stopping or
/// shrinking, and prints the worst ones: `cargo test --release --test planner_placement --
/// --ignored census --nocapture`.
#[test]
#[ignore]
fn census() {
    use proptest::strategy::ValueTree;
    let cases: u32 = std::env::var("SYNAPSWAP_PLACEMENT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut runner = TestRunner::deterministic();
    let (mut failed, mut plain, mut plain_failed) = (0, 0, 0);
    for _ in 0..cases {
        let c = case().new_tree(&mut runner).unwrap().current();
        plain += u32::from(c.plain);
        if let Err(e) = check(&c) {
            failed += 1;
            plain_failed += u32::from(c.plain);
            eprintln!("{}{e}", if c.plain { "[plain] " } else { "" });
            if std::env::var("SYNAPSWAP_PLACEMENT_DUMP").is_ok() {
                eprintln!("{c:?}");
            }
        }
    }
    eprintln!("census: {failed} of {cases} failed ({plain_failed} of {plain} plain)");
}
