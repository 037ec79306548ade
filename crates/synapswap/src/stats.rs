//! Engine statistics: what moved, what hit, how long callers waited.

use serde::Serialize;

/// Prefetch accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PrefetchStats {
    /// Loads started ahead of use.
    pub issued: u64,
    /// Prefetched blocks that were used before being evicted.
    pub used: u64,
    /// Prefetched blocks evicted before any use (bandwidth spent for nothing).
    pub wasted: u64,
}

impl PrefetchStats {
    /// What happened since `earlier` (a snapshot of the same counters).
    pub fn since(&self, earlier: &PrefetchStats) -> PrefetchStats {
        PrefetchStats {
            issued: self.issued - earlier.issued,
            used: self.used - earlier.used,
            wasted: self.wasted - earlier.wasted,
        }
    }
}

/// The RAM tier over file-backed blocks (`ram_tier.rs`; see [`crate::Engine::ram_tier`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RamTierStats {
    /// Bytes of file-backed blocks it may keep cached ([`crate::EngineBuilder::ram_cap`]).
    pub cap_bytes: u64,
    /// Bytes of the file-backed blocks the plan keeps cached in RAM.
    pub cached_bytes: u64,
    /// Pages of file-backed loads looked at when their load was queued (before read-ahead).
    pub pages_checked: u64,
    /// Of those, the pages already in RAM.
    pub pages_resident: u64,
    /// The disk's read rate, bytes/s (a decaying, byte-weighted average, as the link's),
    /// measured on the direct reads of uncached blocks (each read request's time, from its start
    /// or the previous one's end), or, for a mapping whose file the engine does not know, on
    /// the read-aheads: from a read-ahead's advice until its whole range was in RAM. 0 before
    /// any was measured (everything was cached, or the tier is off: then the copies fault the
    /// pages in themselves, unmeasured).
    pub disk_bytes_per_s: f64,
    /// Bytes read from the disk straight into the tier's landing buffer
    /// ([`crate::Engine::register_file_mapping`]).
    pub direct_bytes_read: u64,
    /// Seconds a direct read was on the disk (each read request's time, from its start or the
    /// previous one's end): `direct_bytes_read` over this is the disk's average rate.
    pub direct_busy_s: f64,
    /// Why direct reads ended, if they did (a read failed, or the landing buffer could not be
    /// allocated): the tier advises the kernel instead.
    pub direct_reads_off: Option<String>,
}

/// A snapshot of the engine's counters. Every field is measured by the engine, none estimated.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Device pool size.
    pub vram_budget_bytes: u64,
    /// Device bytes allocated now (resident, loading or writing back).
    pub device_used_bytes: u64,
    /// Highest `device_used_bytes` seen.
    pub peak_device_bytes: u64,
    /// Largest contiguous free region of the pool.
    pub largest_free_bytes: u64,
    /// `1 - largest_free / free`: 0 means all free space is one region.
    pub fragmentation: f64,
    /// Live blocks.
    pub blocks: u64,
    /// Blocks on the device now.
    pub resident_blocks: u64,
    /// Bytes of host copies held by the engine.
    pub host_bytes: u64,
    /// Host-to-device bytes copied (completed loads).
    pub bytes_h2d: u64,
    /// Device-to-host bytes copied (write-backs of mutable blocks).
    pub bytes_d2h: u64,
    /// Completed loads.
    pub loads: u64,
    /// Loads started because a caller waited for a block that was not on its way.
    pub demand_loads: u64,
    /// Blocks evicted.
    pub evictions: u64,
    /// Mutable blocks written back before eviction.
    pub writebacks: u64,
    /// Calls to wait/acquire.
    pub waits: u64,
    /// Waits that did not block.
    pub hits: u64,
    /// Waits on blocks the schedule did not place at the current step.
    pub unpredicted: u64,
    /// Seconds callers spent blocked in wait.
    pub stall_s: f64,
    /// Seconds the copy engine spent copying (sum of completed copy durations).
    pub transfer_busy_s: f64,
    /// Seconds the transfer thread waited with no copy to run.
    pub copy_idle_s: f64,
    /// Smoothed host-to-device bandwidth seen by the planner, bytes/s (0 until measured).
    pub h2d_bytes_per_s: f64,
    /// How far ahead (seconds) the planner currently prefetches.
    pub lookahead_s: f64,
    /// Blocks the keep plan keeps resident at fixed homes (0 when no plan is in force).
    pub kept_blocks: u64,
    /// Their granule-rounded bytes: with `kept_blocks`, which plan is in force.
    pub kept_bytes: u64,
    /// Keep plans made: one per schedule change that adds or removes a step, and one per
    /// drift of the declared bytes past a sixteenth of the live bytes (not one per `alloc`,
    /// `free` or `declare`).
    pub replans: u64,
    /// Prefetch accounting.
    pub prefetch: PrefetchStats,
}

impl Stats {
    /// The hit rate of the waits since `earlier` (1 when none).
    pub fn hit_rate_since(&self, earlier: &Stats) -> f64 {
        let waits = self.waits - earlier.waits;
        if waits == 0 {
            1.0
        } else {
            (self.hits - earlier.hits) as f64 / waits as f64
        }
    }

    /// `hits / waits`, or 1 when nothing waited.
    pub fn hit_rate(&self) -> f64 {
        if self.waits == 0 {
            1.0
        } else {
            self.hits as f64 / self.waits as f64
        }
    }
}
