//! The counters: what the planner has moved, waited for and spent, and the snapshot of them (and
//! of the pool and the plan) that [`Planner::stats`] returns. The events that bump them are where
//! the events are handled; the time the driver measures comes in here.

use super::Planner;
use crate::stats::{PrefetchStats, Stats};

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counters {
    pub(super) bytes_h2d: u64,
    pub(super) bytes_d2h: u64,
    pub(super) loads: u64,
    pub(super) demand_loads: u64,
    pub(super) evictions: u64,
    pub(super) writebacks: u64,
    pub(super) waits: u64,
    pub(super) hits: u64,
    pub(super) unpredicted: u64,
    pub(super) stall_s: f64,
    pub(super) transfer_busy_s: f64,
    pub(super) copy_idle_s: f64,
    pub(super) prefetch: PrefetchStats,
    /// Placements that fell back to the general rule's walk of the whole pool (O(regions); the
    /// keep plan's homes and ring place the rest in O(log regions)).
    pub(super) pool_walks: u64,
    /// Joint step layouts that mapped the whole pool (O(regions)); the planned fast path
    /// (`step.rs`) places the rest from range queries.
    pub(super) step_maps: u64,
    /// Keep plans made (see [`Planner::replan`]).
    pub(super) replans: u64,
}

impl Planner {
    /// Adds time the copy engine sat with nothing to do.
    pub fn add_copy_idle(&mut self, seconds: f64) {
        self.n.copy_idle_s += seconds.max(0.0);
        self.step_idle_s += seconds.max(0.0);
    }

    /// Adds time a caller spent blocked.
    pub fn add_stall(&mut self, seconds: f64) {
        self.n.stall_s += seconds.max(0.0);
        self.step_stall_s += seconds.max(0.0);
    }

    /// Keep plans made so far (a change of this count means the plan may have changed).
    pub(crate) fn replans(&self) -> u64 {
        self.n.replans
    }

    /// Bytes of the streaming zone (the ring the streamed blocks pass through): what the
    /// prefetch pipeline may hold at once.
    pub(crate) fn streaming_bytes(&self) -> u64 {
        self.budget().saturating_sub(self.zone_start)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        Stats {
            vram_budget_bytes: self.pool.capacity(),
            device_used_bytes: self.pool.used(),
            peak_device_bytes: self.pool.peak(),
            largest_free_bytes: self.pool.largest_free(),
            fragmentation: self.pool.fragmentation(),
            blocks: self.live_blocks,
            resident_blocks: self.resident_blocks,
            host_bytes: self.host_bytes,
            bytes_h2d: self.n.bytes_h2d,
            bytes_d2h: self.n.bytes_d2h,
            loads: self.n.loads,
            demand_loads: self.n.demand_loads,
            evictions: self.n.evictions,
            writebacks: self.n.writebacks,
            waits: self.n.waits,
            hits: self.n.hits,
            unpredicted: self.n.unpredicted,
            stall_s: self.n.stall_s,
            transfer_busy_s: self.n.transfer_busy_s,
            copy_idle_s: self.n.copy_idle_s,
            h2d_bytes_per_s: self.bw.bytes_per_s(),
            lookahead_s: self.lookahead_s,
            kept_blocks: self.kept_blocks,
            kept_bytes: self.kept_bytes,
            replans: self.n.replans,
            prefetch: self.n.prefetch,
        }
    }
}
