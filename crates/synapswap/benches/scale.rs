//! Scaling: what the planner and the engine cost per operation from 100 to 1,000,000 blocks.
//!
//! `cargo bench -p synapswap --bench scale` prints the table; `-- --write BENCHMARKS.md` also
//! rewrites the section between the `<!-- bench:scale -->` markers of that file. `-- --max N`
//! stops at N blocks (default 1,000,000; the engine rows at 1e6 need about 6 GiB of RAM);
//! `-- --only planner|engine` measures one half (a partial table is not for `--write`).
//!
//! The workload: N blocks of 4 KiB, one a step, each used once per pass, a budget of half the
//! model, prefetch on (so the keep plan holds half the blocks at home and streams the rest
//! through its ring). Measured:
//! - **planner alone** (no bytes; copies complete the moment they are issued): `hint` (timed one
//!   by one over a steady pass), a hit (`acquire` of a resident block + `unhold`, timed in bulk),
//!   a miss (`acquire` of a block on the host, out of schedule order: the demand placement, its
//!   eviction, the load's completion and the waiter's poll), the plan (the first `hint` after
//!   the declarations: index rebuild, keep plan and first prefetches) per block, and one
//!   simulated pass (hint, acquire, copies, unhold for every step) per block;
//! - **engine** (sim backend, unpaced: real threads and real 4 KiB copies into the host arena):
//!   `hint`, a hit (`wait` of a resident block + guard drop), a miss (`wait` of a block on the
//!   host, out of order: a demand copy through the transfer thread), the first `hint` and one
//!   pass, per block.
//!
//! Each figure is a mean over one run's operations, and each row the median, figure by figure,
//! of [`reps`] runs (5 up to 1e4 blocks, 3 above: one run of a small row is a few milliseconds,
//! and on a shared 2-core machine one preempted run moved a row 2-5x). The rows are measured one
//! after another in one process, so compare them with each other (the target: every row
//! within 3x of the 1e3 row).

#[path = "shared/section.rs"]
mod section;

use std::sync::Arc;
use std::time::Instant;

use synapswap::backend::{SimBackend, SimConfig};
use synapswap::planner::{Acquire, Command, Planner, PlannerConfig};
use synapswap::{BlockId, BlockSpec, Engine, Residency};

const BLOCK: u64 = 4 << 10;
/// Virtual seconds per step and per copy handed to the planner.
const STEP_S: f64 = 1e-5;
const COPY_S: f64 = BLOCK as f64 / 2e9;

struct Row {
    n: u64,
    hint_ns: f64,
    hit_ns: f64,
    miss_ns: f64,
    plan_ns: f64,
    pass_ns: f64,
}

/// Runs per row (see the module docs).
fn reps(n: u64) -> usize {
    if n <= 10_000 {
        5
    } else {
        3
    }
}

/// The median of `rows` (same `n`), figure by figure.
fn median(mut rows: Vec<Row>) -> Row {
    let mid = |rows: &mut Vec<Row>, f: fn(&Row) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Row {
        n: rows[0].n,
        hint_ns: mid(&mut rows, |r| r.hint_ns),
        hit_ns: mid(&mut rows, |r| r.hit_ns),
        miss_ns: mid(&mut rows, |r| r.miss_ns),
        plan_ns: mid(&mut rows, |r| r.plan_ns),
        pass_ns: mid(&mut rows, |r| r.pass_ns),
    }
}

fn drain(p: &mut Planner) {
    while let Some(c) = p.poll_command() {
        match c {
            Command::Load { block, .. } => p.transfer_done(block, true, "", COPY_S),
            Command::WriteBack { block, .. } => p.writeback_done(block, true, COPY_S),
            Command::Expedite { .. } | Command::Evict { .. } => {}
        }
    }
}

fn use_planned(p: &mut Planner, id: BlockId) {
    if p.acquire(id).expect("acquire") == Acquire::Pending {
        drain(p);
        p.poll_waiter(id).expect("loaded").expect("no error");
    }
    drain(p);
    p.unhold(id);
    drain(p);
}

/// What the two halves of the table drive: the planner alone, or the engine.
trait Subject {
    fn hint(&mut self, step: u64);
    /// One use of the step's block: acquire (waiting if needed) and release.
    fn use_block(&mut self, id: BlockId);
    fn residency(&self, id: BlockId) -> Residency;
}

struct Alone {
    p: Planner,
    now: f64,
}

impl Subject for Alone {
    fn hint(&mut self, step: u64) {
        self.p.hint(step, self.now);
        self.now += STEP_S;
    }
    fn use_block(&mut self, id: BlockId) {
        use_planned(&mut self.p, id);
    }
    fn residency(&self, id: BlockId) -> Residency {
        self.p.residency(id).expect("live block")
    }
}

impl Subject for Engine {
    fn hint(&mut self, step: u64) {
        Engine::hint(self, step).expect("hint");
    }
    fn use_block(&mut self, id: BlockId) {
        drop(self.wait(id).expect("wait"));
    }
    fn residency(&self, id: BlockId) -> Residency {
        Engine::residency(self, id).expect("live block")
    }
}

