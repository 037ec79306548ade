//! The deterministic simulator: how fast will this workload run with this budget and this link?
//!
//! It drives the **same [`Planner`]** as the runtime, with a virtual clock instead of threads: the
//! caller loop of [`crate::run`] (hint, wait for each block, compute, release), and a virtual copy
//! engine that runs the transfer thread's own chunk pipeline (the same [`CopyLoop`] over the same
//! [`TransferQueue`]: its order, chunking, number of chunks queued on the link, busy and idle
//! accounting) on the sim backend's link model (a copy starts when submitted or when the link
//! frees, and takes `latency + bytes / bandwidth`) and a virtual clock. So what it predicts is what
//! the runtime decides; only the bytes are not moved.
//!
//! Besides `synapswap` it runs the strategies peer systems use, on the same realized trace:
//! - `demand-lru`: reactive paging, as unified memory does: no schedule, no prefetch, LRU victims
//!   (the planner with prefetch off and nothing declared);
//! - `stream-sync`: as accelerate's offload hooks do: modules that fit (leaving room for the
//!   largest step) stay resident in first-use order; every other block is copied synchronously
//!   right before its step, with no overlap, and freed after it;
//! - `lookahead`: as ZeRO-Inference does: nothing stays resident; the blocks of the next
//!   `lookahead_steps` steps are prefetched in order as memory allows and freed after use;
//! - `host-moe`: as llama.cpp's `--n-cpu-moe` does: the dense blocks stay on the device, and
//!   so do whole layers' experts from the last layer back while they fit; the other layers'
//!   experts never cross the link: they are computed on the host, reading their weights at the
//!   host's memory bandwidth (batch-1 decode is memory-bound: `bytes / host_bytes_per_s`);
//! - `oracle`: Belady (evict the block used farthest in the realized future) on byte capacity with
//!   no fragmentation, its copies back to back at full bandwidth and free of latency: a lower
//!   bound, `time = max(compute, bytes / bandwidth)`.
//!
//! Routed steps draw from the same seed for every policy; engines are told only the candidates.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::str::FromStr;

use crate::backend::sim::DEFAULT_SIM_H2D;
use crate::backend::{Direction, Ticket};
use crate::planner::{Acquire, Planner, PlannerConfig};
use crate::routing::Draws;
use crate::run::{bound_tokens_per_s, min_bytes_h2d, Integrity, Progress, RunReport};
use crate::trace::{Trace, Track};
use crate::transfer::{copy_loop, queue_commands, report, Chunk, CopyLoop, Pick, TransferQueue};
use crate::workload::{Resolved, Workload};
use crate::{BlockId, BlockSpec, Error, Policy, Result, Stats, DEFAULT_CHUNK_BYTES};

/// Fixed cost per copy on the simulated link: ~2 us, what the H200 figures in DESIGN.md ("Facts
/// that shape the design": 1 MiB chunks at 49 GB/s against 55 GB/s for 16 MiB, a cudarc probe)
/// imply; not yet measured by this repository's `synapswap probe`.
pub const DEFAULT_LATENCY_S: f64 = 2e-6;

/// Host memory bandwidth at which the `host-moe` policy reads an expert's weights: 60 GB/s,
/// assumed (a desktop's dual-channel DDR5-4800 peaks at 76.8 GB/s; a decode reaches some 80% of
/// that). Not measured by this repository; `simulate --host-bw` sets another.
pub const DEFAULT_HOST_BYTES_PER_S: f64 = 60e9;

/// A strategy to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SimPolicy {
    /// Reactive paging with LRU victims (unified memory).
    DemandLru,
    /// Synchronous load before use, free after (accelerate offload hooks).
    StreamSync,
    /// Prefetch the next k steps, free after use (ZeRO-Inference).
    Lookahead,
    /// Experts that do not fit computed on the host (llama.cpp `--n-cpu-moe`).
    HostMoe,
    /// SynapSwap's planner.
    Synapswap,
    /// Belady on the realized trace at full bandwidth: the lower bound.
    Oracle,
}

impl SimPolicy {
    /// Every policy, in table order.
    pub const ALL: [SimPolicy; 6] = [
        SimPolicy::DemandLru,
        SimPolicy::StreamSync,
        SimPolicy::Lookahead,
        SimPolicy::HostMoe,
        SimPolicy::Synapswap,
        SimPolicy::Oracle,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            SimPolicy::DemandLru => "demand-lru",
            SimPolicy::StreamSync => "stream-sync",
            SimPolicy::Lookahead => "lookahead",
            SimPolicy::HostMoe => "host-moe",
            SimPolicy::Synapswap => "synapswap",
            SimPolicy::Oracle => "oracle",
        }
    }
}

impl fmt::Display for SimPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SimPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<SimPolicy> {
        SimPolicy::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::Parse {
                what: "policy",
                input: s.to_string(),
                reason:
                    "expected demand-lru, stream-sync, lookahead, host-moe, synapswap or oracle"
                        .into(),
            })
    }
}

/// Simulation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateConfig {
    /// Device budget, bytes.
    pub budget: u64,
    /// Host-to-device bandwidth, bytes/s.
    pub h2d_bytes_per_s: f64,
    /// Device-to-host bandwidth, bytes/s.
    pub d2h_bytes_per_s: f64,
    /// Fixed cost per copy (per chunk), seconds.
    pub latency_s: f64,
    /// Timed passes.
    pub tokens: u64,
    /// Untimed passes first (cold load).
    pub warmup_tokens: u64,
    /// Copy chunk of the runtime, bytes.
    pub chunk_bytes: u64,
    /// Chunks queued on the link at once (the sim backend's 2).
    pub pipeline_depth: usize,
    /// Seed of routed draws.
    pub seed: u64,
    /// Strategy.
    pub policy: SimPolicy,
    /// Steps ahead the `lookahead` policy prefetches.
    pub lookahead_steps: usize,
    /// Host memory bandwidth the `host-moe` policy computes experts at, bytes/s.
    pub host_bytes_per_s: f64,
    /// Record a timeline.
    pub trace: bool,
}

