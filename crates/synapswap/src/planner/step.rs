//! Joint step placement: the blocks a hint protects are placed together, before any of them is
//! held, so fragmentation never refuses a step that fits the budget.
//!
//! # Joint step placement (in `Planner::place_step`; the layout, a pure function, in `layout.rs`)
//! The rule it holds: whenever every step's blocks fit in the budget together (their
//! granule-rounded sizes plus every pinned block: [`Planner::min_budget`]), the schedule runs at
//! every such budget with no `OutOfDeviceMemory`. Fragmentation is the planner's problem, not the
//! caller's. Placing a step's blocks one at a time, as they are waited for, cannot hold it: the
//! first ones are held by the time the last is placed, and wherever they went may split the room
//! it needs (an 8 KiB norm in the middle of the pool, beside a 250 MiB `lm_head`).
//!
//! So at `hint(step)`, and at every event after it until it is done, the blocks the hint protects
//! that are not on the device are placed together, before any of them is held:
//! 1. The pool is mapped into free space, blocks that can be cleared (what a demand load may
//!    evict, kept or pinned blocks away from their homes, and blocks in transfer, which are waited
//!    for), and barriers (held, pinned at home, failed write-backs, the step's placed blocks).
//! 2. The blocks are laid out largest first. Each takes its home or ring slot under the keep plan
//!    (a step's streamed blocks take consecutive ring slots), else free space, else the window
//!    the eviction rule ranks best, unless that leaves the rest without room (checked by
//!    first-fit decreasing into the gaps between barriers); then the next best that does not.
//! 3. If no layout exists with the step's placed blocks where they are, those not held may move
//!    (each prefers its current offset). A move is an eviction and a reload: its bytes cross the
//!    link again. There is no device-to-device copy.
//! 4. The offsets are reserved; each block loads (a prefetch until someone waits for it) as soon
//!    as its range is clear, after the write-backs and copies in flight there. Until the step is
//!    placed, prefetching waits, and so do demand loads of the step's blocks.
//!
//! If no layout exists, the planner waits while copies or fenced (stream-ordered) releases are
//! pending: that time is the caller's stall, never an error. Otherwise the waiter's demand load
//! fails: with `BudgetTooSmall` (naming [`Planner::min_budget`]) when the step cannot fit the
//! budget at all, else with `OutOfDeviceMemory` (blocks the caller holds take the room).
//!
//! Why it holds: once the caller has released the previous step, the only barriers are pinned
//! blocks, packed at their homes from offset 0, so the gap above them is at least the step's
//! footprint, and first-fit decreasing packs the step into it.
//!
//! Cost: O(step blocks) per hint when the step is already on the device or loading (prefetch
//! kept up). When it is not, but every block to place can take its home or ring slot (the
//! prefetch walk fell behind: the common case), O(step blocks x (log r + regions in their
//! ranges)), with no map of the pool (`Planner::planned_layout`). Otherwise, per block to place,
//! a window search over the pool's regions (as
//! `find_window`) and, per candidate tried, a packing check in O(regions + step blocks x gaps);
//! usually the first candidate passes (bounds in `layout.rs`). A move costs the block's bytes
//! over the link again.

use super::layout::{self, Item, Kind, Span};
use super::{Keep, Mode, Placement, Planner, State};
use crate::block::Policy;
use crate::pool::{granules, GRANULE};

/// A joint step placement: (block, offset) to reserve, and the ring's next offset if the step's
/// streamed blocks took their ring slots.
pub(super) type StepLayout = (Vec<(u32, u64)>, Option<u64>);

/// How far [`Planner::place_reserved`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reserved {
    Done,
    Wait,
    Conflict,
}

impl Planner {
    /// The least budget that runs the declared schedule, and the step that needs it: the most
    /// bytes one step's certain blocks take, plus every pinned block, each granule-rounded (a
    /// pinned block of the step counted once). Any budget of at least this runs the schedule
    /// (see the module docs, "Joint step placement"). O(declared uses).
    pub fn min_budget(&mut self) -> (u64, u64) {
        self.sync_schedule();
        self.step_minimum()
    }

