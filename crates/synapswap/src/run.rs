//! Decoding a workload through the real engine with real bytes: what `synapswap run` does.
//!
//! Every block is filled with a pattern derived from its id ([`crate::pattern`]) and verified on
//! the device at every use. Mutable blocks (KV caches) get one row rewritten on the device per
//! token and are verified row by row, so a lost write-back shows as a mismatch once an evicted
//! cache is reloaded (`Integrity::reloaded_after_writeback` counts those uses; the default model,
//! [`crate::workload::run_model`], has one that streams). Each step's compute is modelled:
//! once all its blocks are on the device the step lasts at least its `compute_s` (the caller's
//! thread sleeps out what verification did not use). Routed steps (`choose`) declare their
//! candidates with probability `k / n` and wait only for the blocks drawn this pass.
//!
//! The first `warmup_tokens` passes load the model cold (like a prefill) and are reported apart
//! (`first_token_s`, `warmup_bytes_h2d`); rates and byte counts cover the timed tokens after them.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::model::Model;
use crate::page_cache;
use crate::trace::{Trace, Track};
use crate::workload::{Resolved, Workload};
use crate::{
    os, pattern, BlockId, BlockSpec, Engine, Error, HostBuffer, PrefetchStats, Result, Stats,
};

/// How to run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    /// Timed tokens (passes).
    pub tokens: u64,
    /// Untimed passes first (cold load).
    pub warmup_tokens: u64,
    /// Host-to-device bandwidth the bound is computed with, bytes/s.
    pub bound_bytes_per_s: f64,
    /// Where that bandwidth comes from, for the report.
    pub bound_source: String,
    /// Seed of routed draws.
    pub seed: u64,
    /// How much of each used block to check.
    pub verify: Verify,
}

/// How much of each block use `run` checks on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Every byte of every use.
    Full,
    /// Per use of an immutable block: its first and last 4 KiB and a 64 KiB window at a
    /// pseudo-random offset, which still catches a wrong block, a shifted copy or a stale version.
    /// For backends whose device memory the host cannot read, where reading every byte back
    /// would cost more than streaming it in. Mutable blocks (KV caches) are always read in full.
    Sampled,
}

/// Byte ranges of a `len`-byte block that a sampled check reads at `nonce`.
/// The nonce of [`sample_ranges`] for block `b`'s use at step `s` of pass `token`: each use of a
/// block checks other bytes.
fn sample_nonce(token: u64, s: usize, b: usize) -> u64 {
    token.wrapping_mul(0x1_0000) ^ (s as u64) ^ ((b as u64) << 40)
}

fn sample_ranges(len: u64, nonce: u64) -> Vec<(u64, u64)> {
    const EDGE: u64 = 4 << 10;
    const WINDOW: u64 = 64 << 10;
    if len <= 2 * EDGE + WINDOW {
        return vec![(0, len)];
    }
    let span = len - WINDOW;
    let at = pattern::seed(nonce) % span / 8 * 8;
    vec![(0, EDGE), (at, WINDOW), (len - EDGE, EDGE)]
}

/// Byte-exact verification results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Integrity {
    /// Block uses whose device bytes were checked.
    pub verified_blocks: u64,
    /// Bytes checked.
    pub verified_bytes: u64,
    /// Checks that failed.
    pub mismatches: u64,
    /// Uses of a mutable block (a KV cache) whose device-written rows had been written back to
    /// the host since its previous use, and so were checked after the write-back and reload: a
    /// lost or stale write-back fails one of these.
    pub reloaded_after_writeback: u64,
}