impl SimulateConfig {
    /// Settings from the workload's suggestions (budget, bandwidth, passes), with the runtime's
    /// defaults for the rest; a workload without suggestions gets half its bytes as budget,
    /// the sim backend's bandwidth and 8 passes.
    pub fn for_workload(w: &Workload) -> SimulateConfig {
        let bw = w.h2d_bytes_per_s.unwrap_or(DEFAULT_SIM_H2D);
        SimulateConfig {
            budget: w.vram_budget.unwrap_or(w.model_bytes() / 2),
            h2d_bytes_per_s: bw,
            d2h_bytes_per_s: bw,
            latency_s: DEFAULT_LATENCY_S,
            tokens: w.passes.unwrap_or(8),
            warmup_tokens: 1,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            pipeline_depth: 2,
            seed: 0,
            policy: SimPolicy::Synapswap,
            lookahead_steps: 2,
            host_bytes_per_s: DEFAULT_HOST_BYTES_PER_S,
            trace: false,
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Workload(m.to_string()));
        for bw in [
            self.h2d_bytes_per_s,
            self.d2h_bytes_per_s,
            self.host_bytes_per_s,
        ] {
            if !(bw.is_finite() && bw > 0.0) {
                return bad("bandwidths must be positive");
            }
        }
        if !(self.latency_s.is_finite() && self.latency_s >= 0.0) {
            return bad("latency must be zero or positive");
        }
        if self.tokens == 0 {
            return bad("at least one pass must be simulated");
        }
        if self.chunk_bytes == 0 || self.pipeline_depth == 0 {
            return bad("chunk size and pipeline depth must be positive");
        }
        Ok(())
    }
}

/// What a simulation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Simulation {
    /// The same report `synapswap run` prints, measured on the virtual clock (no bytes move, so
    /// `integrity` is all zero).
    pub report: RunReport,
    /// The timeline, if asked for.
    pub trace: Trace,
}

/// Simulates `cfg.warmup_tokens + cfg.tokens` passes of `workload` under `cfg.policy`. Calls
/// `progress` after every pass with virtual-clock figures.
pub fn simulate(
    workload: &Workload,
    cfg: &SimulateConfig,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Simulation> {
    cfg.check()?;
    let resolved = workload.resolve_seeded(cfg.seed)?;
    // The real minimum (a step's blocks and the pinned ones), before any block is named.
    workload.check_budget(cfg.budget)?;
    let largest = workload.blocks.iter().map(|b| b.bytes).max().unwrap_or(0);
    if crate::pool::granules(largest) * crate::pool::GRANULE > cfg.budget {
        return Err(Error::BlockTooLarge {
            size: largest,
            budget: cfg.budget,
        });
    }
    let bound = bound_tokens_per_s(workload, cfg.budget, cfg.h2d_bytes_per_s)?;
    let mut ctx = Ctx {
        workload,
        resolved: &resolved,
        cfg,
        bound,
        trace: Trace::default(),
        progress,
    };
    let m = match cfg.policy {
        SimPolicy::Synapswap => engine_policy(&mut ctx, true)?,
        SimPolicy::DemandLru => engine_policy(&mut ctx, false)?,
        SimPolicy::StreamSync => stream_sync(&mut ctx)?,
        SimPolicy::Lookahead => lookahead(&mut ctx)?,
        SimPolicy::HostMoe => host_moe(&mut ctx)?,
        SimPolicy::Oracle => oracle(&mut ctx)?,
    };
    let report = ctx.report(m)?;
    Ok(Simulation {
        report,
        trace: ctx.trace,
    })
}

/// Shared by the policies.
struct Ctx<'a> {
    workload: &'a Workload,
    resolved: &'a Resolved,
    cfg: &'a SimulateConfig,
    bound: f64,
    trace: Trace,
    progress: &'a mut dyn FnMut(&Progress),
}

/// Virtual-clock measurements of one policy.
struct Measured {
    t_timed: f64,
    t_end: f64,
    at_timed: Stats,
    end: Stats,
    description: String,
}