    /// [`Planner::min_budget`] of the schedule as last indexed.
    pub(super) fn step_minimum(&self) -> (u64, u64) {
        let s = &self.schedule;
        let (bytes, step) = (0..s.steps.len())
            .map(|p| {
                let bytes: u64 = (0..s.uses[p].len())
                    .filter(|&j| s.is_certain(p, j))
                    .map(|j| self.b(s.uses[p][j]))
                    .filter(|b| b.spec.policy != Policy::Pinned)
                    .map(|b| granules(b.spec.size) * GRANULE)
                    .sum();
                (bytes, s.steps[p])
            })
            .max_by_key(|&(bytes, step)| (bytes, std::cmp::Reverse(step)))
            .unwrap_or((0, 0));
        (bytes + self.pinned_bytes, step)
    }

    /// The joint step placement (see the module docs): places every block the current hint
    /// protects that is not on the device yet, all at once, before any of them is held.
    pub(super) fn place_step(&mut self) -> Placement {
        if !self.reserved.is_empty() {
            match self.place_reserved() {
                Reserved::Done => {}
                Reserved::Wait => return Placement::Wait,
                Reserved::Conflict => self.reserved.clear(),
            }
        }
        let unplaced = self
            .protected
            .iter()
            .any(|&i| matches!(self.b(i).state, State::Host | State::WritingBack { .. }));
        if !unplaced {
            return Placement::Placed;
        }
        let mut found = None;
        for relocate in [false, true] {
            let (layout, mapped) = self.step_layout(relocate);
            self.n.step_maps += u64::from(mapped);
            if layout.is_some() {
                found = layout;
                break;
            }
        }
        let Some((layout, ring)) = found else {
            return self.wait_or_impossible();
        };
        self.reserved = layout;
        if let Some(ring) = ring {
            self.ring = ring;
        }
        match self.place_reserved() {
            Reserved::Done => Placement::Placed,
            Reserved::Wait => Placement::Wait,
            Reserved::Conflict => {
                self.reserved.clear();
                self.wait_or_impossible()
            }
        }
    }

    /// No room now: wait if transfers or fenced releases will free some, else give up.
    pub(super) fn wait_or_impossible(&self) -> Placement {
        if self.in_flight > 0 || self.deferred_releases.any() {
            Placement::Wait
        } else {
            Placement::Impossible
        }
    }

    /// A layout for the current step's blocks that are not on the device (see [`layout`]):
    /// offsets to reserve, and the ring's next offset if the step's streamed blocks took their
    /// ring slots. With `relocate`, the step's blocks already on the device (or loading) and not
    /// held may move too; they prefer to stay.
    ///
    /// Without `relocate`, [`Planner::planned_layout`] is tried first: it needs no map of the
    /// pool, and it is the common case (the prefetch walk fell behind, and the step's blocks take
    /// their homes and ring slots). Also returns whether the pool was mapped (O(regions)).
    pub(super) fn step_layout(&self, relocate: bool) -> (Option<StepLayout>, bool) {
        let step = &self.protected;
        let cap = self.budget();
        let home = |i: u32| self.home.get(i as usize).copied().flatten();
        // The step's streamed blocks that need a load take consecutive ring slots, wrapping
        // before the first if they do not all fit above the ring.
        let size = |i: u32| granules(self.b(i).spec.size) * GRANULE;
        let loads = |i: u32| matches!(self.b(i).state, State::Host | State::WritingBack { .. });
        let streamed: Vec<u32> = step
            .iter()
            .copied()
            .filter(|&i| self.planned && home(i).is_none() && loads(i))
            .collect();
        let run: u64 = streamed.iter().map(|&i| size(i)).sum();
        let mut slots: Vec<(u32, u64)> = Vec::new();
        if !streamed.is_empty() && self.zone_start + run <= cap {
            let mut at = if self.ring >= self.zone_start && self.ring + run <= cap {
                self.ring
            } else {
                self.zone_start
            };
            for &i in &streamed {
                slots.push((i, at));
                at += size(i);
            }
        }
        let mut items = Vec::new();
        for &i in step {
            let b = self.b(i);
            let current = match b.state {
                State::Resident { alloc } | State::Loading { alloc, .. }
                    if self.movable(i, relocate) =>
                {
                    Some(alloc.offset)
                }
                State::Host | State::WritingBack { .. } => None,
                _ => continue,
            };
            let planned = home(i).or_else(|| slots.iter().find(|s| s.0 == i).map(|s| s.1));
            items.push(Item {
                block: i,
                size: size(i),
                preferred: current.into_iter().chain(planned).collect(),
                high: if self.planned {
                    home(i).is_none()
                } else {
                    home(i).is_none() && b.spec.size <= cap / 64
                },
            });
        }
        let ring_after = |layout: &[(u32, u64)]| {
            slots
                .last()
                .filter(|last| layout.contains(last))
                .map(|&(i, at)| at + size(i))
        };
        if !relocate {
            if let Some(layout) = self.planned_layout(&items) {
                let ring = ring_after(&layout);
                return (Some((layout, ring)), false);
            }
        }
        let spans: Vec<Span<Keep>> = self
            .pool
            .regions()
            .map(|r| Span {
                offset: r.offset,
                size: r.size,
                kind: self.span_kind(r.tag, relocate),
            })
            .collect();
        let Some(layout) = layout::layout(&spans, &items) else {
            return (None, true);
        };
        let ring = ring_after(&layout);
        let layout = layout
            .into_iter()
            .filter(|&(i, at)| match self.b(i).state {
                State::Resident { alloc } | State::Loading { alloc, .. } => alloc.offset != at,
                _ => true,
            })
            .collect();
        (Some((layout, ring)), true)
    }

