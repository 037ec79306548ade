//! The planner: every decision about what is on the device, and nothing else.
//!
//! It is a sans-IO state machine: no threads, no clock, no memory of its own. Events go in
//! ([`Planner::hint`], [`Planner::acquire`], [`Planner::transfer_done`], ...; the time is passed in
//! as seconds), [`Command`]s come out of [`Planner::poll_command`]. The runtime executes them with
//! real copies; a simulator can execute them against a virtual clock, and both get the same
//! decisions.
//!
//! # The rules, and where each lives
//! - **The block table** (`blocks.rs`): each block's state (host, loading, resident, writing
//!   back) and flags, its slot and generation (a removed block's handle goes stale), and its
//!   holds: a held block stays where it is. Holds are counted in one place ("Holds" there).
//! - **The schedule and next-use index** (`schedule.rs`): the declared cyclic schedule, the steps
//!   to each block's next use (one with probability `p` per pass counts `(1 - p) / p` cycles
//!   farther), and the smoothed step durations, summed to any step in O(log steps).
//! - **The keep plan** (`keep_plan.rs`, a pure function; `Planner::replan` in `placement.rs`
//!   gathers its inputs and lays out the homes): which blocks stay resident for good, at homes
//!   packed from offset 0 after the pinned ones, and the streaming zone above them, which the
//!   streamed blocks use as a ring.
//! - **Placement** (`placement.rs`): a block goes to its home or ring slot under the plan, else
//!   to free space, else to the window the eviction rule picks; a demand load that finds no room
//!   waits while copies or fenced releases are pending, else fails.
//! - **The eviction rule** (`eviction.rs`, all of it in `Planner::find_window`): the window of
//!   adjacent regions whose most valuable victim is least valuable. Victims rank `Volatile` and
//!   used first, then lower priority, then farther next use (Belady/MIN); a block held, waited
//!   for, in transfer, `Pinned` or used by the current step is never one.
//! - **Joint step placement** (`step.rs`; the layout, a pure function, in `layout.rs`): at a
//!   hint, the step's blocks not on the device are placed together before any of them is held,
//!   so whenever every step's blocks fit in the budget together ([`Planner::min_budget`]) the
//!   schedule runs with no `OutOfDeviceMemory`.
//! - **Prefetch admission** (`prefetch.rs`): the schedule is walked in deadline order within a
//!   lookahead horizon (a time: widened by a wait the idle link could have hidden, narrowed by a
//!   prefetch evicted unused); a prefetch never evicts a block needed no later than itself, and
//!   the walk stops at the first block it cannot admit.
//! - **Routing hints** (`choice.rs`): a router's output or a guess for a routed step's coming
//!   occurrence: its candidates load ahead like certain uses, and rank for eviction by it.
//! - **Learned popularity** (`popularity.rs`): how often each routed candidate is really used,
//!   long-run (for the keep plan) and recent (for eviction).
//! - **Uses and completions** (`uses.rs`): acquire, waits, the end of a hint's protection, and the
//!   driver's reports of finished copies (which feed the bandwidth estimate).
//! - **The counters** (`counters.rs`): what [`Planner::stats`] reports.
//!
//! # What each operation costs
//! With `n` blocks, `r` pool regions (at most about twice the resident blocks), `s` steps and `u`
//! declared uses (measured from 1e2 to 1e6 blocks: `benches/scale.rs`, BENCHMARKS.md "Scaling"):
//! - `acquire` of a resident block (a hit), `unhold`, `release`: O(log uses of the block) (its
//!   next use, for the hit statistics), plus a pump when the use freed pipeline room.
//! - a pump (after every event that can free room): the pending demand loads, then the prefetch
//!   walk from its cursor (`prefetch.rs`): O(blocks it issues or looks at again), O(log s) each.
//! - placing one block under the keep plan (its home or ring slot, a prefetch or a miss):
//!   O(log r) to find the range (the pool is indexed by offset) plus O(victims); a demand load
//!   steps over up to 4 ring slots in use, and one out of schedule order, with the ring full of
//!   prefetches, takes the newest one's slot (at most one wasted copy, `place_below_ring`). Only without a keep plan (no schedule, prefetch off,
//!   or a block the plan cannot place) does a placement walk the pool: `find_window`, O(r x
//!   window); `Stats` does not count these, `Counters::pool_walks` does.
//! - `hint`: O(step blocks) when the step is on the device or loading; otherwise the joint step
//!   placement: O(step blocks x (log r + regions in their ranges)) when the blocks take their
//!   homes and ring slots (the fast path), else a map of the pool, O(r), plus the layout's cost
//!   (`step.rs`; `Counters::step_maps` counts these).
//! - `transfer_done`, `writeback_done`, an eviction: O(log r) (pool free) plus a pump.
//! - `declare` into a step that exists, or of a new probability: the index is edited in place,
//!   O(step blocks + uses of the block). A new step: the index is rebuilt at the next event,
//!   O(u log u), and the keep plan remade.
//! - A replan, O(n log n + 97 (n + u + s)) (`keep_plan.rs`: linear in the schedule), happens when
//!   the steps change, a pinned block comes or goes, the plan is first timed, at a review after
//!   1, 2, 4, ... then every 64 passes (`Planner::pass_ended`), and at a hint once the declared
//!   bytes changed since the plan reach 1/16 of the live bytes (`Planner::plan_changed`): O(1)
//!   amortized per `declare` or `remove_block` of same-sized blocks, not O(n) each.
//! - `add_block`: O(1) amortized (a pinned block makes the plan stale); `remove_block`: O(its
//!   uses x step size), and no replan of its own unless the block was pinned: its bytes count
//!   toward the drift above (a step left empty stays in the index until the next rebuild).

