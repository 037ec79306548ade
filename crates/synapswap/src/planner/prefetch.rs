//! Prefetch admission: the walk that loads ahead of use, its resumable cursor, the lookahead
//! horizon that bounds it and how the horizon widens and narrows.
//!
//! # Prefetch admission
//! Prefetch walks the schedule forward from the current step, in deadline order. A block is admitted
//! only if it fits in free space or in a window whose every victim is next needed *later* than the
//! block itself (never evict something needed sooner), and only while its step is within the
//! lookahead horizon (the first candidate is always considered). The walk stops at the first block
//! that cannot be admitted, so copies are issued strictly in deadline order.
//!
//! The horizon is a time: the sum of the smoothed (EMA) durations of the steps between now and the
//! candidate's step. Prefetching too little shows as a wait that blocked while the copy engine had
//! been idle since the last hint: that widens the horizon. A prefetched block evicted before use
//! narrows it. Keeping the horizon short matters: a prefetch far ahead evicts recently used blocks in
//! favour of far ones and turns a stable resident set into a sliding window that moves every byte
//! every pass.

use super::{Mode, Placement, Planner, State};
use crate::block::Policy;

/// Lookahead bounds (seconds).
pub(super) const MIN_LOOKAHEAD_S: f64 = 1e-4;
pub(super) const MAX_LOOKAHEAD_S: f64 = 30.0;
/// Horizon adjustments.
pub(super) const WIDEN: f64 = 1.5;
pub(super) const NARROW: f64 = 0.75;
pub(super) const SATURATED_DECAY: f64 = 0.95;

impl Planner {
    /// `index` may be prefetchable again (it went back to the host, or its error was cleared):
    /// the prefetch walk looks again from its next use. O(log uses).
    pub(super) fn touch(&mut self, index: u32) {
        if self.scan > 0 && !self.schedule.stale {
            if let Some(d) = self.schedule.next_use(index, self.pos, false) {
                self.scan = self.scan.min(d as usize);
            }
        }
    }

    /// The blocks on the host (neither resident nor loading) that the coming steps use for
    /// certain, in deadline order from the step after the current one, as often as they are
    /// used, over at most `steps` steps: `f(index, bytes)` until it returns false. For the RAM
    /// tier (`ram_tier.rs`), which reads file-backed blocks from the disk further ahead than
    /// their loads are queued. O(uses walked); nothing while the schedule's index is stale.
    pub(crate) fn upcoming_host_blocks(&self, steps: usize, mut f: impl FnMut(u32, u64) -> bool) {
        if self.schedule.stale {
            return;
        }
        let len = self.schedule.len() as usize;
        for k in 1..len.min(steps.saturating_add(1)) {
            let p = (self.pos + k) % len;
            for (j, &i) in self.schedule.uses[p].iter().enumerate() {
                let b = self.b(i);
                if self.loads_ahead(p, j)
                    && b.state == State::Host
                    && b.error.is_none()
                    && !f(i, b.spec.size)
                {
                    return;
                }
            }
        }
    }

    /// Current lookahead horizon in seconds.
    pub fn lookahead_s(&self) -> f64 {
        self.lookahead_s
    }

    pub(super) fn widen(&mut self) {
        self.lookahead_s = (self.lookahead_s * WIDEN).min(MAX_LOOKAHEAD_S);
    }

    pub(super) fn narrow(&mut self) {
        self.lookahead_s = (self.lookahead_s * NARROW).max(MIN_LOOKAHEAD_S);
    }

    /// Time to copy `bytes` at the measured bandwidth (unbounded before any measurement).
    pub(super) fn copy_time(&self, bytes: u64) -> f64 {
        let bw = self.bw.bytes_per_s();
        if bw > 0.0 {
            bytes as f64 / bw
        } else {
            f64::INFINITY
        }
    }

    /// Walks the schedule in deadline order and starts the loads that are due. With something
    /// already in the pipeline (prefetched and not yet used), a candidate waits while
    /// - the pipeline holds more than `lookahead_s` of copying, or more than a quarter of the
    ///   pool (each pipeline byte evicts a byte that would otherwise stay for next pass), or
    /// - its step starts more than `lookahead_s` after the pipeline could have copied it
    ///   (starting later is as good, and keeps the resident set intact longer).
    ///
    /// The walk resumes where the last one stopped (`scan`), so a pump costs O(blocks it
    /// issues or looks at again) plus O(log steps) per candidate for its step's start time,
    /// not a walk of the whole schedule.
    pub(super) fn prefetch(&mut self) {
        self.space_blocked = false;
        self.blocker = None;
        let len = self.schedule.len() as usize;
        let cap = self.budget() / 4;
        // A guess waited for an idle link (`choice.rs`): once the link is idle, the walk looks
        // again from its step (not at every pump: while it waits, a walk would stop there).
        if let Some(g) = self.waiting_guess {
            if self.loading_bytes == 0 && self.pending_demands.is_empty() && len > 0 {
                self.waiting_guess = None;
                self.scan = self.scan.min((g + len - self.pos % len) % len);
            }
        }
        'walk: while self.scan < len {
            let k = self.scan;
            let p = (self.pos + k) % len;
            for j in 0..self.schedule.uses[p].len() {
                let i = self.schedule.uses[p][j];
                let b = self.b(i);
                if !self.loads_ahead(p, j)
                    || b.state != State::Host
                    || b.spec.policy == Policy::Lru
                    || b.error.is_some()
                    || b.load_failed
                    || (k == 0 && self.hinted && b.last_use_epoch == self.epoch)
                {
                    continue;
                }
                if self.guess_waits(p, j, k) {
                    self.waiting_guess.get_or_insert(p);
                    continue;
                }
                // Under a keep plan the ring bounds the pipeline and a prefetch cannot evict a
                // kept block, so the horizon (which protects an emergent resident set) is moot.
                let kept_safe = self.planned && self.placed_by_plan(i);
                if self.pipeline_bytes > 0 && !kept_safe {
                    let est = self.schedule.time_ahead(self.pos, k);
                    let ahead = self.pipeline_bytes + b.spec.size;
                    let fed = self.loading_bytes > 0
                        && self.copy_time(self.loading_bytes + b.spec.size) > self.lookahead_s;
                    if ahead > cap || fed || est - self.copy_time(ahead) > self.lookahead_s {
                        break 'walk;
                    }
                }
                let group = self.streamed_from(p, j);
                match self.place(i, Mode::Prefetch { dist: k as u64 }, group) {
                    Placement::Placed => {}
                    Placement::Wait | Placement::Impossible => {
                        self.space_blocked = true;
                        break 'walk;
                    }
                }
            }
            // Done with this step, unless a placement sent a block of an earlier one back.
            if self.scan == k {
                self.scan = k + 1;
            }
        }
    }
}