    /// The fast path of [`Planner::step_layout`] (without `relocate`): every block to place takes
    /// its planned offset (its home or its ring slot), if each of those ranges lies in the arena
    /// and holds only free space and blocks that the map of the pool would mark clearable (and
    /// no other block of the step). The ranges are disjoint (homes are packed below the
    /// streaming zone, the step's ring slots run end to end above it), so this is a layout, and
    /// it is the one [`layout::layout`] tries first. O(items x (log r + regions in the ranges)):
    /// no map of the pool. `None`: the general layout decides.
    fn planned_layout(&self, items: &[Item]) -> Option<Vec<(u32, u64)>> {
        let cap = self.budget();
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            // Only blocks to load are items here, each with at most its planned offset.
            let [at] = item.preferred[..] else {
                return None;
            };
            if at.checked_add(item.size)? > cap {
                return None;
            }
            for r in self.pool.regions_in(at, item.size) {
                match self.span_kind(r.tag, false) {
                    Kind::Free | Kind::Clear { owner: None, .. } => {}
                    Kind::Clear { owner: Some(o), .. } if o == item.block => {}
                    _ => return None,
                }
            }
            out.push((item.block, at));
        }
        Some(out)
    }

    /// Whether a block of the current step on the device (or loading) may move in a layout made
    /// with `relocate`.
    fn movable(&self, i: u32, relocate: bool) -> bool {
        let b = self.b(i);
        relocate
            && !b.is_held()
            && !b.writeback_failed
            && matches!(b.state, State::Resident { .. } | State::Loading { .. })
            && !(b.spec.policy == Policy::Pinned
                && matches!(b.state, State::Resident { .. })
                && self.is_settled(i))
    }

    /// What a pool region (`tag`: its block, if any) is in the map of the pool a step layout is
    /// made on (see the module docs, step 1).
    fn span_kind(&self, tag: Option<u32>, relocate: bool) -> Kind<Keep> {
        // Cost classes above every keep-key: blocks still in transfer (the placement waits for
        // them), then the step's own blocks (moving one costs its copy again).
        const IN_TRANSFER: Keep = (2, 0, 0, 0);
        const MOVE: Keep = (3, 0, 0, 0);
        let home = |i: u32| self.home.get(i as usize).copied().flatten();
        match tag {
            None => Kind::Free,
            Some(j) if self.protected.contains(&j) => match self.b(j).state {
                State::WritingBack { .. } => Kind::Clear {
                    cost: IN_TRANSFER,
                    owner: Some(j),
                },
                _ if self.movable(j, relocate) => Kind::Clear {
                    cost: MOVE,
                    owner: Some(j),
                },
                _ => Kind::Barrier,
            },
            Some(j) => match self.b(j).state {
                // A copy in flight is waited for if its block can be evicted once it lands:
                // not if someone waits for it (they will hold it) or it is a pinned block
                // loading at its home.
                State::Loading { alloc, .. }
                    if self.b(j).waiters > 0
                        || (self.b(j).spec.policy == Policy::Pinned
                            && home(j).is_none_or(|h| h == alloc.offset)) =>
                {
                    Kind::Barrier
                }
                State::Loading { .. } | State::WritingBack { .. } => Kind::Clear {
                    cost: IN_TRANSFER,
                    owner: None,
                },
                _ => match self.evictable(j, Mode::Demand) {
                    Some(cost) => Kind::Clear { cost, owner: None },
                    None if self.misplaced_evictable(j, Mode::Demand) => Kind::Clear {
                        cost: self.keep_key(j),
                        owner: None,
                    },
                    None => Kind::Barrier,
                },
            },
        }
    }

    /// Loads the reserved blocks whose room is clear, evicting what is there (a step block that
    /// moves included). `Wait`: some room is still in transfer. `Conflict`: something that stays
    /// took a reserved range (the layout must be made again).
    pub(super) fn place_reserved(&mut self) -> Reserved {
        let mut wait = false;
        let mut k = 0;
        while k < self.reserved.len() {
            let (i, at) = self.reserved[k];
            let size = granules(self.b(i).spec.size) * GRANULE;
            match self.b(i).state {
                State::Resident { alloc } | State::Loading { alloc, .. } if alloc.offset == at => {
                    self.reserved.remove(k);
                    continue;
                }
                State::Loading { .. } | State::WritingBack { .. } => {
                    wait = true;
                    k += 1;
                    continue;
                }
                State::Resident { .. } if self.b(i).is_held() || self.b(i).writeback_failed => {
                    return Reserved::Conflict
                }
                State::Resident { .. } => {
                    // It moves: a waiter goes on waiting for it at its new offset.
                    self.evict(i);
                    if self.b(i).state != State::Host {
                        wait = true;
                        k += 1;
                        continue;
                    }
                }
                State::Host => {}
            }
            match self.clear_for_step(at, size, i) {
                Ok(victims) => {
                    for v in victims {
                        self.evict(v);
                    }
                    match self.pool.alloc_at(at, size, i) {
                        Some(alloc) => {
                            // A demand load once someone waits; until then the step's most
                            // urgent prefetch (a wait expedites it).
                            let demand = self.b(i).waiters > 0;
                            self.start_load(i, alloc, demand);
                            self.reserved.remove(k);
                        }
                        None => {
                            wait = true;
                            k += 1;
                        }
                    }
                }
                Err(true) => {
                    wait = true;
                    k += 1;
                }
                Err(false) => return Reserved::Conflict,
            }
        }
        if wait {
            Reserved::Wait
        } else {
            Reserved::Done
        }
    }

    /// The blocks to evict so that `[at, at + size)` can take `index`: `Err(true)` if a block
    /// there is in transfer (wait for it), `Err(false)` if one stays.
    pub(super) fn clear_for_step(
        &self,
        at: u64,
        size: u64,
        index: u32,
    ) -> std::result::Result<Vec<u32>, bool> {
        let mut victims = Vec::new();
        for r in self.pool.regions_in(at, size) {
            let Some(j) = r.tag else { continue };
            let b = self.b(j);
            if matches!(b.state, State::Loading { .. } | State::WritingBack { .. }) {
                return Err(true);
            }
            let moving = b.protected
                && !b.is_held()
                && self.reserved.iter().any(|&(r, to)| r == j && to != at);
            if j != index
                && (moving
                    || self.evictable(j, Mode::Demand).is_some()
                    || self.misplaced_evictable(j, Mode::Demand))
            {
                victims.push(j);
            } else {
                return Err(false);
            }
        }
        Ok(victims)
    }
}