use std::collections::VecDeque;

use crate::block::{BlockId, BlockSpec, Policy, MAX_PRIORITY};
use crate::pool::{granules, Pool, GRANULE};
use crate::{Error, Result};
use blocks::{DeferredReleases, Slot, State};
use counters::Counters;
use eviction::Keep;
use keep_plan::KeepPlan;
use placement::{Mode, Placement};
use prefetch::{MAX_LOOKAHEAD_S, MIN_LOOKAHEAD_S, SATURATED_DECAY};
use schedule::{Schedule, EMA_ALPHA};

mod blocks;
mod choice;
mod counters;
mod eviction;
mod keep_plan;
mod layout;
mod placement;
mod popularity;
mod prefetch;
mod schedule;
mod step;
mod uses;

/// Planner settings.
#[derive(Debug, Clone)]
pub struct PlannerConfig {
    /// Device pool size in bytes.
    pub budget: u64,
    /// Whether to load ahead of use at all (off: demand loads only).
    pub prefetch: bool,
    /// Initial lookahead horizon in seconds.
    pub lookahead_s: f64,
}

impl PlannerConfig {
    /// Prefetch on, 5 ms initial horizon.
    pub fn new(budget: u64) -> PlannerConfig {
        PlannerConfig {
            budget,
            prefetch: true,
            lookahead_s: 0.005,
        }
    }
}

/// What the planner asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // variant fields are named for what they hold
pub enum Command {
    /// Copy the block's host bytes to `offset` in the device arena; report with
    /// [`Planner::transfer_done`].
    Load {
        block: BlockId,
        offset: u64,
        size: u64,
        /// A caller is waiting: copy before any prefetch.
        demand: bool,
    },
    /// A queued prefetch of `block` is now waited for: move it ahead of other prefetches.
    Expedite { block: BlockId },
    /// Copy the device bytes at `offset` back to the host copy; report with
    /// [`Planner::writeback_done`]. The region stays allocated until then.
    WriteBack {
        block: BlockId,
        offset: u64,
        size: u64,
    },
    /// The block left the device; no copy is needed (its host copy is current).
    Evict { block: BlockId },
}