/// What a run measured. Serialised as `synapswap run --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// Backend name (`sim`, `cuda`).
    pub backend: String,
    /// Backend description (device, pacing).
    pub backend_description: String,
    /// Workload name.
    pub workload: String,
    /// Bytes of all blocks.
    pub model_bytes: u64,
    /// Device budget.
    pub vram_budget_bytes: u64,
    /// Timed tokens.
    pub tokens: u64,
    /// Untimed cold-start tokens before them.
    pub warmup_tokens: u64,
    /// Wall time of the timed tokens, seconds.
    pub wall_s: f64,
    /// Wall time of the warm-up tokens (cold load), seconds.
    pub first_token_s: f64,
    /// Timed tokens per second.
    pub tokens_per_s: f64,
    /// Best possible rate: `1 / max(compute per pass, (bytes per pass - budget) / bandwidth)`;
    /// bytes per pass weight routed candidates by their probability.
    pub bound_tokens_per_s: f64,
    /// `tokens_per_s / bound_tokens_per_s`.
    pub efficiency: f64,
    /// The bandwidth the bound assumes, bytes/s.
    pub h2d_bytes_per_s: f64,
    /// Where that bandwidth comes from (`modelled by the sim backend`, `measured memcpy`, ...).
    pub h2d_source: String,
    /// Modelled compute per token, seconds.
    pub compute_s_per_token: f64,
    /// Host-to-device bytes during the timed tokens.
    pub bytes_h2d: u64,
    /// The least any engine must move for the timed tokens: `tokens * (bytes per pass - budget)`.
    pub min_bytes_h2d: u64,
    /// Host-to-device bytes during warm-up.
    pub warmup_bytes_h2d: u64,
    /// Device-to-host bytes (write-backs) during the timed tokens.
    pub bytes_d2h: u64,
    /// Write-backs of mutable blocks (KV caches) during the timed tokens.
    pub writebacks: u64,
    /// Waits that did not block, timed tokens.
    pub hit_rate: f64,
    /// Seconds blocked in wait, timed tokens.
    pub stall_s: f64,
    /// Prefetch accounting, timed tokens.
    pub prefetch: PrefetchStats,
    /// Seconds the copy engine had nothing to copy, timed tokens.
    pub copy_idle_s: f64,
    /// Evictions during the timed tokens.
    pub evictions: u64,
    /// Highest device-pool use of the whole run.
    pub peak_device_bytes: u64,
    /// Verification results of the whole run.
    pub integrity: Integrity,
    /// Model files the device would not page-lock (copied through the pinned staging ring; see
    /// [`crate::Engine::register_buffer`]); 0 for synthetic workloads.
    pub pageable_files: u64,
    /// `run --model`: the RAM tier over the model's files (`ram_tier.rs`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_tier: Option<HostTierReport>,
}

/// The RAM tier of a model run, over the timed passes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostTierReport {
    /// Bytes of file-backed blocks it may keep cached.
    pub cap_bytes: u64,
    /// Bytes the plan keeps cached in RAM.
    pub cached_bytes: u64,
    /// Of the bytes the timed passes copied from the model's files, the share that did not come
    /// from the disk: `1 - disk_bytes_read / bytes_h2d` (at least 0); 1 when nothing was read.
    /// Where the disk's counter is unknown (not Linux), the RAM tier's count of the pages found
    /// in RAM when first read ahead ([`crate::RamTierStats`]) instead. (That count alone
    /// undercounts hits: a cached block's copy can finish before the advisor thread looks.)
    pub page_cache_hit_rate: f64,
    /// Bytes this process read from storage (`/proc/self/io` `read_bytes`; 0 where unknown).
    pub disk_bytes_read: u64,
    /// The disk's read rate, bytes/s: the RAM tier's measure on its read-aheads at the end of
    /// the run ([`crate::RamTierStats::disk_bytes_per_s`]), or, where it has none (the tier is
    /// off), the bytes read over the warm-up pass, which reads the model cold, over its time;
    /// that one understates the disk when the warm-up was held back by something else (its
    /// copies, its compute), so efficiency can exceed 1. 0 when nothing came from the disk.
    pub disk_bytes_per_s: f64,
    /// Which `disk_bytes_per_s` is: `"direct reads"` (the tier's reads into its landing buffer),
    /// `"read-ahead"` (its advice to the kernel) or `"warm-up"`.
    pub disk_rate_from: &'static str,
    /// Why the RAM tier stopped reading blocks directly, if it did
    /// ([`crate::RamTierStats::direct_reads_off`]).
    pub direct_reads_off: Option<String>,
    /// What the disk allows: a pass must read what is neither on the device nor cached in RAM,
    /// `disk_bytes_per_s / (bytes per pass - V - C)`; the report's bound is the lesser of this
    /// and the link's. 0 when there is no such term (the timed passes read nothing from the disk,
    /// or everything fits).
    pub disk_bound_tokens_per_s: f64,
    /// The link's rate in the timed passes: bytes copied to the device over the time it was
    /// busy (`wall_s - copy_idle_s`: some copy in flight), measured as the disk's is, in the
    /// same passes. On the sim at `--h2d max` the link is memcpy, which shares the machine's
    /// memory with the disk's reads: below `h2d_bytes_per_s` (memcpy alone, measured before the
    /// passes). With the tier off a copy from the mapping waits for its page faults, so this is
    /// then the disk's rate as much as the link's.
    pub link_bytes_per_s: f64,
    /// The bound with both rates measured in the timed passes: a pass takes at least its
    /// compute, `(bytes per pass - V) / link_bytes_per_s` and `(bytes per pass - V - C) /
    /// disk_bytes_per_s` (the last only when the passes read the disk). 0 when unmeasured.
    pub bound_tokens_per_s: f64,
}