impl Ctx<'_> {
    fn total(&self) -> u64 {
        self.cfg.warmup_tokens + self.cfg.tokens
    }

    /// The blocks every step of every pass really uses (the routed draws made), pass by pass.
    fn realized_trace(&self) -> Vec<Vec<usize>> {
        let steps = self.resolved.steps.len();
        let mut out = Vec::with_capacity(self.total() as usize * steps);
        let mut buf = Vec::new();
        let mut draws = Draws::new(self.resolved);
        for token in 0..self.total() {
            for s in 0..steps {
                draws.blocks(token, s, &mut buf);
                out.push(buf.clone());
            }
        }
        out
    }

    fn tracing(&self) -> bool {
        self.cfg.trace
    }

    fn pass_done(&mut self, token: u64, now: f64, t_timed: f64, stats: &Stats, at_timed: &Stats) {
        let timed = token >= self.cfg.warmup_tokens;
        let p = Progress {
            done: token + 1,
            total: self.total(),
            timed,
            elapsed_s: if timed { now - t_timed } else { 0.0 },
            timed_done: (token + 1).saturating_sub(self.cfg.warmup_tokens),
            bound_tokens_per_s: self.bound,
            stats: stats.clone(),
            stats_at_timed: at_timed.clone(),
            integrity: Integrity::default(),
        };
        (self.progress)(&p);
    }

    fn step(&mut self, s: usize, pass: u64, start: f64, end: f64) {
        if self.cfg.trace {
            self.trace.push(
                Track::Compute,
                format!("step {s}"),
                "step",
                start,
                end - start,
                pass,
            );
        }
    }

    fn stall(&mut self, pass: u64, start: f64, end: f64) {
        if self.cfg.trace && end > start {
            self.trace
                .push(Track::Compute, "stall", "stall", start, end - start, pass);
        }
    }

    fn report(&self, m: Measured) -> Result<RunReport> {
        let w = self.workload;
        let cfg = self.cfg;
        let wall_s = (m.t_end - m.t_timed).max(f64::MIN_POSITIVE);
        let tokens_per_s = cfg.tokens as f64 / wall_s;
        let (a, e) = (&m.at_timed, &m.end);
        Ok(RunReport {
            backend: "simulator".into(),
            backend_description: m.description,
            workload: w.name.clone(),
            model_bytes: w.model_bytes(),
            vram_budget_bytes: cfg.budget,
            tokens: cfg.tokens,
            warmup_tokens: cfg.warmup_tokens,
            wall_s,
            first_token_s: m.t_timed,
            tokens_per_s,
            bound_tokens_per_s: self.bound,
            efficiency: tokens_per_s / self.bound,
            h2d_bytes_per_s: cfg.h2d_bytes_per_s,
            h2d_source: "modelled by the simulator".into(),
            compute_s_per_token: w.compute_s_per_pass(),
            bytes_h2d: e.bytes_h2d - a.bytes_h2d,
            min_bytes_h2d: min_bytes_h2d(w, cfg.budget, cfg.tokens)?,
            warmup_bytes_h2d: a.bytes_h2d,
            bytes_d2h: e.bytes_d2h - a.bytes_d2h,
            writebacks: e.writebacks - a.writebacks,
            hit_rate: e.hit_rate_since(a),
            stall_s: e.stall_s - a.stall_s,
            prefetch: e.prefetch.since(&a.prefetch),
            copy_idle_s: e.copy_idle_s - a.copy_idle_s,
            evictions: e.evictions - a.evictions,
            peak_device_bytes: e.peak_device_bytes,
            integrity: Integrity::default(),
            pageable_files: 0,
            host_tier: None,
        })
    }
}

/// The modelled link: one copy at a time, in submission order.
#[derive(Debug, Clone, Copy)]
struct Link {
    h2d: f64,
    d2h: f64,
    latency: f64,
    free_at: f64,
}

impl Link {
    fn new(cfg: &SimulateConfig) -> Link {
        Link {
            h2d: cfg.h2d_bytes_per_s,
            d2h: cfg.d2h_bytes_per_s,
            latency: cfg.latency_s,
            free_at: 0.0,
        }
    }

    /// Queues a copy submitted at `now`; returns its (start, finish).
    fn copy(&mut self, now: f64, dir: Direction, bytes: u64) -> (f64, f64) {
        let bw = match dir {
            Direction::HostToDevice => self.h2d,
            Direction::DeviceToHost => self.d2h,
        };
        let start = now.max(self.free_at);
        let finish = start + self.latency + bytes as f64 / bw;
        self.free_at = finish;
        (start, finish)
    }
}

// ---------------------------------------------------------------------------------------------
// synapswap and demand-lru: the planner driven like the runtime drives it.

/// The modelled link as the copy loop's [`copy_loop::Link`], on the virtual clock: a copy's start
/// and finish are known when it is submitted.
struct VirtualLink {
    link: Link,
    /// The virtual clock, as the caller loop last set it.
    now: f64,
    /// (ticket, start, finish) of the copies on the link, oldest first.
    queued: VecDeque<(u64, f64, f64)>,
    tickets: u64,
}

impl VirtualLink {
    /// When the oldest copy on the link finishes.
    fn next_finish(&self) -> Option<f64> {
        self.queued.front().map(|q| q.2)
    }
}

impl copy_loop::Link for VirtualLink {
    type Time = f64;

    fn now(&self) -> f64 {
        self.now
    }

    unsafe fn submit(&mut self, c: &Chunk) -> Result<Ticket> {
        let (start, finish) = self.link.copy(self.now, c.dir, c.len);
        self.tickets += 1;
        self.queued.push_back((self.tickets, start, finish));
        Ok(Ticket(self.tickets))
    }

    fn span(&self, ticket: Ticket) -> Option<(f64, f64)> {
        let q = self.queued.iter().rev().find(|q| q.0 == ticket.0)?;
        Some((q.1, q.2))
    }

    fn wait(&mut self, ticket: Ticket) -> (Result<()>, f64) {
        let q = self
            .queued
            .pop_front()
            .expect("a submitted copy is on the link");
        debug_assert_eq!(q.0, ticket.0, "copies complete in submission order");
        (Ok(()), q.2)
    }
}

/// The runtime's transfer thread and backend, on a virtual clock: the same [`CopyLoop`] on a
/// modelled link.
struct VirtualRuntime {
    planner: Planner,
    /// Each block's (host offset, mapping), as the engine's host tier would lay them out.
    hosts: Vec<(u64, u64)>,
    queue: TransferQueue,
    copies: CopyLoop<f64>,
    link: VirtualLink,
    trace: Option<Trace>,
}

impl VirtualRuntime {
    /// Turns the planner's commands into jobs and keeps the link fed (as `apply_commands` and
    /// the transfer thread's loop do).
    fn apply(&mut self, now: f64) {
        let hosts = &self.hosts;
        queue_commands(&mut self.planner, &mut self.queue, 0, |b, _| {
            let (addr, mapping) = hosts[b.index as usize];
            (addr, mapping, false)
        });
        self.fill(now);
    }