/// The answer to [`Planner::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// On the device at this arena offset; the block is now held.
    Ready(u64),
    /// On its way: wait for an event, then call [`Planner::poll_waiter`].
    Pending,
}

/// The planner. See the module docs.
#[derive(Debug, Clone)]
pub struct Planner {
    cfg: PlannerConfig,
    pool: Pool,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    schedule: Schedule,
    pos: usize,
    /// The step number of the last hint (positions change when the schedule is re-declared).
    last_step: Option<u64>,
    hinted: bool,
    epoch: u64,
    tick: u64,
    protected: Vec<u32>,
    pending_demands: VecDeque<u32>,
    commands: VecDeque<Command>,
    in_flight: u32,
    /// Holds whose stream-ordered release is waiting for its fence: room that will come back.
    deferred_releases: DeferredReleases,
    step_idle_s: f64,
    prev_step_idle_s: f64,
    step_stall_s: f64,
    last_hint: Option<(usize, f64)>,
    lookahead_s: f64,
    /// The link's measured rate over recent copies.
    bw: crate::rate::Rate,
    /// Bytes loading or loaded by prefetch and not used yet.
    pipeline_bytes: u64,
    /// Bytes of prefetches still being copied.
    loading_bytes: u64,
    /// The last prefetch walk stopped because a block found no room.
    space_blocked: bool,
    /// The block in the way when it stopped at a ring slot or home (held, protected, in
    /// transfer, or needed sooner), if known: only its release can let the walk on, so other
    /// releases (every hit's) need not walk again.
    blocker: Option<u32>,
    /// The prefetch walk's resumable cursor: every certain use in the `scan` steps from `pos`
    /// is on the device, in transfer, or not to be prefetched. Lowered by [`Planner::touch`]
    /// when a block there goes back to the host, moved on by hints, reset by replans.
    scan: usize,
    /// Some block the current hint protects is not on the device yet: the joint step placement
    /// runs at every pump until it is (see the module docs).
    step_pending: bool,
    /// Offsets the joint step placement chose for blocks it could not load yet (room still being
    /// written back or loaded). Non-empty only while `step_pending`.
    reserved: Vec<(u32, u64)>,
    pinned_bytes: u64,
    host_bytes: u64,
    live_blocks: u64,
    resident_blocks: u64,
    /// The keep plan, by block index (see [`Planner::replan`]).
    keep: Vec<bool>,
    /// Fixed offsets of kept and pinned blocks, packed from 0, by block index.
    home: Vec<Option<u64>>,
    /// Start of the streaming zone (above every home) and the ring's next offset in it.
    zone_start: u64,
    ring: u64,
    plan_stale: bool,
    /// Declared bytes changed since the plan was made (see [`Planner::plan_changed`]).
    plan_drift: u64,
    /// Passes since the plan was made, and after how many it is reviewed (see
    /// [`Planner::pass_ended`]).
    passes_since_plan: u32,
    review_every: u32,
    /// Whether the plan has been sized from measured step times.
    plan_timed: bool,
    /// Whether any block is kept (the plan is in force).
    planned: bool,
    /// How many blocks, and their rounded bytes (for [`crate::Stats`]).
    kept_blocks: u64,
    kept_bytes: u64,
    /// The last plan made (the previous plan of the next replan).
    keep_plan: Option<KeepPlan>,
    /// Routing hints in force (`choice.rs`).
    choices: Vec<choice::ChoiceHint>,
    /// The position of a hinted guess that waited for an idle link, if any (`prefetch.rs`).
    waiting_guess: Option<usize>,
    n: Counters,
}

