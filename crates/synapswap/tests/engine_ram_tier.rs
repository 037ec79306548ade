//! The RAM tier over a memory-mapped file (`Engine::register_mapping`): the blocks the plan keeps
//! cached stay in the page cache, the other streamed ones leave RAM after their copy, every byte
//! still arrives, and with the tier off the page cache is left alone.

#![cfg(target_os = "linux")]

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use synapswap::backend::{SimBackend, SimConfig};
use synapswap::page_cache;
use synapswap::{pattern, BlockId, BlockSpec, Engine};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4 * MIB;
const BLOCKS: u64 = 16;

/// A 64 MiB file of 16 patterned 4 MiB blocks, written and synced (its pages clean), mapped.
fn mapped_file(name: &str) -> (std::path::PathBuf, memmap2::Mmap) {
    let path = std::env::temp_dir().join(format!("synapswap-ram-{name}-{}", std::process::id()));
    let mut f = std::fs::File::create(&path).unwrap();
    let mut buf = vec![0u8; BLOCK as usize];
    for b in 0..BLOCKS {
        pattern::fill(pattern::seed(b), 0, &mut buf);
        f.write_all(&buf).unwrap();
    }
    f.sync_all().unwrap();
    let f = std::fs::File::open(&path).unwrap();
    // SAFETY: a read-only mapping of a file this test wrote and nobody changes.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    (path, map)
}

/// Runs two passes of one block a step through a 16 MiB budget, every use checked; returns the
/// block ids.
fn run(engine: &Engine, map: &memmap2::Mmap) -> Vec<BlockId> {
    // SAFETY: the mapping outlives the engine's use of it (shut down before it is dropped) and
    // is read-only.
    let buffer =
        unsafe { engine.register_mapping(map.as_ptr().cast_mut(), map.len() as u64) }.unwrap();
    let ids: Vec<BlockId> = (0..BLOCKS)
        .map(|b| {
            engine
                .alloc_in(&buffer, b * BLOCK, BlockSpec::new(BLOCK))
                .unwrap()
        })
        .collect();
    for (s, &id) in ids.iter().enumerate() {
        engine.declare(s as u64, id).unwrap();
    }
    for _ in 0..3 {
        for (s, &id) in ids.iter().enumerate() {
            engine.hint(s as u64).unwrap();
            let g = engine.wait(id).unwrap();
            assert!(pattern::verify(
                pattern::seed(s as u64),
                0,
                g.as_slice().unwrap()
            ));
        }
    }
    ids
}

/// The share of block `b`'s pages in RAM, once the advice given so far has had time to act.
fn resident(map: &memmap2::Mmap, b: u64) -> f64 {
    let (r, n) = page_cache::residency(map.as_ptr() as u64 + b * BLOCK, BLOCK).unwrap();
    r as f64 / n as f64
}

fn engine(on: bool) -> Engine {
    Engine::builder()
        .budget(16 * MIB)
        // Less the ring (8 MiB: the budget less two kept blocks), the staging ring (8 slots
        // of the 1 MiB chunk) and two blocks read ahead: 8 MiB, two blocks, stay cached.
        .ram_cap(32 * MIB)
        .chunk_bytes(MIB)
        .ram_tier(on)
        .backend(Arc::new(SimBackend::new(SimConfig::unpaced()).unwrap()))
        .build()
        .unwrap()
}

#[test]
fn streamed_blocks_outside_the_cached_set_leave_ram_after_their_copy() {
    let (path, map) = mapped_file("on");
    let e = engine(true);
    let ids = run(&e, &map);
    let tier = e.ram_tier();
    assert_eq!(tier.cap_bytes, 32 * MIB);
    assert_eq!(tier.cached_bytes, 2 * BLOCK, "{tier:?}");
    let kept: Vec<bool> = ids.iter().map(|&id| e.is_kept(id).unwrap()).collect();
    let cached: Vec<bool> = (ids.iter())
        .map(|&id| e.is_cached_in_ram(id).unwrap())
        .collect();
    assert_eq!(cached.iter().filter(|&&c| c).count(), 2);
    assert!(
        !cached.iter().zip(&kept).any(|(&c, &k)| c && k),
        "a kept block is not cached"
    );
    // Spread over the pass, not its first streamed blocks.
    let first = kept.iter().position(|&k| !k).unwrap();
    assert!(!(cached[first] && cached[first + 1]), "cached {cached:?}");
    // The read-aheads measured the disk (the dropped blocks are read back every pass).
    assert!(tier.disk_bytes_per_s > 0.0, "{tier:?}");
    let dropped: Vec<u64> = (0..BLOCKS)
        .filter(|&b| !cached[b as usize] && !kept[b as usize])
        .collect();
    assert!(!dropped.is_empty(), "some streamed blocks are not cached");
    // The advisor thread gives the advice in order; wait (a bounded time) for it to catch up.
    // Counted over all the dropped blocks: one whose next load the pipeline has already started
    // is back in RAM, as it should be.
    let mean = |bs: &[u64]| bs.iter().map(|&b| resident(&map, b)).sum::<f64>() / bs.len() as f64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while mean(&dropped) > 0.15 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = |bs: &[u64]| -> Vec<String> {
        bs.iter()
            .map(|&b| format!("{b}: {:.0}%", 100.0 * resident(&map, b)))
            .collect()
    };
    assert!(
        mean(&dropped) <= 0.15,
        "streamed, not cached, still in RAM: {:?} (kept {kept:?}, cached {cached:?}, {:?})",
        report(&dropped),
        e.ram_tier()
    );
    let kept_in_ram: Vec<u64> = (0..BLOCKS).filter(|&b| cached[b as usize]).collect();
    assert!(
        mean(&kept_in_ram) >= 0.9,
        "cached, not in RAM: {:?}",
        report(&kept_in_ram)
    );
    e.shutdown();
    drop(map);
    let _ = std::fs::remove_file(path);
}

#[test]
fn with_the_tier_off_the_page_cache_is_left_alone() {
    let (path, map) = mapped_file("off");
    let e = engine(false);
    run(&e, &map);
    std::thread::sleep(Duration::from_millis(200));
    for b in 0..BLOCKS {
        assert!(
            resident(&map, b) >= 0.9,
            "block {b} only {:.0}% in RAM",
            100.0 * resident(&map, b)
        );
    }
    let tier = e.ram_tier();
    assert_eq!(tier.cached_bytes, 0);
    assert!(
        tier.pages_checked > 0,
        "residency is still counted: {tier:?}"
    );
    e.shutdown();
    drop(map);
    let _ = std::fs::remove_file(path);
}