/// Progress, reported after every token (by `run` in wall time, by the simulator in virtual time).
#[derive(Debug, Clone)]
pub struct Progress {
    /// Tokens done, warm-up included.
    pub done: u64,
    /// Tokens in all, warm-up included.
    pub total: u64,
    /// Whether the warm-up is over.
    pub timed: bool,
    /// Seconds since the timed tokens began (0 during warm-up).
    pub elapsed_s: f64,
    /// Timed tokens done.
    pub timed_done: u64,
    /// The bound's tokens per second, for the efficiency figure.
    pub bound_tokens_per_s: f64,
    /// Engine statistics now.
    pub stats: Stats,
    /// Engine statistics when the timed tokens began (all zero during warm-up).
    pub stats_at_timed: Stats,
    /// Verification so far.
    pub integrity: Integrity,
}

impl Progress {
    /// Timed tokens per second so far.
    pub fn tokens_per_s(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.timed_done as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    /// Achieved over bound, timed tokens so far.
    pub fn efficiency(&self) -> f64 {
        if self.bound_tokens_per_s > 0.0 {
            self.tokens_per_s() / self.bound_tokens_per_s
        } else {
            0.0
        }
    }
}

/// The best possible rate: one pass takes at least its compute and at least the time to copy
/// what does not fit, `(bytes per pass - budget) / bandwidth`.
pub fn bound_tokens_per_s(workload: &Workload, budget: u64, bytes_per_s: f64) -> Result<f64> {
    let compute = workload.compute_s_per_pass();
    let copy = (workload.bytes_per_pass()? - budget as f64).max(0.0) / bytes_per_s;
    Ok(1.0 / compute.max(copy).max(f64::MIN_POSITIVE))
}

/// The buffer `run` fills blocks through.
const FILL_BYTES: u64 = 4 << 20;

/// Host memory (anonymous or page-locked) that [`run`] allocates for `workload`: every block's
/// host copy, a scratch buffer of the largest block (verification reads a block into it) and the
/// fill buffer, plus the device arena when the backend's device memory is host memory
/// (`arena_on_host`: the sim backend). Memory-mapped files would not count: they page.
pub fn host_bytes_needed(workload: &Workload, budget: u64, arena_on_host: bool) -> u64 {
    let largest = workload.blocks.iter().map(|b| b.bytes).max().unwrap_or(0);
    let arena = if arena_on_host { budget } else { 0 };
    workload.model_bytes() + largest + FILL_BYTES + arena
}

/// Refuses, before anything is allocated, a run that needs more host memory than this process
/// can get ([`os::available_memory`]): [`Error::HostMemory`] with both figures. Where that is
/// unknown the run goes ahead; an allocation that then fails is still an error.
pub fn check_host_memory(workload: &Workload, budget: u64, arena_on_host: bool) -> Result<()> {
    os::check_needed(
        host_bytes_needed(workload, budget, arena_on_host),
        os::available_memory(),
    )
}

/// [`check_host_memory`] for [`run_model`]: the host copies are the model's file mappings
/// (page cache, not counted), so what must fit is the device arena when it is host memory (the
/// sim's) and a scratch buffer of the largest tensor, for reading uses back.
pub fn check_model_host_memory(model: &Model, budget: u64, arena_on_host: bool) -> Result<()> {
    let largest = model.tensors.iter().map(|t| t.bytes).max().unwrap_or(0);
    let arena = if arena_on_host { budget } else { 0 };
    os::check_needed(arena.saturating_add(largest), os::available_memory())
}

/// Grows `buf` to `len` bytes: a failed allocation is an error, not an abort.
fn grow(buf: &mut Vec<u8>, len: usize) -> Result<()> {
    if len > buf.len() {
        buf.try_reserve_exact(len - buf.len())
            .map_err(|_| Error::OutOfHostMemory(len as u64))?;
    }
    buf.resize(len, 0);
    Ok(())
}

struct KvState {
    rows: u64,
    row_bytes: u64,
    versions: Vec<u64>,
    /// Whether rows were written on the device (then the block is dirty until written back).
    written: bool,
    /// Whether this step's use follows a write-back (set just before the wait).
    reloaded: bool,
}

fn version_seed(block_seed: u64, version: u64) -> u64 {
    if version == 0 {
        block_seed
    } else {
        pattern::seed(block_seed ^ version.wrapping_mul(0xD6E8_FEB8_6659_FD93))
    }
}

/// Where the blocks' bytes come from: a pattern per block (written into engine-allocated host
/// copies), or a model file's mappings (each tensor a block cut from its file's registration,
/// checked against the file).
#[derive(Clone, Copy)]
enum Source<'a> {
    Pattern,
    Model(&'a Model),
}

/// Runs `model`'s tensors from its files (see [`Model::workload`] for the steps and their
/// compute): each file is registered once, read-only, and each tensor is a block cut from it
/// (no second copy in RAM); every use is checked against the file's bytes.
pub fn run_model(
    engine: &Engine,
    model: &Model,
    cfg: &RunConfig,
    progress: &mut dyn FnMut(&Progress),
    trace: Option<&mut Trace>,
) -> Result<RunReport> {
    let workload = model.workload();
    let mut own = trace.is_some().then(Trace::default);
    let report = run_impl(
        engine,
        &workload,
        Source::Model(model),
        cfg,
        progress,
        own.as_mut(),
    )?;
    if let (Some(t), Some(mut own)) = (trace, own) {
        own.spans.extend(engine.take_trace().spans);
        *t = own;
    }
    Ok(report)
}

/// Allocates the workload's blocks, fills them, declares the schedule and decodes.
pub fn run(
    engine: &Engine,
    workload: &Workload,
    cfg: &RunConfig,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RunReport> {
    run_impl(engine, workload, Source::Pattern, cfg, progress, None)
}

/// [`run`], also recording a timeline: the caller's steps and stalls, and the engine's copies if
/// it was built with [`crate::EngineBuilder::trace`].
pub fn run_traced(
    engine: &Engine,
    workload: &Workload,
    cfg: &RunConfig,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(RunReport, Trace)> {
    let mut trace = Trace::default();
    let report = run_impl(
        engine,
        workload,
        Source::Pattern,
        cfg,
        progress,
        Some(&mut trace),
    )?;
    trace.spans.extend(engine.take_trace().spans);
    Ok((report, trace))
}

fn run_impl(
    engine: &Engine,
    workload: &Workload,
    source: Source<'_>,
    cfg: &RunConfig,
    progress: &mut dyn FnMut(&Progress),
    trace: Option<&mut Trace>,
) -> Result<RunReport> {
    if cfg.tokens == 0 {
        return Err(Error::Workload("at least one token must be decoded".into()));
    }
    if !(cfg.bound_bytes_per_s.is_finite() && cfg.bound_bytes_per_s > 0.0) {
        return Err(Error::Workload(
            "the bound's bandwidth must be positive".into(),
        ));
    }
    let resolved = workload.resolve_seeded(cfg.seed)?;
    // The real minimum (a step's blocks and the pinned ones), before any block is allocated.
    workload.check_budget(engine.budget())?;
    let mut ids: Vec<BlockId> = Vec::with_capacity(workload.blocks.len());
    let result = run_inner(
        engine, workload, source, &resolved, cfg, progress, &mut ids, trace,
    );
    for id in ids {
        // Frees everything even when the run failed; errors after shutdown are expected.
        let _ = engine.free(id);
    }
    result
}

#[allow(clippy::too_many_arguments)] // the run's inputs and its outputs
fn run_inner(
    engine: &Engine,
    workload: &Workload,
    source: Source<'_>,
    resolved: &Resolved,
    cfg: &RunConfig,
    progress: &mut dyn FnMut(&Progress),
    ids: &mut Vec<BlockId>,
    mut trace: Option<&mut Trace>,
) -> Result<RunReport> {
    let bound = bound_tokens_per_s(workload, engine.budget(), cfg.bound_bytes_per_s)?;
    let mut seeds = Vec::new();
    let mut kv: Vec<Option<KvState>> = Vec::new();
    let mut buf = Vec::new();
    grow(&mut buf, FILL_BYTES as usize)?;
    // Where each block lies in a model's files (a model's blocks skip its empty tensors, and
    // packed experts are a block per expert).
    let pieces: Vec<crate::model::Piece> = match source {
        Source::Pattern => Vec::new(),
        Source::Model(m) => m.pieces().0,
    };
    // A model's files, each registered once, read-only.
    let buffers: Vec<HostBuffer> = match source {
        Source::Pattern => Vec::new(),
        Source::Model(m) => m
            .files()
            .map(|(path, bytes)| {
                // SAFETY: the mapping is read-only and lives in `m`, which outlives every copy
                // from it: copies run only while the run does (`run_impl` frees every block
                // before it returns, and after a shutdown no copy runs at all); a registration
                // that outlives the mapping is only unregistered later, never read.
                // Known as the file's mapping (from its start): the RAM tier reads the blocks it
                // does not keep cached straight from the disk.
                unsafe {
                    engine.register_file_mapping(
                        bytes.as_ptr().cast_mut(),
                        bytes.len() as u64,
                        path,
                        0,
                    )
                }
            })
            .collect::<Result<_>>()?,
    };
    // A sampled check reads what the bytes must be from the files directly: through the
    // mapping, each sample's page fault would read ahead the kernel's window (8 MiB on the build
    // machine's disk) of a model larger than RAM, more than the check reads by 100x, and count
    // against the RAM tier's disk reads.
    let disk_files: Vec<crate::ram_tier::DiskFile> = match source {
        Source::Model(m) if cfg.verify == Verify::Sampled => m
            .files()
            .map_while(|(path, _)| crate::ram_tier::DiskFile::open(path).ok())
            .collect(),
        _ => Vec::new(),
    };
    for (i, b) in workload.blocks.iter().enumerate() {
        let spec = BlockSpec::new(b.bytes)
            .name(b.name.clone())
            .priority(b.priority)
            .policy(b.policy)
            .mutable(b.mutable);
        let seed = pattern::seed(i as u64);
        seeds.push(seed);
        if let Source::Model(_) = source {
            let p = &pieces[i];
            ids.push(engine.alloc_in(&buffers[p.file], p.offset, spec)?);
            kv.push(None);
            continue;
        }
        let id = engine.alloc(spec)?;
        ids.push(id);
        let mut off = 0;
        while off < b.bytes {
            let n = (b.bytes - off).min(buf.len() as u64) as usize;
            pattern::fill(seed, off, &mut buf[..n]);
            engine.write(id, off, &buf[..n])?;
            off += n as u64;
        }
        kv.push(b.mutable.then(|| {
            let rows = (b.bytes / 4096).clamp(1, 64);
            KvState {
                rows,
                row_bytes: b.bytes / rows,
                versions: vec![0; rows as usize],
                written: false,
                reloaded: false,
            }
        }));
    }
    for (s, b, p) in resolved.declarations() {
        if p >= 1.0 {
            engine.declare(s, ids[b])?;
        } else {
            engine.declare_candidate(s, ids[b], p)?;
        }
    }
    let mut blocks = Vec::new();
    let mut draws = crate::routing::Draws::new(resolved);

    let total = cfg.warmup_tokens + cfg.tokens;
    let mut integrity = Integrity::default();
    let mut scratch = Vec::new();
    let t_start = Instant::now();
    let mut t_timed = t_start;
    let mut at_timed = Stats::default();
    let disk_at_start = page_cache::storage_bytes_read();
    let (mut disk_at_timed, mut ram_at_timed) = (disk_at_start, engine.ram_tier());
    for token in 0..total {
        if token == cfg.warmup_tokens {
            t_timed = Instant::now();
            at_timed = engine.stats();
            disk_at_timed = page_cache::storage_bytes_read();
            ram_at_timed = engine.ram_tier();
        }
        for s in 0..resolved.steps.len() {
            draws.blocks(token, s, &mut blocks);
            engine.hint(s as u64)?;
            // What the router (or a predictor) has said by now (`routing.rs`).
            draws.tell(token, s, ids, |step, told| engine.hint_choice(step, told))?;
            // A sampled check of a model's block reads its expected bytes from the file now,
            // before the wait, not while the block is held: a read queued on the disk behind the
            // RAM tier's own would hold the block, and the copies waiting for its room, for its
            // latency (a few ms a read, three a block; seen on `--trace`'s copy track as a gap
            // after every copy).
            let mut sampled: Vec<(usize, u64, Vec<u8>)> = Vec::new();
            if let (Source::Model(_), Verify::Sampled) = (source, cfg.verify) {
                for &b in &blocks {
                    let (p, size) = (&pieces[b], workload.blocks[b].bytes);
                    let Some(f) = disk_files.get(p.file) else {
                        continue;
                    };
                    for (off, len) in sample_ranges(size, sample_nonce(token, s, b)) {
                        let mut want = vec![0u8; len as usize];
                        if f.read_exact_at(&mut want, p.offset + off).is_ok() {
                            sampled.push((b, off, want));
                        }
                    }
                }
            }
            let wait_start = engine.now_s();
            // A cache written on the device is dirty until it is written back; clean before its
            // wait (which marks it used), it went to the host and comes back from there.
            for &b in &blocks {
                if let Some(state) = kv[b].as_mut().filter(|k| k.written) {
                    state.reloaded = !engine.is_dirty(ids[b])?;
                }
            }
            let mut guards = Vec::with_capacity(blocks.len());
            for &b in &blocks {
                guards.push((b, engine.wait(ids[b])?));
            }
            // The step computes once its blocks are on the device.
            let step_start = Instant::now();
            let compute_start = engine.now_s();
            if let Some(t) = trace.as_deref_mut() {
                if compute_start - wait_start > 1e-5 {
                    t.push(
                        Track::Compute,
                        "stall",
                        "stall",
                        wait_start,
                        compute_start - wait_start,
                        token,
                    );
                }
            }
            for (b, guard) in &guards {
                let mut checked = guard.len();
                // What the block's bytes at `off` must be: its pattern, or its tensor's bytes in
                // the file.
                let expected = |off: u64, bytes: &[u8]| match source {
                    Source::Pattern => pattern::verify(seeds[*b], off, bytes),
                    Source::Model(m) => {
                        let p = &pieces[*b];
                        let read = (sampled.iter())
                            .find(|(sb, so, w)| *sb == *b && *so == off && w.len() == bytes.len());
                        match (read, disk_files.get(p.file)) {
                            (Some((_, _, want)), _) => want == bytes,
                            (None, Some(f)) => {
                                let mut want = vec![0u8; bytes.len()];
                                f.read_exact_at(&mut want, p.offset + off).is_ok() && want == bytes
                            }
                            (None, None) => {
                                let data = m.piece_data(p);
                                data.get(off as usize..off as usize + bytes.len()) == Some(bytes)
                            }
                        }
                    }
                };
                let ok = match &mut kv[*b] {
                    None => match (guard.as_slice(), cfg.verify) {
                        (Some(bytes), Verify::Full) => expected(0, bytes),
                        (None, Verify::Full) => {
                            grow(&mut scratch, guard.len() as usize)?;
                            guard.read_device(0, &mut scratch)?;
                            expected(0, &scratch)
                        }
                        (_, Verify::Sampled) => {
                            let mut ok = true;
                            checked = 0;
                            for (off, len) in sample_ranges(guard.len(), sample_nonce(token, s, *b))
                            {
                                grow(&mut scratch, len as usize)?;
                                guard.read_device(off, &mut scratch)?;
                                ok &= expected(off, &scratch[..len as usize]);
                                checked += len;
                            }
                            ok
                        }
                    },
                    Some(state) => {
                        grow(&mut scratch, guard.len() as usize)?;
                        guard.read_device(0, &mut scratch)?;
                        let ok = verify_kv(seeds[*b], state, &scratch);
                        // Append this token's row.
                        let row = token % state.rows;
                        let version = token + 1;
                        let off = row * state.row_bytes;
                        let bytes = &mut scratch[off as usize..(off + state.row_bytes) as usize];
                        pattern::fill(version_seed(seeds[*b], version), off, bytes);
                        guard.write_device(off, bytes)?;
                        state.versions[row as usize] = version;
                        state.written = true;
                        if std::mem::take(&mut state.reloaded) {
                            integrity.reloaded_after_writeback += 1;
                        }
                        ok
                    }
                };
                integrity.verified_blocks += 1;
                integrity.verified_bytes += checked;
                if !ok {
                    integrity.mismatches += 1;
                }
            }
            let compute = Duration::from_secs_f64(workload.steps[s].compute_s);
            os::sleep_until(step_start + compute);
            drop(guards);
            if let Some(t) = trace.as_deref_mut() {
                let end = engine.now_s();
                t.push(
                    Track::Compute,
                    format!("step {s}"),
                    "step",
                    compute_start,
                    end - compute_start,
                    token,
                );
            }
        }
        let timed = token >= cfg.warmup_tokens;
        progress(&Progress {
            done: token + 1,
            total,
            timed,
            elapsed_s: if timed {
                t_timed.elapsed().as_secs_f64()
            } else {
                0.0
            },
            timed_done: (token + 1).saturating_sub(cfg.warmup_tokens),
            bound_tokens_per_s: bound,
            stats: engine.stats(),
            stats_at_timed: at_timed.clone(),
            integrity,
        });
    }
    let wall_s = t_timed.elapsed().as_secs_f64();
    let first_token_s = (t_timed - t_start).as_secs_f64();
    let end = engine.stats();

    // The host copies of mutable blocks must hold every row written (after write-back or read).
    for (b, state) in kv.iter().enumerate() {
        if let Some(state) = state {
            let size = workload.blocks[b].bytes;
            grow(&mut scratch, size as usize)?;
            engine.read(ids[b], 0, &mut scratch)?;
            integrity.verified_blocks += 1;
            integrity.verified_bytes += size;
            if !verify_kv(seeds[b], state, &scratch) {
                integrity.mismatches += 1;
            }
        }
    }

    let host_tier = matches!(source, Source::Model(_)).then(|| {
        let ram = engine.ram_tier();
        let (checked, resident) = (
            ram.pages_checked - ram_at_timed.pages_checked,
            ram.pages_resident - ram_at_timed.pages_resident,
        );
        let read = |from: Option<u64>, to: Option<u64>| match (from, to) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        };
        let warmup_s = (t_timed - t_start).as_secs_f64();
        // Direct reads over the timed passes: their bytes over the time a read was on the disk
        // (the end-of-run average would weigh only the last few reads).
        let direct = ram.direct_bytes_read - ram_at_timed.direct_bytes_read;
        let direct_s = ram.direct_busy_s - ram_at_timed.direct_busy_s;
        HostTierReport {
            cap_bytes: ram.cap_bytes,
            cached_bytes: ram.cached_bytes,
            page_cache_hit_rate: match (disk_at_timed, page_cache::storage_bytes_read()) {
                (Some(a), Some(b)) if end.bytes_h2d > at_timed.bytes_h2d => {
                    let copied = (end.bytes_h2d - at_timed.bytes_h2d) as f64;
                    (1.0 - b.saturating_sub(a) as f64 / copied).max(0.0)
                }
                (Some(_), Some(_)) => 1.0,
                _ if checked > 0 => resident as f64 / checked as f64,
                _ => 1.0,
            },
            disk_bytes_read: read(disk_at_timed, page_cache::storage_bytes_read()),
            disk_bytes_per_s: if direct > 0 && direct_s > 0.0 {
                direct as f64 / direct_s
            } else if ram.disk_bytes_per_s > 0.0 {
                ram.disk_bytes_per_s
            } else if warmup_s > 0.0 {
                read(disk_at_start, disk_at_timed) as f64 / warmup_s
            } else {
                0.0
            },
            disk_rate_from: if direct > 0 && direct_s > 0.0 {
                "direct reads"
            } else if ram.disk_bytes_per_s > 0.0 {
                "read-ahead"
            } else {
                "warm-up"
            },
            disk_bound_tokens_per_s: 0.0,
            link_bytes_per_s: 0.0,
            bound_tokens_per_s: 0.0,
            direct_reads_off: ram.direct_reads_off.clone(),
        }
    });
    // The disk's term of the bound (`HostTierReport::disk_bound_tokens_per_s`).
    let mut bound = bound;
    let mut host_tier = host_tier;
    if let Some(h) = host_tier.as_mut() {
        // Bytes per pass, not the model's: routed experts are read only when drawn.
        let streamed = (workload.bytes_per_pass()? - engine.budget() as f64).max(0.0);
        let uncached = streamed - h.cached_bytes as f64;
        // Read from the disk in the timed passes: the kernel's count (`/proc/self/io`), or the
        // tier's own direct reads where that count is unknown (not Linux).
        let read_disk = h.disk_bytes_read > 0 || h.disk_rate_from == "direct reads";
        let disk_s = if read_disk && h.disk_bytes_per_s > 0.0 && uncached > 0.0 {
            h.disk_bound_tokens_per_s = h.disk_bytes_per_s / uncached;
            bound = bound.min(h.disk_bound_tokens_per_s);
            uncached / h.disk_bytes_per_s
        } else {
            0.0
        };
        let busy_s = wall_s - (end.copy_idle_s - at_timed.copy_idle_s);
        let copied = (end.bytes_h2d - at_timed.bytes_h2d) as f64;
        if busy_s > 0.0 && copied > 0.0 {
            h.link_bytes_per_s = copied / busy_s;
            let link_s = streamed / h.link_bytes_per_s;
            let pass_s = workload.compute_s_per_pass().max(link_s).max(disk_s);
            if pass_s > 0.0 {
                h.bound_tokens_per_s = 1.0 / pass_s;
            }
        }
    }
    let model_bytes = workload.model_bytes();
    let budget = engine.budget();
    let compute = workload.compute_s_per_pass();
    let tokens_per_s = cfg.tokens as f64 / wall_s;
    let info = engine.backend_info();
    Ok(RunReport {
        backend: info.name.to_string(),
        backend_description: info.description,
        workload: workload.name.clone(),
        model_bytes,
        vram_budget_bytes: budget,
        tokens: cfg.tokens,
        warmup_tokens: cfg.warmup_tokens,
        wall_s,
        first_token_s,
        tokens_per_s,
        bound_tokens_per_s: bound,
        efficiency: tokens_per_s / bound,
        h2d_bytes_per_s: cfg.bound_bytes_per_s,
        h2d_source: cfg.bound_source.clone(),
        compute_s_per_token: compute,
        bytes_h2d: end.bytes_h2d - at_timed.bytes_h2d,
        min_bytes_h2d: min_bytes_h2d(workload, budget, cfg.tokens)?,
        warmup_bytes_h2d: at_timed.bytes_h2d,
        bytes_d2h: end.bytes_d2h - at_timed.bytes_d2h,
        writebacks: end.writebacks - at_timed.writebacks,
        hit_rate: end.hit_rate_since(&at_timed),
        stall_s: end.stall_s - at_timed.stall_s,
        prefetch: end.prefetch.since(&at_timed.prefetch),
        copy_idle_s: end.copy_idle_s - at_timed.copy_idle_s,
        evictions: end.evictions - at_timed.evictions,
        peak_device_bytes: end.peak_device_bytes,
        integrity,
        pageable_files: buffers.iter().filter(|b| !b.pinned()).count() as u64,
        host_tier,
    })
}

/// The least any engine must move for `tokens` passes: `tokens * (bytes per pass - budget)`.
pub fn min_bytes_h2d(workload: &Workload, budget: u64, tokens: u64) -> Result<u64> {
    Ok(((workload.bytes_per_pass()? - budget as f64).max(0.0) * tokens as f64) as u64)
}

fn verify_kv(seed: u64, state: &KvState, bytes: &[u8]) -> bool {
    let rows_end = state.rows * state.row_bytes;
    let rows_ok = (0..state.rows).all(|r| {
        let off = r * state.row_bytes;
        let seed = version_seed(seed, state.versions[r as usize]);
        pattern::verify(
            seed,
            off,
            &bytes[off as usize..(off + state.row_bytes) as usize],
        )
    });
    rows_ok && pattern::verify(seed, rows_end, &bytes[rows_end as usize..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{llama, DeviceModel, LlamaShape};

    #[test]
    fn a_run_over_the_available_memory_is_refused_with_both_figures() {
        let w = llama("tiny", LlamaShape::TINY, DeviceModel::CONSUMER);
        let largest = w.blocks.iter().map(|b| b.bytes).max().unwrap();
        let model = w.model_bytes();
        assert_eq!(
            host_bytes_needed(&w, 1000, false),
            model + largest + FILL_BYTES
        );
        assert_eq!(
            host_bytes_needed(&w, 1000, true),
            model + largest + FILL_BYTES + 1000
        );
        let short = os::AvailableMemory {
            bytes: 5 << 30,
            limit: "cgroup memory.max",
        };
        let e = os::check_needed(6 << 30, Some(short)).unwrap_err();
        assert_eq!(
            e,
            Error::HostMemory {
                needed: 6 << 30,
                available: 5 << 30,
                limit: "cgroup memory.max"
            }
        );
        let msg = e.to_string();
        for part in [
            "6442450944",
            "6.00 GiB",
            "5368709120",
            "5.00 GiB",
            "cgroup memory.max",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        assert_eq!(os::check_needed(5 << 30, Some(short)), Ok(()));
        assert_eq!(
            os::check_needed(u64::MAX, None),
            Ok(()),
            "unknown: go ahead"
        );
    }
}
