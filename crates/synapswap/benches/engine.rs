//! Benchmarks of the engine, each measured side by side with its baseline in the same run:
//! - hit-path `wait` latency (block already resident) against an uncontended mutex lock/unlock;
//! - streaming throughput of the runtime (unpaced sim: real memcpy) against a plain single-thread
//!   memcpy of the same bytes.
//!
//! `cargo bench -p synapswap --bench engine` prints a Markdown table;
//! `cargo bench -p synapswap --bench engine -- --write BENCHMARKS.md` also rewrites the section
//! between the `<!-- bench:engine -->` markers of that file.
//!
//! A custom harness (not criterion): the figures that matter are ratios of two measurements taken
//! back to back in one process, which criterion does not report.

#[path = "shared/section.rs"]
mod section;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use synapswap::backend::{SimBackend, SimConfig};
use synapswap::{BlockSpec, Engine};

const MIB: u64 = 1 << 20;

fn engine(budget: u64) -> Engine {
    let backend = Arc::new(SimBackend::new(SimConfig::unpaced()).expect("sim backend"));
    Engine::builder()
        .budget(budget)
        .backend(backend)
        .build()
        .expect("engine")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Nanoseconds per hit-path wait + guard drop, and per mutex lock/unlock, median of 7 rounds.
fn hit_path() -> (f64, f64) {
    let e = engine(64 * MIB);
    let b = e.alloc(BlockSpec::new(MIB)).expect("alloc");
    e.declare(0, b).expect("declare");
    e.hint(0).expect("hint");
    drop(e.wait(b).expect("first wait loads"));
    let n = 200_000;
    let mut ours = Vec::new();
    let mut base = Vec::new();
    let m = Mutex::new(0u64);
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..n {
            let g = e.wait(b).expect("hit");
            std::hint::black_box(g.device_ptr());
        }
        ours.push(t.elapsed().as_secs_f64() * 1e9 / n as f64);
        let t = Instant::now();
        for _ in 0..n {
            *m.lock().expect("lock") += 1;
        }
        base.push(t.elapsed().as_secs_f64() * 1e9 / n as f64);
    }
    assert_eq!(e.stats().hits as usize, 7 * n);
    (median(ours), median(base))
}

/// Bytes/s streamed by the engine through a pool a quarter of the data, and of memcpy.
fn streaming() -> (f64, f64, u64) {
    let blocks = 48;
    let size = 16 * MIB;
    let e = engine(blocks / 4 * size);
    let ids: Vec<_> = (0..blocks)
        .map(|i| {
            let id = e.alloc(BlockSpec::new(size)).expect("alloc");
            e.write(id, 0, &vec![i as u8; size as usize]).expect("fill");
            e.declare(i, id).expect("declare");
            id
        })
        .collect();
    let src: Vec<Vec<u8>> = (0..blocks).map(|i| vec![i as u8; size as usize]).collect();
    let mut dst = vec![0u8; size as usize];
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for pass in 0..6 {
        let before = e.stats().bytes_h2d;
        let t = Instant::now();
        for (i, &id) in ids.iter().enumerate() {
            e.hint(i as u64).expect("hint");
            let g = e.wait(id).expect("wait");
            std::hint::black_box(g.as_slice().expect("sim")[0]);
        }
        let moved = e.stats().bytes_h2d - before;
        let secs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for s in &src {
            for (d, c) in dst.chunks_mut(8 << 20).zip(s.chunks(8 << 20)) {
                d.copy_from_slice(c);
            }
            std::hint::black_box(&dst);
        }
        let base_secs = t.elapsed().as_secs_f64();
        if pass > 0 {
            ours.push(moved as f64 / secs);
            base.push((blocks * size) as f64 / base_secs);
        }
    }
    (median(ours), median(base), e.stats().bytes_h2d)
}

fn main() {
    let write = std::env::args().skip_while(|a| a != "--write").nth(1);
    let (hit_ns, lock_ns) = hit_path();
    let (ours_bw, memcpy_bw, _) = streaming();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let table = format!(
        "Machine: {cores} cores (the build machine: no GPU; sim backend, unpaced).\n\n\
         | benchmark | SynapSwap | baseline, same run | ratio |\n\
         |---|---|---|---|\n\
         | hit-path `wait` + guard drop | {hit_ns:.0} ns | {lock_ns:.0} ns (uncontended mutex lock/unlock) | {:.1}x |\n\
         | streaming 768 MiB/pass through a 192 MiB pool, 16 MiB blocks | {:.2} GB/s | {:.2} GB/s (single-thread memcpy of the same bytes) | {:.2} |\n",
        hit_ns / lock_ns,
        ours_bw / 1e9,
        memcpy_bw / 1e9,
        ours_bw / memcpy_bw,
    );
    println!("{table}");
    if let Some(path) = write {
        section::write(&path, "engine", &table);
    }
}
