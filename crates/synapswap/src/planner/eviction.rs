//! The eviction rule, and eviction itself: which blocks leave the device when a placement finds no
//! free room, and how one leaves (a write-back when it is mutable and written, else dropped).
//!
//! # The eviction rule (all of it lives in [`Planner::find_window`])
//! A block that must be placed when the pool has no free region big enough evicts a *window*: a run
//! of adjacent regions (free space and evictable blocks) at least as large as the block. Windows
//! never contain a block that is held by a guard, waited for, in transfer, `Pinned`, or used by the
//! current step. Among the rest, each victim has a keep-key, compared in this order:
//! 1. `Volatile` blocks that have been used since they were loaded go first;
//! 2. lower priority before higher;
//! 3. farther next use before nearer (Belady/MIN). The next use comes from the declared cyclic
//!    schedule; a block with no declared use (or `Policy::Lru`) counts as one full cycle plus its
//!    age since last use, so such blocks go before every predicted one, least recently used first.
//!
//! The chosen window is the one whose most valuable victim is least valuable; ties go to the window
//! that evicts fewer bytes, then to the lower address.

use super::{Command, Mode, Planner, State};
use crate::block::{BlockId, Policy};
use crate::pool::{granules, GRANULE};
use crate::Result;

/// The keep-key of a victim: lower is evicted first (see the module docs).
pub(super) type Keep = (u8, u8, u8, u64);

/// A region as the window search sees it: offset, size, and `None` for free space,
/// `Some(Some((block, keep)))` for an evictable block, `Some(None)` for a barrier.
pub(super) type WindowRegion = (u64, u64, Option<Option<(u32, Keep)>>);

/// A window's score (worst victim, victim bytes, first region) with its first and last region.
pub(super) type WindowChoice = ((Option<Keep>, u64, usize), usize, usize);

impl Planner {
    /// The keep-key of a resident block (lower is evicted first).
    pub(super) fn keep_key(&self, index: u32) -> Keep {
        let b = self.b(index);
        let class = u8::from(!(b.spec.policy == Policy::Volatile && b.used_since_load));
        (
            class,
            b.spec.priority,
            u8::from(self.kept(index)),
            u64::MAX - self.distance(index),
        )
    }

    /// Whether the keep plan in force keeps `id` resident (for reports: `synapswap plan`).
    pub fn is_kept(&self, id: BlockId) -> Result<bool> {
        self.block(id)?;
        Ok(self.kept(id.index))
    }

    pub(super) fn kept(&self, index: u32) -> bool {
        self.keep.get(index as usize).copied().unwrap_or(false)
    }

    /// Steps until the block's next use, as the eviction rule sees it.
    pub(super) fn distance(&self, index: u32) -> u64 {
        let b = self.b(index);
        let len = self.schedule.len();
        let lru = || len + 1 + (self.tick - b.last_use_tick.min(self.tick));
        if b.spec.policy == Policy::Lru {
            return lru();
        }
        let used_this_step = self.hinted && b.last_use_epoch == self.epoch;
        let declared = self
            .schedule
            .expected_next_use(index, self.pos, used_this_step)
            .unwrap_or_else(lru);
        match self.hinted_distance(index) {
            Some(d) => declared.min(d),
            None => declared,
        }
    }

    /// Whether the block can be evicted at all right now, and its keep-key if so.
    pub(super) fn evictable(&self, index: u32, mode: Mode) -> Option<Keep> {
        let b = self.b(index);
        if !matches!(b.state, State::Resident { .. })
            || b.is_held()
            || b.waiters > 0
            || b.protected
            || b.writeback_failed
            || b.spec.policy == Policy::Pinned
        {
            return None;
        }
        if let Mode::Prefetch { dist } = mode {
            // A prefetch never evicts a kept block, nor one needed no later than itself.
            if self.kept(index) || self.distance(index) <= dist {
                return None;
            }
        }
        Some(self.keep_key(index))
    }

    /// The eviction rule: the best run of adjacent regions to clear for `bytes`. Returns the
    /// victims (possibly none) or `None` if no run can be cleared.
    pub(super) fn find_window(&self, bytes: u64, mode: Mode) -> Option<(u64, Vec<u32>)> {
        let need = granules(bytes) * GRANULE;
        let regions: Vec<WindowRegion> = self
            .pool
            .regions()
            .map(|r| {
                let kind = r.tag.map(|i| self.evictable(i, mode).map(|k| (i, k)));
                (r.offset, r.size, kind)
            })
            .collect();
        let mut best: Option<WindowChoice> = None;
        for start in 0..regions.len() {
            let mut acc = 0;
            let mut worst: Option<Keep> = None;
            let mut victim_bytes = 0;
            for (j, (_, size, kind)) in regions.iter().enumerate().skip(start) {
                match kind {
                    Some(None) => break,
                    Some(Some((_, k))) => {
                        worst = worst.max(Some(*k));
                        victim_bytes += size;
                    }
                    None => {}
                }
                acc += size;
                if acc >= need {
                    // Lower worst victim first; `None` (no victim) sorts lowest.
                    let score = (worst, victim_bytes, start);
                    if best.as_ref().is_none_or(|(s, _, _)| score < *s) {
                        best = Some((score, start, j));
                    }
                    break;
                }
            }
        }
        let (_, start, end) = best?;
        let victims = regions[start..=end]
            .iter()
            .filter_map(|(_, _, kind)| kind.flatten().map(|(i, _)| i))
            .collect();
        Some((regions[start].0, victims))
    }

    pub(super) fn evict(&mut self, index: u32) {
        let id = self.id_of(index);
        let b = self.b_mut(index);
        let State::Resident { alloc } = b.state else {
            return;
        };
        let wasted = std::mem::take(&mut b.prefetched_unused);
        if b.spec.mutable && b.dirty {
            b.state = State::WritingBack { alloc };
            let size = b.spec.size;
            self.in_flight += 1;
            self.commands.push_back(Command::WriteBack {
                block: id,
                offset: alloc.offset,
                size,
            });
        } else {
            b.state = State::Host;
            self.pool.free(alloc.region);
            self.resident_blocks -= 1;
            self.n.evictions += 1;
            self.commands.push_back(Command::Evict { block: id });
            self.touch(index);
        }
        if wasted {
            self.pipeline_bytes -= self.b(index).spec.size;
            self.n.prefetch.wasted += 1;
            self.narrow();
        }
    }
}