    fn fill(&mut self, now: f64) {
        let mut batch = Vec::new();
        self.copies.carve(&mut self.queue, Pick::Any, &mut batch);
        if !batch.is_empty() {
            self.copies.end_idle(&mut self.planner, now);
        }
        self.link.now = now;
        // SAFETY: the modelled link moves no bytes.
        let submitted = unsafe { CopyLoop::submit(&mut self.link, batch) };
        for s in submitted {
            let failed = self
                .copies
                .record(&mut self.queue, &self.planner, self.trace.as_mut(), s);
            debug_assert!(failed.is_none(), "the modelled link never fails");
        }
        if self.copies.is_empty() {
            self.copies.start_idle(now);
        }
    }

    /// Completes the oldest chunk; returns its finish time, or `None` if nothing is in flight.
    fn complete_next(&mut self) -> Option<f64> {
        let f = self.copies.oldest()?;
        let (result, t) = copy_loop::Link::wait(&mut self.link, f.ticket);
        let result = result.map_err(|e| e.to_string());
        let trace = self.trace.as_mut();
        for job in self
            .copies
            .complete(&mut self.queue, &self.planner, trace, f, result, t)
        {
            report(&mut self.planner, &job);
        }
        self.apply(t);
        Some(t)
    }

    /// Completes every chunk that finishes by `t`.
    fn advance_to(&mut self, t: f64) {
        while self.link.next_finish().is_some_and(|f| f <= t) {
            self.complete_next();
        }
    }

    /// The caller waits for `id` at `now`; returns when it holds the block.
    fn wait(&mut self, id: BlockId, now: f64) -> Result<f64> {
        match self.planner.acquire(id)? {
            Acquire::Ready(_) => {
                self.apply(now);
                Ok(now)
            }
            Acquire::Pending => {
                self.apply(now);
                loop {
                    if let Some(r) = self.planner.poll_waiter(id) {
                        r?;
                        return Ok(now);
                    }
                    let Some(t) = self.complete_next() else {
                        return Err(Error::Workload(format!(
                            "simulation stuck: block {id:?} cannot be placed"
                        )));
                    };
                    if let Some(r) = self.planner.poll_waiter(id) {
                        r?;
                        let t = t.max(now);
                        self.planner.add_stall(t - now);
                        self.apply(t);
                        return Ok(t);
                    }
                }
            }
        }
    }
}