impl Planner {
    /// A planner for a pool of `cfg.budget` bytes.
    pub fn new(cfg: PlannerConfig) -> Result<Planner> {
        if cfg.budget < GRANULE {
            return Err(Error::InvalidBudget(cfg.budget));
        }
        let lookahead_s = cfg.lookahead_s.clamp(MIN_LOOKAHEAD_S, MAX_LOOKAHEAD_S);
        Ok(Planner {
            pool: Pool::new(cfg.budget),
            cfg,
            slots: Vec::new(),
            free_slots: Vec::new(),
            schedule: Schedule::default(),
            pos: 0,
            last_step: None,
            hinted: false,
            epoch: 0,
            tick: 0,
            protected: Vec::new(),
            pending_demands: VecDeque::new(),
            commands: VecDeque::new(),
            in_flight: 0,
            deferred_releases: DeferredReleases::default(),
            step_idle_s: 0.0,
            prev_step_idle_s: 0.0,
            step_stall_s: 0.0,
            last_hint: None,
            lookahead_s,
            bw: crate::rate::Rate::default(),
            pipeline_bytes: 0,
            loading_bytes: 0,
            space_blocked: false,
            blocker: None,
            scan: 0,
            step_pending: false,
            reserved: Vec::new(),
            pinned_bytes: 0,
            host_bytes: 0,
            live_blocks: 0,
            resident_blocks: 0,
            keep: Vec::new(),
            home: Vec::new(),
            zone_start: 0,
            ring: 0,
            plan_stale: false,
            plan_drift: 0,
            passes_since_plan: 0,
            review_every: 1,
            plan_timed: false,
            planned: false,
            kept_blocks: 0,
            kept_bytes: 0,
            keep_plan: None,
            choices: Vec::new(),
            waiting_guess: None,
            n: Counters::default(),
        })
    }

    /// The device budget in bytes.
    pub fn budget(&self) -> u64 {
        self.pool.capacity()
    }

    /// The pool (read-only), for reports and tests.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Checks a spec against the budget without adding it.
    pub fn validate(&self, spec: &BlockSpec) -> Result<()> {
        if spec.size == 0 {
            return Err(Error::ZeroSize);
        }
        if spec.priority > MAX_PRIORITY {
            return Err(Error::InvalidPriority(spec.priority));
        }
        let rounded = granules(spec.size).saturating_mul(GRANULE);
        if rounded > self.budget() {
            return Err(Error::BlockTooLarge {
                size: spec.size,
                budget: self.budget(),
            });
        }
        if spec.policy == Policy::Pinned && self.pinned_bytes + rounded > self.budget() {
            return Err(Error::PinnedOverBudget {
                total: self.pinned_bytes + rounded,
                budget: self.budget(),
            });
        }
        Ok(())
    }

