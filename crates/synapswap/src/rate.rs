//! A transfer rate measured over recent transfers: the link's (the planner's copies) and the
//! disk's (the RAM tier's read-aheads).

/// Per-transfer decay of the byte and second sums.
const DECAY: f64 = 0.05;

/// Decaying sums of the bytes moved and the seconds it took, over recent transfers. Byte-weighted:
/// a 16 KiB norm dominated by per-copy latency must not count as much as a 400 MiB matrix.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Rate {
    bytes: f64,
    secs: f64,
}

impl Rate {
    /// One transfer moved `bytes` in `secs`.
    pub fn add(&mut self, bytes: u64, secs: f64) {
        self.bytes = self.bytes * (1.0 - DECAY) + bytes as f64;
        self.secs = self.secs * (1.0 - DECAY) + secs;
    }

    /// Bytes/s; 0 before any measurement.
    pub fn bytes_per_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.bytes / self.secs
        } else {
            0.0
        }
    }
}
