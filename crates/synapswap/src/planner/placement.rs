//! Placement of one block: where it goes on the device and the load that puts it there.
//!
//! Under the keep plan ([`Planner::replan`], which lays out the homes) a kept or pinned block goes
//! to its home and a streamed one to the ring's next slot in the streaming zone
//! ([`Planner::place_planned`]). Otherwise, or when that finds nothing, free space
//! ([`Planner::alloc_free`]), else the window the eviction rule ranks best (`eviction.rs`). A
//! demand load that finds no room waits while copies or fenced releases are pending, else fails
//! ([`Planner::out_of_memory`]). The joint placement of a whole step is in `step.rs`.

use super::keep_plan::{self, Candidate, Steps, Use};
use super::{Command, Error, Planner, State};
use crate::block::Policy;
use crate::pool::{granules, Allocation, GRANULE};

/// The keep plan is remade once the declared bytes changed since it reach this fraction of the
/// live bytes ([`Planner::plan_changed`]).
pub(super) const DRIFT_DIVISOR: u64 = 16;
/// The longest run of passes between two reviews of a timed plan ([`Planner::pass_ended`]).
pub(super) const MAX_REVIEW_PASSES: u32 = 64;

/// Ring slots a demand load of a streamed block steps over (blocks in use there) before it falls
/// back to the general rule (see `place_planned`).
const RING_HOPS: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Mode {
    Demand,
    Prefetch { dist: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    Placed,
    /// Space is being written back or loaded; try again after the next completion.
    Wait,
    /// Nothing can make room now.
    Impossible,
}

impl Planner {
    pub(super) fn ensure_plan(&mut self) {
        if self.plan_stale {
            self.replan();
            self.scan = 0;
        }
    }

    /// Declared bytes (uses added, changed or removed, counted by block size) changed since the
    /// plan was made, without changing the steps. The plan in force stays valid (a removed block
    /// left it, see [`Planner::drop_from_plan`]; a new use streams until the next plan), so it is
    /// remade only at a hint, once the changes reach [`DRIFT_DIVISOR`]-th of the live bytes:
    /// an O(n) replan after at least `n / DRIFT_DIVISOR` changes of same-sized blocks is O(1)
    /// amortized per change (a paged KV cache that allocates and frees a page a step does not
    /// replan at every step).
    pub(super) fn plan_changed(&mut self, bytes: u64) {
        self.plan_drift = self.plan_drift.saturating_add(bytes);
    }

    /// A pass of the schedule ended (the hinted position wrapped). Once the plan is timed, it is
    /// reviewed after 1, 2, 4, ... passes, then every [`MAX_REVIEW_PASSES`]: made again from the
    /// current measurements, with the hysteresis of `keep_plan.rs` (it stays unless the best
    /// set is predicted clearly faster). So a plan timed on measurements that were off (a
    /// warm-up, a burst of other load) does not stay for good, and the reviews cost one O(n)
    /// replan per 64 passes in the long run.
    pub(super) fn pass_ended(&mut self) {
        // A plan about to be made anyway (the first timed one, say) needs no review.
        if !self.plan_timed || self.plan_stale {
            return;
        }
        self.passes_since_plan = self.passes_since_plan.saturating_add(1);
        if self.passes_since_plan >= self.review_every {
            self.review_every = (self.review_every * 2).min(MAX_REVIEW_PASSES);
            self.plan_stale = true;
        }
    }

    /// At a hint: marks the plan stale once the changes since it reach the threshold.
    pub(super) fn replan_if_drifted(&mut self) {
        if self.plan_drift > 0 && self.plan_drift.saturating_mul(DRIFT_DIVISOR) >= self.host_bytes {
            self.plan_stale = true;
        }
    }

    /// A block leaves the plan in force: it is no longer kept, and its home is free room (the
    /// ring and the other homes stay where they are). O(1).
    pub(super) fn drop_from_plan(&mut self, index: u32, size: u64) {
        let i = index as usize;
        if self.keep.get(i).copied().unwrap_or(false) {
            self.keep[i] = false;
            self.kept_blocks -= 1;
            self.kept_bytes -= granules(size) * GRANULE;
        }
        if let Some(h) = self.home.get_mut(i) {
            *h = None;
        }
    }

    /// The keep plan: which declared blocks should stay resident for good, chosen by
    /// [`keep_plan::plan`] (a pure function: what it decides and why, its hysteresis and its
    /// cost are in `keep_plan.rs`); this gathers its inputs and lays out the homes.
    ///
    /// The plan only ranks: kept blocks go after every streamed block as victims (after priority
    /// and `Volatile`), and prefetching never evicts one; a demand load still can, so an access
    /// pattern the plan got wrong costs bytes, never correctness.
    pub(super) fn replan(&mut self) {
        self.plan_stale = false;
        self.plan_drift = 0;
        self.passes_since_plan = 0;
        self.n.replans += 1;
        self.sync_schedule();
        let n = self.slots.len();
        self.keep = vec![false; n];
        self.home = vec![None; n];
        self.planned = false;
        self.kept_blocks = 0;
        self.kept_bytes = 0;
        let rounded = |size: u64| granules(size) * GRANULE;
        // Pinned blocks never leave, so they get homes packed from offset 0 with or without a
        // plan: pinned blocks scattered over the arena would split the room every step needs.
        let mut at = 0;
        for i in 0..n {
            if let Some(b) = &self.slots[i].block {
                if b.spec.policy == Policy::Pinned {
                    self.home[i] = Some(at);
                    at += rounded(b.spec.size);
                }
            }
        }
        self.zone_start = at;
        self.ring = at;
        let len = self.schedule.len() as usize;
        // Without prefetching there is no pipeline to lay out: demand paging by farthest next
        // use (MIN) is the whole policy.
        if len == 0 || !self.cfg.prefetch {
            return;
        }
        let mut cand_of: Vec<Option<u32>> = vec![None; n];
        let mut cands: Vec<Candidate> = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(b) = &slot.block else { continue };
            if b.spec.policy != Policy::Auto {
                continue;
            }
            // Expected uses per cycle: a routed use at what its uses taught (`popularity.rs`).
            let uses = self.schedule.learned_uses(i as u32);
            if uses > 0.0 {
                cand_of[i] = Some(cands.len() as u32);
                cands.push(Candidate {
                    index: i as u32,
                    uses,
                    size: rounded(b.spec.size),
                    priority: b.spec.priority,
                    first: self.schedule.positions[i].first().copied().unwrap_or(0),
                });
            }
        }
        if cands.is_empty() {
            return;
        }
        let mut steps = Steps::with_capacity(len, self.schedule.total_uses());
        for p in 0..len {
            steps.push_step(
                self.schedule.uses[p]
                    .iter()
                    .zip(&self.schedule.probs[p])
                    .filter(|(&i, _)| self.b(i).spec.policy != Policy::Pinned)
                    .map(|(&i, &prob)| Use {
                        cand: cand_of[i as usize],
                        size: rounded(self.b(i).spec.size),
                        prob: if prob >= 1.0 {
                            1.0
                        } else {
                            self.schedule.learned_p(i, p).unwrap_or(prob)
                        },
                    }),
            );
        }
        let compute: Vec<f64> = (self.schedule.ema_compute.iter())
            .map(|c| c.unwrap_or(0.0))
            .collect();
        let inputs = keep_plan::Inputs {
            candidates: &cands,
            steps: &steps,
            room: self.budget().saturating_sub(self.pinned_bytes),
            timing: (self.plan_timed && self.bw.bytes_per_s() > 0.0).then_some(keep_plan::Timing {
                compute_s: &compute,
                bytes_per_s: self.bw.bytes_per_s(),
            }),
        };
        let plan = keep_plan::plan(&inputs, self.keep_plan.as_ref());
        // Homes: pinned blocks (above), then kept ones in plan order, packed from offset 0. Plan
        // order keeps homes stable when a larger reserve drops the tail of the kept list.
        let mut at = self.zone_start;
        for &i in &plan.keep {
            self.keep[i as usize] = true;
            self.home[i as usize] = Some(at);
            at += rounded(self.b(i).spec.size);
        }
        self.kept_blocks = plan.keep.len() as u64;
        self.kept_bytes = at - self.zone_start;
        self.zone_start = at;
        self.ring = at;
        self.planned = !plan.keep.is_empty();
        self.keep_plan = Some(plan);
    }

    pub(super) fn start_load(&mut self, index: u32, alloc: Allocation, demand: bool) {
        let id = self.id_of(index);
        let b = self.b_mut(index);
        b.state = State::Loading { alloc, demand };
        // A fresh copy of the host bytes: nothing newer on the device until it is written.
        b.dirty = false;
        b.prefetched_unused = !demand;
        let size = b.spec.size;
        self.in_flight += 1;
        if demand {
            self.n.demand_loads += 1;
        } else {
            self.pipeline_bytes += size;
            self.loading_bytes += size;
            self.n.prefetch.issued += 1;
        }
        self.commands.push_back(Command::Load {
            block: id,
            offset: alloc.offset,
            size,
            demand,
        });
    }

    /// Allocates free space. With a keep plan in force, kept blocks pack from the bottom and
    /// streamed ones from the top, so the streaming zone stays one contiguous run above the kept
    /// set. Without one, blocks under 1/64 of the pool go at the top, the rest best-fit.
    pub(super) fn alloc_free(&mut self, size: u64, index: u32) -> Option<Allocation> {
        if self.planned {
            return if self.kept(index) {
                self.pool.alloc_low(size, index)
            } else {
                self.pool.alloc_high(size, index)
            };
        }
        if size <= self.pool.capacity() / 64 {
            self.pool.alloc_high(size, index)
        } else {
            self.pool.alloc(size, index)
        }
    }

    /// The regions overlapping `[at, at + size)` can be cleared for `mode`: returns the victims,
    /// or the first region's block that cannot be evicted.
    pub(super) fn clear_range(
        &self,
        at: u64,
        size: u64,
        mode: Mode,
    ) -> std::result::Result<Vec<u32>, u32> {
        let mut victims = Vec::new();
        for r in self.pool.regions_in(at, size) {
            if let Some(i) = r.tag {
                if self.evictable(i, mode).is_none() && !self.misplaced_evictable(i, mode) {
                    return Err(i);
                }
                victims.push(i);
            }
        }
        Ok(victims)
    }

    /// A kept or pinned block resident away from its home (placed before the current plan, or
    /// where its home was held) may be evicted by a planned placement, under the same conditions
    /// as any other block; it comes back at its home. Without this the layout would never heal
    /// after a replan.
    pub(super) fn misplaced_evictable(&self, index: u32, mode: Mode) -> bool {
        let b = self.b(index);
        let State::Resident { alloc } = b.state else {
            return false;
        };
        let Some(home) = self.home.get(index as usize).copied().flatten() else {
            return false;
        };
        if home == alloc.offset || (!self.kept(index) && b.spec.policy != Policy::Pinned) {
            return false;
        }
        if b.is_held() || b.waiters > 0 || b.protected || b.writeback_failed {
            return false;
        }
        match mode {
            Mode::Demand => true,
            Mode::Prefetch { dist } => self.distance(index) > dist,
        }
    }

    /// Whether a block that blocks a placement will stay where it is (a resident pinned block,
    /// or a kept one at its home): waiting for it would wait forever.
    pub(super) fn is_settled(&self, index: u32) -> bool {
        let b = self.b(index);
        let State::Resident { alloc } = b.state else {
            return false;
        };
        let home = self.home.get(index as usize).copied().flatten();
        let at_home = home == Some(alloc.offset);
        (b.spec.policy == Policy::Pinned && (at_home || home.is_none()))
            || (self.kept(index) && at_home)
    }

    /// Whether the keep plan places this block (a home, or the ring is big enough for it).
    pub(super) fn placed_by_plan(&self, index: u32) -> bool {
        self.home.get(index as usize).copied().flatten().is_some()
            || self.zone_start + granules(self.b(index).spec.size) * GRANULE <= self.budget()
    }

    /// Bytes of the streamed blocks of step position `p` from its `j`-th use on that still need
    /// a load: the run they take in the ring (0 without a keep plan).
    pub(super) fn streamed_from(&self, p: usize, j: usize) -> u64 {
        if !self.planned {
            return 0;
        }
        (j..self.schedule.uses[p].len())
            .filter(|&k| self.loads_ahead(p, k))
            .map(|k| self.schedule.uses[p][k])
            .filter(|&i| {
                self.b(i).state == State::Host
                    && self.home.get(i as usize).copied().flatten().is_none()
            })
            .map(|i| granules(self.b(i).spec.size) * GRANULE)
            .sum()
    }

    /// Placement under the keep plan: a kept or pinned block at its home, a streamed one at the
    /// ring's next offset in the streaming zone (wrapping to the zone's start), evicting what is
    /// there. Streamed blocks are placed in deadline order, so the ring always overwrites the
    /// oldest placement: the block used longest ago. `group` is the bytes of the streamed blocks
    /// of the block's step from this one on: the ring wraps before the first of them when they
    /// would not all fit above it, so a step's streamed blocks lie end to end and never straddle
    /// the wrap. Pinned blocks have homes with or without a plan. `None`: fall back to the
    /// general rule.
    pub(super) fn place_planned(
        &mut self,
        index: u32,
        mode: Mode,
        group: u64,
    ) -> Option<Placement> {
        let size = granules(self.b(index).spec.size) * GRANULE;
        let cap = self.budget();
        let home = self.home.get(index as usize).copied().flatten();
        let run = if self.zone_start + group <= cap {
            group.max(size)
        } else {
            size
        };
        let mut at = match home {
            Some(h) => h,
            None if !self.planned || self.zone_start + size > cap => return None,
            None if self.ring >= self.zone_start && self.ring + run <= cap => self.ring,
            None => self.zone_start,
        };
        if mode == Mode::Demand && home.is_none() {
            if let Some(p) = self.place_below_ring(index, at, size) {
                return Some(p);
            }
        }
        let mut hops = 0;
        let victims = loop {
            match self.clear_range(at, size, mode) {
                Ok(v) => break v,
                // A demand load of a streamed block steps over a block in use in the ring (the
                // running step's, one a caller holds) to the slot after it, a few times, and
                // waits for one in transfer: the ring order holds and the search stays
                // O(log regions), where the general rule walks the whole pool.
                Err(barrier) if mode == Mode::Demand && home.is_none() && hops < RING_HOPS => {
                    let alloc = match self.b(barrier).state {
                        State::Resident { alloc } => alloc,
                        // The ring's copies in flight: the slot is free again once they land
                        // (a small ring is all in flight). Wait for them, as the step placement
                        // does, rather than walk the pool and evict a kept block.
                        State::Loading { .. } | State::WritingBack { .. } => {
                            return Some(Placement::Wait);
                        }
                        State::Host => return None,
                    };
                    let next = alloc.offset + alloc.size;
                    at = if next + size <= cap {
                        next
                    } else {
                        self.zone_start
                    };
                    hops += 1;
                }
                // Something there is still in use: a prefetch waits for it (the pipeline is
                // full). A demand load, or a block that will never leave (placed before this
                // plan), takes any room the general rule finds.
                Err(barrier) => {
                    let wait = mode != Mode::Demand && !self.is_settled(barrier);
                    if wait {
                        self.blocker = Some(barrier);
                    }
                    return wait.then_some(Placement::Wait);
                }
            }
        };
        for v in victims {
            self.evict(v);
        }
        // Room still being written back: wait for it here. Falling back to the general rule
        // after evicting would scatter the block (and the step) across the arena.
        let Some(alloc) = self.pool.alloc_at(at, size, index) else {
            return Some(Placement::Wait);
        };
        if home.is_none() {
            self.ring = at + size;
        }
        self.start_load(index, alloc, mode == Mode::Demand);
        Some(Placement::Placed)
    }

    /// A demand load of a streamed block when the ring's next slot (`at`) holds a prefetch not
    /// yet used: the ring is full of copies due soon, the soonest at `at`. Loading there would
    /// evict the block needed next and move the ring on, so that the prefetch walk reloads it one
    /// slot further, evicting the next one, and so on round the ring (measured on the scale bench:
    /// 184 wasted prefetches per out-of-order miss, `benches/scale.rs`). Instead the block takes
    /// the slot just below the ring's next offset (the newest prefetch, due last: the victim
    /// Belady's rule picks among the ring) and the ring stays where it is; the prefetch evicted
    /// is reloaded when its turn comes. `None`: the usual ring placement applies.
    fn place_below_ring(&mut self, index: u32, at: u64, size: u64) -> Option<Placement> {
        let pending = |v: &[u32]| v.iter().any(|&i| self.b(i).prefetched_unused);
        if !self
            .clear_range(at, size, Mode::Demand)
            .is_ok_and(|v| pending(&v))
        {
            return None;
        }
        // Just below the ring's next offset, or, with the ring at the zone's start (it wrapped),
        // at the top of the pool.
        let below = if self.ring >= self.zone_start + size {
            self.ring - size
        } else {
            self.budget().checked_sub(size)?
        };
        if below < self.zone_start || below == at {
            return None;
        }
        let victims = self.clear_range(below, size, Mode::Demand).ok()?;
        for v in victims {
            self.evict(v);
        }
        let alloc = self.pool.alloc_at(below, size, index)?;
        self.start_load(index, alloc, true);
        Some(Placement::Placed)
    }

    pub(super) fn place(&mut self, index: u32, mode: Mode, group: u64) -> Placement {
        if self.planned || self.home.get(index as usize).copied().flatten().is_some() {
            if let Some(p) = self.place_planned(index, mode, group) {
                return p;
            }
        }
        let size = self.b(index).spec.size;
        let demand = mode == Mode::Demand;
        if let Some(alloc) = self.alloc_free(size, index) {
            self.start_load(index, alloc, demand);
            return Placement::Placed;
        }
        self.n.pool_walks += 1;
        match self.find_window(size, mode) {
            Some((at, victims)) => {
                for v in victims {
                    self.evict(v);
                }
                // Put the block where room was made, so the space it frees elsewhere is not
                // split into holes.
                match self.pool.alloc_containing(at, size, index) {
                    Some(alloc) => {
                        self.start_load(index, alloc, demand);
                        Placement::Placed
                    }
                    None => Placement::Wait,
                }
            }
            None if demand && (self.in_flight > 0 || self.deferred_releases.any()) => {
                Placement::Wait
            }
            None => Placement::Impossible,
        }
    }

    pub(super) fn out_of_memory(&self, index: u32) -> Error {
        // A step whose blocks cannot fit together, whatever is evicted: the budget is at fault.
        if self.b(index).protected {
            let step: u64 = self
                .protected
                .iter()
                .filter(|&&i| self.b(i).spec.policy != Policy::Pinned)
                .map(|&i| granules(self.b(i).spec.size) * GRANULE)
                .sum();
            if step + self.pinned_bytes > self.budget() {
                let (minimum, step) = self.step_minimum();
                return Error::BudgetTooSmall {
                    budget: self.budget(),
                    minimum,
                    step,
                };
            }
        }
        let mut held = 0;
        for slot in &self.slots {
            if let Some(b) = &slot.block {
                if let State::Resident { alloc } = b.state {
                    if b.is_held() || b.waiters > 0 || b.protected {
                        held += alloc.size;
                    }
                }
            }
        }
        Error::OutOfDeviceMemory {
            needed: self.b(index).spec.size,
            budget: self.budget(),
            held,
            pinned: self.pinned_bytes,
        }
    }
}