fn engine_policy(ctx: &mut Ctx<'_>, planned: bool) -> Result<Measured> {
    let cfg = ctx.cfg;
    let mut pc = PlannerConfig::new(cfg.budget);
    pc.prefetch = planned;
    let mut planner = Planner::new(pc)?;
    let mut ids = Vec::with_capacity(ctx.workload.blocks.len());
    for b in &ctx.workload.blocks {
        let policy = if planned { b.policy } else { Policy::Lru };
        ids.push(
            planner.add_block(
                BlockSpec::new(b.bytes)
                    .name(b.name.clone())
                    .priority(b.priority)
                    .policy(policy)
                    .mutable(b.mutable),
            )?,
        );
    }
    if planned {
        for (s, b, p) in ctx.resolved.declarations() {
            planner.declare_p(s, ids[b], p)?;
        }
    }
    // Block ids are slot indices in creation order here: the layout is indexed by them.
    let hosts = crate::host_tier::model_layout(ctx.workload.blocks.iter().map(|b| b.bytes));
    let mut rt = VirtualRuntime {
        planner,
        hosts,
        queue: TransferQueue::default(),
        copies: CopyLoop::new(cfg.pipeline_depth, cfg.chunk_bytes, 0.0, 0.0),
        link: VirtualLink {
            link: Link::new(cfg),
            now: 0.0,
            queued: VecDeque::new(),
            tickets: 0,
        },
        trace: ctx.tracing().then(Trace::default),
    };
    rt.copies.start_idle(0.0);
    let mut now = 0.0;
    let mut t_timed = 0.0;
    let mut at_timed = Stats::default();
    let mut blocks = Vec::new();
    let mut draws = Draws::new(ctx.resolved);
    for token in 0..ctx.total() {
        if token == cfg.warmup_tokens {
            t_timed = now;
            at_timed = rt.planner.stats();
        }
        for s in 0..ctx.resolved.steps.len() {
            draws.blocks(token, s, &mut blocks);
            rt.advance_to(now);
            rt.planner.hint(s as u64, now);
            if planned {
                // What the router (or a predictor) has said by now, as `synapswap run` tells it.
                draws.tell(token, s, &ids, |step, told| {
                    rt.planner.hint_choice(step, told)
                })?;
            }
            rt.apply(now);
            let wait_start = now;
            for &b in &blocks {
                now = rt.wait(ids[b], now)?;
            }
            ctx.stall(token, wait_start, now);
            let compute_start = now;
            now += ctx.resolved.steps[s].compute_s;
            rt.advance_to(now);
            for &b in &blocks {
                rt.planner.unhold(ids[b]);
            }
            rt.apply(now);
            ctx.step(s, token, compute_start, now);
        }
        let stats = rt.planner.stats();
        ctx.pass_done(token, now, t_timed, &stats, &at_timed);
    }
    if let Some(t) = rt.trace.take() {
        ctx.trace.spans.extend(t.spans);
    }
    Ok(Measured {
        t_timed,
        t_end: now,
        at_timed,
        end: rt.planner.stats(),
        description: format!(
            "{}: virtual clock, link {:.2} GB/s + {:.0} us per copy, {} chunks of {} MiB queued",
            if planned {
                "synapswap planner"
            } else {
                "demand paging, LRU"
            },
            cfg.h2d_bytes_per_s / 1e9,
            cfg.latency_s * 1e6,
            cfg.pipeline_depth,
            cfg.chunk_bytes >> 20
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// Counters for the peer models, kept in the engine's `Stats` shape.

#[derive(Default)]
struct Tally {
    stats: Stats,
    used: u64,
}

impl Tally {
    fn new(budget: u64, blocks: u64) -> Tally {
        Tally {
            stats: Stats {
                vram_budget_bytes: budget,
                blocks,
                ..Stats::default()
            },
            used: 0,
        }
    }

    fn alloc(&mut self, bytes: u64) {
        self.used += bytes;
        self.stats.device_used_bytes = self.used;
        self.stats.peak_device_bytes = self.stats.peak_device_bytes.max(self.used);
        self.stats.resident_blocks += 1;
    }

    fn free(&mut self, bytes: u64) {
        self.used -= bytes;
        self.stats.device_used_bytes = self.used;
        self.stats.resident_blocks -= 1;
        self.stats.evictions += 1;
    }

    fn load(&mut self, bytes: u64, demand: bool, busy: f64) {
        self.stats.bytes_h2d += bytes;
        self.stats.loads += 1;
        self.stats.transfer_busy_s += busy;
        if demand {
            self.stats.demand_loads += 1;
        } else {
            self.stats.prefetch.issued += 1;
            self.stats.prefetch.used += 1;
        }
    }

    fn writeback(&mut self, bytes: u64, busy: f64) {
        self.stats.bytes_d2h += bytes;
        self.stats.writebacks += 1;
        self.stats.transfer_busy_s += busy;
    }

    fn wait(&mut self, hit: bool) {
        self.stats.waits += 1;
        if hit {
            self.stats.hits += 1;
        }
    }
}

/// The link of a peer model and its copy timeline: one place copies a block, records the copy
/// and counts it.
struct PeerLink {
    link: Link,
    trace: Option<Trace>,
}

impl PeerLink {
    fn new(cfg: &SimulateConfig) -> PeerLink {
        PeerLink {
            link: Link::new(cfg),
            trace: cfg.trace.then(Trace::default),
        }
    }

    /// Loads `bytes` of block `name` submitted at `now` (a demand load or a prefetch); returns
    /// when the copy finishes.
    fn load(&mut self, tally: &mut Tally, now: f64, name: &str, bytes: u64, demand: bool) -> f64 {
        let (start, finish) = self.link.copy(now, Direction::HostToDevice, bytes);
        if let Some(t) = self.trace.as_mut() {
            let cat = if demand { "demand" } else { "prefetch" };
            t.push_copy(&format!("load {name}"), cat, start, finish, bytes);
        }
        tally.alloc(bytes);
        tally.load(bytes, demand, finish - start);
        finish
    }

    /// Writes a mutable block back, submitted at `now`; returns when the copy finishes.
    fn write_back(&mut self, tally: &mut Tally, now: f64, name: &str, bytes: u64) -> f64 {
        let (start, finish) = self.link.copy(now, Direction::DeviceToHost, bytes);
        if let Some(t) = self.trace.as_mut() {
            t.push_copy(
                &format!("write-back {name}"),
                "write-back",
                start,
                finish,
                bytes,
            );
        }
        tally.writeback(bytes, finish - start);
        finish
    }

    /// The pre-forward hook of the synchronous peers (stream-sync, host-moe): each of `blocks`
    /// not on the device is copied, one after another, from `now`; returns when the last is in.
    fn copy_in(
        &mut self,
        tally: &mut Tally,
        w: &Workload,
        blocks: impl IntoIterator<Item = usize>,
        (resident, loaded): (&[bool], &mut [bool]),
        mut now: f64,
    ) -> f64 {
        for b in blocks {
            let ready = resident[b] && loaded[b];
            tally.wait(ready);
            if !ready {
                now = self.load(tally, now, &w.blocks[b].name, w.blocks[b].bytes, true);
                loaded[b] = true;
            }
        }
        now
    }

    /// Their post-forward hook: each of `blocks` that is not resident for good leaves the
    /// device, written back first if mutable; returns when the last write-back is done.
    fn drop_offloaded(
        &mut self,
        tally: &mut Tally,
        w: &Workload,
        blocks: impl IntoIterator<Item = usize>,
        (resident, loaded): (&[bool], &mut [bool]),
        mut now: f64,
    ) -> f64 {
        for b in blocks {
            if resident[b] {
                continue;
            }
            let size = w.blocks[b].bytes;
            if w.blocks[b].mutable {
                now = self.write_back(tally, now, &w.blocks[b].name, size);
            }
            tally.free(size);
            loaded[b] = false;
        }
        now
    }

    /// Hands the copies to the simulation's timeline.
    fn finish(self, trace: &mut Trace) {
        if let Some(t) = self.trace {
            trace.spans.extend(t.spans);
        }
    }
}

/// The most bytes one step needs on the device at once (a routed step: its `k` largest
/// candidates).
fn largest_step(ctx: &Ctx<'_>) -> u64 {
    let bytes = |b: usize| ctx.workload.blocks[b].bytes;
    ctx.resolved
        .steps
        .iter()
        .map(|st| {
            let fixed: u64 = st.uses.iter().map(|&b| bytes(b)).sum();
            let routed: u64 = st.choose.as_ref().map_or(0, |r| r.largest_k(bytes));
            fixed + routed
        })
        .max()
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// stream-sync: accelerate's offload hooks.

fn stream_sync(ctx: &mut Ctx<'_>) -> Result<Measured> {
    let cfg = ctx.cfg;
    let w = ctx.workload;
    let n = w.blocks.len();
    // Resident: blocks in first-use order while they fit beside room for the largest step.
    let room = largest_step(ctx);
    if room > cfg.budget {
        return Err(Error::Workload(format!(
            "stream-sync needs a step's blocks on the device at once: {room} bytes, over the budget"
        )));
    }
    let mut order = Vec::new();
    let mut seen = vec![false; n];
    for st in &ctx.resolved.steps {
        let routed = st.choose.iter().flat_map(|r| r.blocks());
        for b in st.uses.iter().copied().chain(routed) {
            if !std::mem::replace(&mut seen[b], true) {
                order.push(b);
            }
        }
    }
    let mut resident = vec![false; n];
    let mut tally = Tally::new(cfg.budget, n as u64);
    let mut link = PeerLink::new(cfg);
    let mut now = 0.0;
    let mut fill = 0;
    for &b in &order {
        let size = w.blocks[b].bytes;
        if fill + size + room <= cfg.budget {
            fill += size;
            resident[b] = true;
        }
    }
    let mut loaded = vec![false; n];
    let mut t_timed = 0.0;
    let mut at_timed = Stats::default();
    let mut blocks = Vec::new();
    let mut draws = Draws::new(ctx.resolved);
    for token in 0..ctx.total() {
        if token == cfg.warmup_tokens {
            t_timed = now;
            at_timed = tally.stats.clone();
        }
        for s in 0..ctx.resolved.steps.len() {
            draws.blocks(token, s, &mut blocks);
            let wait_start = now;
            // Pre-forward hook: copy what is not on the device, synchronously.
            let state = (&resident[..], &mut loaded[..]);
            now = link.copy_in(&mut tally, w, blocks.iter().copied(), state, now);
            tally.stats.stall_s += now - wait_start;
            ctx.stall(token, wait_start, now);
            let compute_start = now;
            now += ctx.resolved.steps[s].compute_s;
            ctx.step(s, token, compute_start, now);
            // Post-forward hook: offloaded blocks leave the device (written back if mutable).
            let state = (&resident[..], &mut loaded[..]);
            now = link.drop_offloaded(&mut tally, w, blocks.iter().copied(), state, now);
        }
        let stats = tally.stats.clone();
        ctx.pass_done(token, now, t_timed, &stats, &at_timed);
    }
    link.finish(&mut ctx.trace);
    Ok(Measured {
        t_timed,
        t_end: now,
        at_timed,
        end: tally.stats,
        description: format!(
            "stream-sync (accelerate offload hooks): {} resident, rest copied before use without overlap; link {:.2} GB/s",
            crate::size::format_bytes(fill),
            cfg.h2d_bytes_per_s / 1e9
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// host-moe: llama.cpp's `--n-cpu-moe`.

fn host_moe(ctx: &mut Ctx<'_>) -> Result<Measured> {
    let cfg = ctx.cfg;
    let w = ctx.workload;
    let n = w.blocks.len();
    let steps = &ctx.resolved.steps;
    // The dense blocks (every fixed use) in first-use order, then whole routed steps' candidates
    // from the last routed step back, while they fit; a dense block that does not fit is copied
    // before its step and freed after, as stream-sync does.
    let dense_room = steps
        .iter()
        .map(|st| st.uses.iter().map(|&b| w.blocks[b].bytes).sum::<u64>())
        .max()
        .unwrap_or(0);
    if dense_room > cfg.budget {
        return Err(Error::Workload(format!(
            "host-moe needs a step's dense blocks on the device at once: {dense_room} bytes, over the budget"
        )));
    }
    let mut resident = vec![false; n];
    let mut routed = vec![false; n];
    for st in steps {
        for b in st.choose.iter().flat_map(|r| r.blocks()) {
            routed[b] = true;
        }
    }
    let mut fill = 0u64;
    let mut seen = vec![false; n];
    for st in steps {
        for &b in &st.uses {
            if !routed[b] && !std::mem::replace(&mut seen[b], true) {
                let size = w.blocks[b].bytes;
                if fill + size + dense_room <= cfg.budget {
                    fill += size;
                    resident[b] = true;
                }
            }
        }
    }
    let all_dense = (0..n).filter(|&b| seen[b]).all(|b| resident[b]);
    let room = if all_dense { 0 } else { dense_room };
    let mut on_device = vec![false; steps.len()];
    let mut device_layers = 0;
    for (s, st) in steps.iter().enumerate().rev() {
        let Some(r) = &st.choose else { continue };
        let bytes: u64 = r.blocks().map(|b| w.blocks[b].bytes).sum();
        if fill + bytes + room <= cfg.budget {
            fill += bytes;
            on_device[s] = true;
            device_layers += 1;
            for b in r.blocks() {
                resident[b] = true;
            }
        }
    }
    let routed_steps = steps.iter().filter(|st| st.choose.is_some()).count();
    let mut tally = Tally::new(cfg.budget, n as u64);
    let mut link = PeerLink::new(cfg);
    let mut loaded = vec![false; n];
    let (mut now, mut t_timed) = (0.0, 0.0);
    let mut at_timed = Stats::default();
    let mut draws = Draws::new(ctx.resolved);
    let mut experts = Vec::new();
    for token in 0..ctx.total() {
        if token == cfg.warmup_tokens {
            t_timed = now;
            at_timed = tally.stats.clone();
        }
        for (s, st) in steps.iter().enumerate() {
            experts.clear();
            if let Some(r) = &st.choose {
                for &e in draws.experts(token, s) {
                    experts.extend(r.experts[e].iter().copied());
                }
            }
            let on_host = st.choose.is_some() && !on_device[s];
            let wait_start = now;
            let copied = st
                .uses
                .iter()
                .chain(if on_host { &[][..] } else { &experts[..] })
                .copied();
            now = link.copy_in(&mut tally, w, copied, (&resident, &mut loaded), now);
            tally.stats.stall_s += now - wait_start;
            ctx.stall(token, wait_start, now);
            let compute_start = now;
            // The host reads the chosen experts' weights once each (memory-bound). A routed step
            // with fixed uses of its own also runs its `compute_s` on the device (which may
            // count its experts' device time too: an overestimate, never an underestimate).
            now += if on_host {
                let bytes: u64 = experts.iter().map(|&b| w.blocks[b].bytes).sum();
                let own = if st.uses.is_empty() {
                    0.0
                } else {
                    st.compute_s
                };
                own + bytes as f64 / cfg.host_bytes_per_s
            } else {
                st.compute_s
            };
            ctx.step(s, token, compute_start, now);
            let state = (&resident[..], &mut loaded[..]);
            now = link.drop_offloaded(&mut tally, w, st.uses.iter().copied(), state, now);
        }
        let stats = tally.stats.clone();
        ctx.pass_done(token, now, t_timed, &stats, &at_timed);
    }
    link.finish(&mut ctx.trace);
    Ok(Measured {
        t_timed,
        t_end: now,
        at_timed,
        end: tally.stats,
        description: format!(
            "host-moe (llama.cpp --n-cpu-moe): {} resident, experts of {device_layers} of {routed_steps} routed steps on the device, the rest computed on the host at {:.0} GB/s; link {:.2} GB/s",
            crate::size::format_bytes(fill),
            cfg.host_bytes_per_s / 1e9,
            cfg.h2d_bytes_per_s / 1e9
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// lookahead: ZeRO-Inference.

fn lookahead(ctx: &mut Ctx<'_>) -> Result<Measured> {
    let cfg = ctx.cfg;
    let w = ctx.workload;
    let n = w.blocks.len();
    let steps = ctx.resolved.steps.len();
    let total_steps = ctx.total() as usize * steps;
    if largest_step(ctx) > cfg.budget {
        return Err(Error::Workload(
            "lookahead needs a step's blocks on the device at once, over the budget".into(),
        ));
    }
    // Realized uses of every global step.
    let realized = ctx.realized_trace();
    let routed: Vec<bool> = ctx
        .resolved
        .steps
        .iter()
        .map(|s| s.choose.is_some())
        .collect();
    let mut tally = Tally::new(cfg.budget, n as u64);
    let mut link = PeerLink::new(cfg);
    // ready[b]: when the block's copy finishes, while it is on the device.
    let mut ready: Vec<Option<f64>> = vec![None; n];
    // The last global step that needs the block's current copy.
    let mut keep_until: Vec<usize> = vec![0; n];
    let mut next_job = (0usize, 0usize); // (global step, index into its blocks)
    let mut now = 0.0;
    let mut t_timed = 0.0;
    let mut at_timed = Stats::default();
    let k = cfg.lookahead_steps;
    let issue = |g_now: usize,
                 now: f64,
                 next_job: &mut (usize, usize),
                 ready: &mut Vec<Option<f64>>,
                 keep_until: &mut Vec<usize>,
                 tally: &mut Tally,
                 link: &mut PeerLink| {
        while next_job.0 < total_steps && next_job.0 <= g_now + k {
            let g = next_job.0;
            // A routed step's draw is known only when it runs.
            if routed[g % steps] && g > g_now {
                break;
            }
            let Some(&b) = realized[g].get(next_job.1) else {
                *next_job = (g + 1, 0);
                continue;
            };
            let size = w.blocks[b].bytes;
            if ready[b].is_some() {
                keep_until[b] = keep_until[b].max(g);
            } else {
                if tally.used + size > cfg.budget {
                    break;
                }
                let finish = link.load(tally, now, &w.blocks[b].name, size, g == g_now);
                ready[b] = Some(finish);
                keep_until[b] = g;
            }
            next_job.1 += 1;
        }
    };
    for token in 0..ctx.total() {
        if token == cfg.warmup_tokens {
            t_timed = now;
            at_timed = tally.stats.clone();
        }
        for s in 0..steps {
            let g = token as usize * steps + s;
            issue(
                g,
                now,
                &mut next_job,
                &mut ready,
                &mut keep_until,
                &mut tally,
                &mut link,
            );
            let wait_start = now;
            for &b in &realized[g] {
                let r = ready[b].expect("a step's blocks are issued before later ones");
                tally.wait(r <= now);
                now = now.max(r);
            }
            tally.stats.stall_s += now - wait_start;
            ctx.stall(token, wait_start, now);
            let compute_start = now;
            now += ctx.resolved.steps[s].compute_s;
            ctx.step(s, token, compute_start, now);
            // Free after use (written back first if mutable), unless a later step already
            // counts on this copy.
            for &b in &realized[g] {
                if keep_until[b] > g {
                    continue;
                }
                let size = w.blocks[b].bytes;
                if w.blocks[b].mutable {
                    // Queued on the link; the step does not wait for it.
                    link.write_back(&mut tally, now, &w.blocks[b].name, size);
                }
                tally.free(size);
                ready[b] = None;
            }
            issue(
                g,
                now,
                &mut next_job,
                &mut ready,
                &mut keep_until,
                &mut tally,
                &mut link,
            );
        }
        let stats = tally.stats.clone();
        ctx.pass_done(token, now, t_timed, &stats, &at_timed);
    }
    link.finish(&mut ctx.trace);
    Ok(Measured {
        t_timed,
        t_end: now,
        at_timed,
        end: tally.stats,
        description: format!(
            "lookahead (ZeRO-Inference): nothing resident, next {k} steps prefetched, freed after use; link {:.2} GB/s",
            cfg.h2d_bytes_per_s / 1e9
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// oracle: Belady on the realized trace, copies back to back at full bandwidth.

fn oracle(ctx: &mut Ctx<'_>) -> Result<Measured> {
    let cfg = ctx.cfg;
    let w = ctx.workload;
    let n = w.blocks.len();
    let steps = ctx.resolved.steps.len();
    let total = ctx.total();
    let realized = ctx.realized_trace();
    // Future uses of every block, in order.
    let mut future: Vec<VecDeque<usize>> = vec![VecDeque::new(); n];
    for (g, bs) in realized.iter().enumerate() {
        for &b in bs {
            future[b].push_back(g);
        }
    }
    let size = |b: usize| w.blocks[b].bytes;
    let pinned = |b: usize| w.blocks[b].policy == Policy::Pinned;
    let mut resident = vec![false; n];
    // Evictable residents by next use (farthest last).
    let mut by_next: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut next_of = vec![usize::MAX; n];
    let mut tally = Tally::new(cfg.budget, n as u64);
    let mut compute = 0.0;
    let mut compute_at_timed = 0.0;
    let mut t_timed = 0.0;
    let mut at_timed = Stats::default();
    let time =
        |stats: &Stats, compute: f64| compute_f(compute, stats.bytes_h2d, cfg.h2d_bytes_per_s);
    for token in 0..total {
        if token == cfg.warmup_tokens {
            at_timed = tally.stats.clone();
            t_timed = time(&tally.stats, compute);
            compute_at_timed = compute;
        }
        for s in 0..steps {
            let g = token as usize * steps + s;
            for &b in &realized[g] {
                if resident[b] {
                    by_next.remove(&(next_of[b], b));
                }
            }
            for &b in &realized[g] {
                tally.wait(resident[b]);
                if resident[b] {
                    continue;
                }
                while tally.used + size(b) > cfg.budget {
                    let Some(&(nx, v)) = by_next.iter().next_back() else {
                        return Err(Error::Workload(format!(
                            "oracle: step {s} does not fit in the budget"
                        )));
                    };
                    by_next.remove(&(nx, v));
                    resident[v] = false;
                    if w.blocks[v].mutable {
                        tally.writeback(size(v), 0.0);
                    }
                    tally.free(size(v));
                }
                resident[b] = true;
                tally.alloc(size(b));
                tally.load(size(b), false, size(b) as f64 / cfg.h2d_bytes_per_s);
            }
            for &b in &realized[g] {
                future[b].pop_front();
                next_of[b] = future[b].front().copied().unwrap_or(usize::MAX);
                if !pinned(b) {
                    by_next.insert((next_of[b], b));
                }
            }
            compute += ctx.resolved.steps[s].compute_s;
        }
        let now = time(&tally.stats, compute);
        let stats = tally.stats.clone();
        ctx.pass_done(token, now, t_timed, &stats, &at_timed);
    }
    let t_end = compute_f(
        compute - compute_at_timed,
        tally.stats.bytes_h2d - at_timed.bytes_h2d,
        cfg.h2d_bytes_per_s,
    ) + t_timed;
    if ctx.tracing() {
        // The bound has no schedule to draw: one span per pass on each track.
        let per_pass_compute = w.compute_s_per_pass();
        let per_pass_copy = (tally.stats.bytes_h2d - at_timed.bytes_h2d) as f64
            / cfg.tokens as f64
            / cfg.h2d_bytes_per_s;
        let pass_s = per_pass_compute.max(per_pass_copy);
        for p in 0..cfg.tokens {
            let start = t_timed + p as f64 * pass_s;
            ctx.trace.push(
                Track::Compute,
                format!("pass {p} (compute)"),
                "step",
                start,
                per_pass_compute,
                p,
            );
            ctx.trace.push(
                Track::Copy,
                format!("pass {p} (copies)"),
                "prefetch",
                start,
                per_pass_copy,
                0,
            );
        }
    }
    Ok(Measured {
        t_timed,
        t_end,
        at_timed,
        end: tally.stats,
        description: format!(
            "oracle: Belady on the realized trace, copies back to back at {:.2} GB/s, no latency (a lower bound)",
            cfg.h2d_bytes_per_s / 1e9
        ),
    })
}

fn compute_f(compute: f64, bytes: u64, bw: f64) -> f64 {
    compute.max(bytes as f64 / bw)
}

/// One row of `synapswap bench`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BenchRow {
    /// Preset name.
    pub workload: String,
    /// Policy name.
    pub policy: String,
    /// Passes per second on the virtual clock.
    pub tokens_per_s: f64,
    /// Host-to-device bytes per timed pass.
    pub bytes_h2d_per_pass: f64,
    /// Seconds the caller was blocked per timed pass.
    pub stall_s_per_pass: f64,
    /// `tokens_per_s` over the oracle's.
    pub ratio_to_oracle: f64,
}

/// The presets `synapswap bench` runs: the workloads of issue 3 (`run`, the default `synapswap
/// run` model, is compared against a measured run in BENCHMARKS.md instead).
pub const BENCH_PRESETS: &[&str] = &[
    "llama-7b",
    "llama-7b-prefill",
    "llama-70b",
    "llama-70b-prefill",
    "mixtral-8x7b",
    "mixtral-8x7b-routed",
    "deepseek-v3",
    "deepseek-v3-routed",
    "unet-sdxl",
];

/// Every policy on every named preset, with each preset's own budget, link and passes.
pub fn bench(presets: &[&str]) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    for &name in presets {
        let w = crate::workload::preset(name)
            .ok_or_else(|| Error::Workload(format!("unknown preset '{name}'")))?;
        let mut reports = Vec::new();
        let routed = w.resolve()?.is_routed();
        // Host compute of experts is a policy for routed models only.
        for policy in SimPolicy::ALL
            .into_iter()
            .filter(|&p| routed || p != SimPolicy::HostMoe)
        {
            let cfg = SimulateConfig {
                policy,
                ..SimulateConfig::for_workload(&w)
            };
            reports.push((policy, simulate(&w, &cfg, &mut |_| {})?.report));
        }
        let oracle = reports
            .iter()
            .find(|(p, _)| *p == SimPolicy::Oracle)
            .map(|(_, r)| r.tokens_per_s)
            .unwrap_or(f64::NAN);
        for (policy, r) in reports {
            rows.push(BenchRow {
                workload: name.to_string(),
                policy: policy.name().to_string(),
                tokens_per_s: r.tokens_per_s,
                bytes_h2d_per_pass: r.bytes_h2d as f64 / r.tokens as f64,
                stall_s_per_pass: r.stall_s / r.tokens as f64,
                ratio_to_oracle: r.tokens_per_s / oracle,
            });
        }
    }
    Ok(rows)
}
