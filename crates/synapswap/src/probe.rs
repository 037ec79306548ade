//! `synapswap probe`: what the link between host and device really does.
//!
//! Host-to-device bandwidth from the backend's host memory (page-locked on CUDA) by chunk size,
//! from pageable memory, device-to-host, and on CUDA the device's memory and whether a copy on the
//! copy stream hides under a kernel running on another stream. Every figure is measured here,
//! through the same `submit`/`wait` path the engine uses; the best of three rounds is kept.

use std::time::Instant;

use serde::Serialize;

use crate::backend::{Backend, Direction, Memory};
use crate::Result;

/// Bandwidth at one chunk size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChunkRate {
    /// Bytes per copy.
    pub chunk_bytes: u64,
    /// Bytes per second.
    pub bytes_per_s: f64,
}

/// Whether copies overlap a running kernel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overlap {
    /// The kernel alone, seconds.
    pub kernel_s: f64,
    /// The copy alone, seconds.
    pub copy_s: f64,
    /// Both started together, seconds.
    pub both_s: f64,
    /// Share of the shorter of the two hidden under the other (1: fully overlapped).
    pub hidden_fraction: f64,
}

/// What `synapswap probe` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeReport {
    /// Backend name.
    pub backend: String,
    /// Device description.
    pub device: String,
    /// Free device memory (CUDA).
    pub free_bytes: Option<u64>,
    /// Total device memory (CUDA).
    pub total_bytes: Option<u64>,
    /// Bytes copied per measurement.
    pub bytes_per_round: u64,
    /// Host-to-device from the backend's host memory (page-locked on CUDA), by chunk size.
    pub pinned_h2d: Vec<ChunkRate>,
    /// Host-to-device from ordinary pageable memory, 16 MiB chunks.
    pub pageable_h2d_bytes_per_s: f64,
    /// Device-to-host into the backend's host memory, 16 MiB chunks.
    pub d2h_bytes_per_s: f64,
    /// Copy under a kernel (CUDA only).
    pub overlap: Option<Overlap>,
}

impl ProbeReport {
    /// The host-to-device bandwidth the engine's chunks see (8 or 16 MiB), the figure a bound
    /// should use.
    pub fn h2d_bytes_per_s(&self) -> f64 {
        self.pinned_h2d
            .iter()
            .filter(|c| c.chunk_bytes >= 8 << 20)
            .map(|c| c.bytes_per_s)
            .fold(0.0, f64::max)
    }
}

/// Chunk sizes measured.
pub const CHUNKS: [u64; 6] = [256 << 10, 1 << 20, 4 << 20, 8 << 20, 16 << 20, 64 << 20];

/// Times copying `total` bytes in `chunk`-byte copies, best of three rounds.
///
/// # Safety
/// `host` and `device` must be valid, distinct buffers of at least `total` bytes that nothing
/// else touches during the call.
unsafe fn rate(
    backend: &dyn Backend,
    dir: Direction,
    host: u64,
    device: u64,
    total: u64,
    chunk: u64,
) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        let mut last = None;
        let mut off = 0;
        while off < total {
            let len = chunk.min(total - off);
            // SAFETY: inside both buffers, guaranteed by the caller.
            last = Some(unsafe {
                backend.submit(
                    dir,
                    (host + off) as usize as *mut u8,
                    device + off,
                    len as usize,
                )
            }?);
            off += len;
        }
        if let Some(tk) = last {
            backend.wait(tk)?;
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(total as f64 / best.max(1e-9))
}

/// Measures `backend` with `total` bytes per round.
pub fn probe(backend: &dyn Backend, total: u64) -> Result<ProbeReport> {
    let info = backend.info();
    let host: Box<dyn Memory> = backend.alloc_host(total)?;
    let device: Box<dyn Memory> = backend.alloc_device(total)?;
    let mut pinned = Vec::new();
    for chunk in CHUNKS {
        // SAFETY: both buffers are `total` bytes, owned here, touched by nothing else.
        let r = unsafe {
            rate(
                backend,
                Direction::HostToDevice,
                host.addr(),
                device.addr(),
                total,
                chunk,
            )
        }?;
        pinned.push(ChunkRate {
            chunk_bytes: chunk,
            bytes_per_s: r,
        });
    }
    let pageable = vec![1u8; total as usize];
    // SAFETY: `pageable` is `total` bytes and lives to the end of the call.
    let pageable_rate = unsafe {
        rate(
            backend,
            Direction::HostToDevice,
            pageable.as_ptr() as u64,
            device.addr(),
            total,
            16 << 20,
        )
    }?;
    drop(pageable);
    // SAFETY: as for the pinned rounds.
    let d2h = unsafe {
        rate(
            backend,
            Direction::DeviceToHost,
            host.addr(),
            device.addr(),
            total,
            16 << 20,
        )
    }?;
    Ok(ProbeReport {
        backend: info.name.to_string(),
        device: info.description,
        free_bytes: None,
        total_bytes: None,
        bytes_per_round: total,
        pinned_h2d: pinned,
        pageable_h2d_bytes_per_s: pageable_rate,
        d2h_bytes_per_s: d2h,
        overlap: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{SimBackend, SimConfig};

    #[test]
    fn sim_probe_measures_its_modelled_link() {
        let b = SimBackend::new(SimConfig {
            h2d_bytes_per_s: Some(2e9),
            d2h_bytes_per_s: None,
            latency: std::time::Duration::ZERO,
            ..SimConfig::unpaced()
        })
        .unwrap();
        let r = probe(&b, 32 << 20).unwrap();
        assert_eq!(r.pinned_h2d.len(), CHUNKS.len());
        // The sim paces to 2 GB/s: never faster, and near it.
        for c in &r.pinned_h2d {
            assert!(c.bytes_per_s <= 2.05e9, "{c:?}");
            assert!(c.bytes_per_s > 1.0e9, "{c:?}");
        }
        assert!(r.h2d_bytes_per_s() > 1.0e9);
        assert!(r.overlap.is_none());
    }
}