/// Times the first hint (the plan), two passes (the second timed, hints one by one), a million
/// hits on resident blocks and up to 2,000 misses (every 7th block on the host, from the far end
/// of the pass).
fn measure<S: Subject>(s: &mut S, ids: &[BlockId]) -> Row {
    let n = ids.len() as u64;
    let t = Instant::now();
    s.hint(0);
    let plan_ns = t.elapsed().as_nanos() as f64 / n as f64;
    let (mut hint_total, mut pass_ns) = (0.0, 0.0);
    for pass in 0..2 {
        hint_total = 0.0;
        let t = Instant::now();
        for (step, &id) in ids.iter().enumerate() {
            let h = Instant::now();
            s.hint(step as u64);
            hint_total += h.elapsed().as_nanos() as f64;
            s.use_block(id);
        }
        if pass == 1 {
            pass_ns = t.elapsed().as_nanos() as f64 / n as f64;
        }
    }
    let pick = |s: &S, state: Residency, step: usize, most: usize| -> Vec<BlockId> {
        let from: Box<dyn Iterator<Item = &BlockId>> = if step == 1 {
            Box::new(ids.iter())
        } else {
            Box::new(ids.iter().rev().step_by(step))
        };
        from.copied()
            .filter(|&id| s.residency(id) == state)
            .take(most)
            .collect()
    };
    let resident = pick(s, Residency::Resident, 1, 1000);
    let rounds = (1_000_000 / resident.len().max(1)).max(1);
    let t = Instant::now();
    for _ in 0..rounds {
        for &id in &resident {
            s.use_block(std::hint::black_box(id));
        }
    }
    let hit_ns = t.elapsed().as_nanos() as f64 / (rounds * resident.len()).max(1) as f64;
    let away = pick(s, Residency::Host, 7, 2000);
    let t = Instant::now();
    for &id in &away {
        s.use_block(id);
    }
    let miss_ns = t.elapsed().as_nanos() as f64 / away.len().max(1) as f64;
    Row {
        n,
        hint_ns: hint_total / n as f64,
        hit_ns,
        miss_ns,
        plan_ns,
        pass_ns,
    }
}

fn planner_row(n: u64) -> Row {
    let mut p = Planner::new(PlannerConfig::new(n * BLOCK / 2)).expect("planner");
    let ids: Vec<BlockId> = (0..n)
        .map(|_| p.add_block(BlockSpec::new(BLOCK)).expect("block"))
        .collect();
    for (s, &id) in ids.iter().enumerate() {
        p.declare(s as u64, id).expect("declare");
    }
    measure(&mut Alone { p, now: 0.0 }, &ids)
}

fn engine_row(n: u64) -> Row {
    let backend = Arc::new(SimBackend::new(SimConfig::unpaced()).expect("sim"));
    let mut e = Engine::builder()
        .budget(n * BLOCK / 2)
        .backend(backend)
        .build()
        .expect("engine");
    let ids: Vec<BlockId> = (0..n)
        .map(|_| e.alloc(BlockSpec::new(BLOCK)).expect("block"))
        .collect();
    for (s, &id) in ids.iter().enumerate() {
        e.declare(s as u64, id).expect("declare");
    }
    let row = measure(&mut e, &ids);
    e.shutdown();
    row
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e4 {
        format!("{:.1} us", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn table(title: &str, rows: &[Row]) -> String {
    let base = rows.iter().find(|r| r.n == 1000);
    let mut s = format!(
        "{title}\n\n| blocks | hint | hit | miss (place + evict) | plan / block | pass / block | worst ratio to the 1e3 row |\n|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        let worst = base.map_or(f64::NAN, |b| {
            [
                r.hint_ns / b.hint_ns,
                r.hit_ns / b.hit_ns,
                r.miss_ns / b.miss_ns,
                r.plan_ns / b.plan_ns,
                r.pass_ns / b.pass_ns,
            ]
            .into_iter()
            .fold(0.0, f64::max)
        });
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {worst:.2} |\n",
            r.n,
            fmt_ns(r.hint_ns),
            fmt_ns(r.hit_ns),
            fmt_ns(r.miss_ns),
            fmt_ns(r.plan_ns),
            fmt_ns(r.pass_ns),
        );
    }
    s
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let write = after("--write");
    let max: u64 = after("--max")
        .and_then(|m| m.parse().ok())
        .unwrap_or(1_000_000);
    let sizes: Vec<u64> = [100, 1_000, 10_000, 100_000, 1_000_000]
        .into_iter()
        .filter(|&n| n <= max)
        .collect();
    let only = after("--only");
    let want = |what: &str| only.as_deref().is_none_or(|o| o == what);
    let planner: Vec<Row> = sizes
        .iter()
        .filter(|_| want("planner"))
        .map(|&n| median((0..reps(n)).map(|_| planner_row(n)).collect()))
        .collect();
    let engine: Vec<Row> = sizes
        .iter()
        .filter(|_| want("engine"))
        .map(|&n| {
            let r = median((0..reps(n)).map(|_| engine_row(n)).collect());
            eprintln!("engine {n} blocks done");
            r
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let text = format!(
        "Machine: {cores} cores (the build machine; no GPU). N blocks of 4 KiB, one a step, budget half the model.\n\n{}\n{}",
        table("Planner alone (no bytes, copies complete at once):", &planner),
        table(
            "Engine (sim backend, unpaced: real threads and 4 KiB copies):",
            &engine
        ),
    );
    println!("{text}");
    if let Some(path) = write {
        section::write(&path, "scale", &text);
    }
}