    /// Execution is at `step`: its blocks are protected until the next hint or their release.
    pub fn hint(&mut self, step: u64, now: f64) {
        self.sync_schedule();
        self.replan_if_drifted();
        self.ensure_plan();
        if let Some((prev, t)) = self.last_hint {
            let dur = (now - t).max(0.0);
            let ema = |d: &mut Option<f64>, x: f64| {
                *d = Some(match *d {
                    None => x,
                    Some(old) => EMA_ALPHA * x + (1.0 - EMA_ALPHA) * old,
                });
            };
            self.schedule.measure_duration(prev, dur);
            if let Some(c) = self.schedule.ema_compute.get_mut(prev) {
                self.schedule.measured += usize::from(c.is_none());
                ema(c, (dur - self.step_stall_s).max(0.0));
            }
            // Once every step's work and the link's bandwidth are measured, size the streaming
            // reserve from them (once per declared schedule).
            if !self.plan_timed
                && self.bw.bytes_per_s() > 0.0
                && self.schedule.measured == self.schedule.ema_compute.len()
            {
                self.plan_timed = true;
                self.plan_stale = true;
                self.review_every = 1;
            }
        }
        for i in std::mem::take(&mut self.protected) {
            if let Some(b) = self.slots[i as usize].block.as_mut() {
                b.protected = false;
            }
        }
        // Whether the step that now ends really ran: a hint of a step that is not declared
        // (mapped to the next declared one) ran none of that one's uses.
        let ran = self.hinted
            && self.schedule.len() > 0
            && self.last_step == self.schedule.steps.get(self.pos).copied();
        if ran {
            // The step ends: what its routed candidates' uses teach (`popularity.rs`).
            self.learn_step(self.pos);
        }
        if self.hinted {
            let idle = self.step_idle_s > 0.0 || self.in_flight == 0;
            if self.step_stall_s > 0.0 && (idle || self.prev_step_idle_s > 0.0) {
                // A caller blocked while the copy engine had been idle: prefetch started too late.
                self.widen();
            } else if !idle {
                // The copy engine never ran dry during the step: a deeper pipeline would not have
                // helped, and it costs resident bytes. Let the horizon decay.
                self.lookahead_s = (self.lookahead_s * SATURATED_DECAY).max(MIN_LOOKAHEAD_S);
            }
        }
        self.prev_step_idle_s = self.step_idle_s;
        self.step_idle_s = 0.0;
        self.step_stall_s = 0.0;
        self.epoch += 1;
        self.tick += 1;
        self.hinted = true;
        if self.schedule.len() > 0 {
            let (old, len) = (self.pos, self.schedule.len() as usize);
            self.pos = self.schedule.position_of(step);
            if self.pos < old || len == 1 {
                self.pass_ended();
            }
            // The walk's done range starts at the new position; a step hinted again is looked at
            // afresh (the uses it skipped as "used this step" belong to the old epoch).
            let moved = (self.pos + len - old) % len;
            self.lapse_choices(old, moved, len, ran);
            self.scan = if moved == 0 {
                0
            } else {
                self.scan.saturating_sub(moved)
            };
            self.last_step = Some(step);
            self.last_hint = Some((self.pos, now));
            if self.schedule.steps[self.pos] == step {
                for j in 0..self.schedule.uses[self.pos].len() {
                    if self.schedule.is_certain(self.pos, j) {
                        let i = self.schedule.uses[self.pos][j];
                        self.b_mut(i).protected = true;
                        self.protected.push(i);
                    }
                }
            }
        }
        // The step's blocks are placed together, before any of them is held.
        self.reserved.clear();
        self.step_pending = !self.protected.is_empty();
        self.pump();
    }

    /// Next command for the driver.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Issues whatever can be issued now: pending demand loads first, then prefetches.
    fn pump(&mut self) {
        self.sync_schedule();
        self.ensure_plan();
        if self.step_pending {
            match self.place_step() {
                Placement::Placed => self.step_pending = false,
                Placement::Wait => {}
                // The demand path reports the error to whoever waits.
                Placement::Impossible => {
                    self.step_pending = false;
                    self.reserved.clear();
                }
            }
        }
        let mut still = VecDeque::new();
        while let Some(i) = self.pending_demands.pop_front() {
            let b = self.b(i);
            if b.waiters == 0 {
                self.b_mut(i).pending_demand = false;
                continue;
            }
            match b.state {
                // The joint step placement has it in hand.
                State::Host if self.step_pending && b.protected => {
                    still.push_back(i);
                    continue;
                }
                State::Host => {}
                State::WritingBack { .. } => {
                    still.push_back(i);
                    continue;
                }
                State::Loading { .. } | State::Resident { .. } => {
                    self.b_mut(i).pending_demand = false;
                    continue;
                }
            }
            match self.place(i, Mode::Demand, 0) {
                Placement::Placed => self.b_mut(i).pending_demand = false,
                Placement::Wait => still.push_back(i),
                Placement::Impossible => {
                    let err = self.out_of_memory(i);
                    let b = self.b_mut(i);
                    b.pending_demand = false;
                    b.error = Some(err);
                    b.error_waiters = b.waiters;
                }
            }
        }
        self.pending_demands = still;
        if self.cfg.prefetch && self.pending_demands.is_empty() && !self.step_pending {
            self.prefetch();
        }
    }
}

#[cfg(test)]
mod choice_tests;
#[cfg(test)]
mod incremental_tests;
#[cfg(test)]
mod popularity_tests;
#[cfg(test)]
mod ring_tests;
#[cfg(test)]
mod tests;
