//! The simulated device: device memory is a host arena, copies are real `memcpy` on a DMA thread,
//! optionally paced to a modelled bandwidth and per-copy latency.
//!
//! Pacing models a DMA engine with a queue: a copy starts when it was submitted or when the
//! previous copy finished, whichever is later, and takes `latency + len / bandwidth`. The bytes are
//! copied at once (real work, verified by callers) and the DMA thread then sleeps until the modelled
//! finish, so a paced sim never reports a copy faster than the model, and never faster than memcpy.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Backend, BackendInfo, DevicePtr, Direction, Memory, Ticket};
use crate::sync::{self, Arc, Condvar, Instant, Mutex};
use crate::{os, Error, Result};

/// Sim backend settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// Modelled host-to-device bandwidth in bytes/s; `None` copies as fast as memcpy goes.
    pub h2d_bytes_per_s: Option<f64>,
    /// Modelled device-to-host bandwidth; `None` = same as `h2d_bytes_per_s`.
    pub d2h_bytes_per_s: Option<f64>,
    /// Modelled fixed cost per copy.
    pub latency: Duration,
}

/// The default modelled bandwidth: 2 GB/s. A single-threaded memcpy on the 2-core build machines
/// runs at 9-10 GB/s (BENCHMARKS.md, "Engine": the memcpy baseline), but `synapswap run` copies
/// on one core while the other verifies every byte it uses, and both share the memory bus: at
/// 2 GB/s the modelled link stays about 98% busy (BENCHMARKS.md, "`synapswap run`": copy idle
/// against wall time); that 4 GB/s falls behind its own model is assumed (a trial, not recorded).
pub const DEFAULT_SIM_H2D: f64 = 2e9;

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            h2d_bytes_per_s: Some(DEFAULT_SIM_H2D),
            d2h_bytes_per_s: None,
            latency: Duration::from_micros(10),
        }
    }
}

impl SimConfig {
    /// Unpaced: copies run at memcpy speed.
    pub fn unpaced() -> SimConfig {
        SimConfig {
            h2d_bytes_per_s: None,
            d2h_bytes_per_s: None,
            latency: Duration::ZERO,
        }
    }
}

/// Page-aligned, zero-initialised memory that counts itself in a shared counter.
#[derive(Debug)]
struct Counted {
    pages: os::Pages,
    live: Arc<AtomicU64>,
}

impl Counted {
    fn new(bytes: u64, live: &Arc<AtomicU64>) -> Result<Counted> {
        let len = usize::try_from(bytes.max(1)).map_err(|_| Error::OutOfHostMemory(bytes))?;
        let pages = os::Pages::new(len).ok_or(Error::OutOfHostMemory(bytes))?;
        live.fetch_add(len as u64, Ordering::Relaxed);
        Ok(Counted {
            pages,
            live: live.clone(),
        })
    }
}

impl Memory for Counted {
    fn addr(&self) -> u64 {
        self.pages.as_ptr() as u64
    }
    fn len(&self) -> u64 {
        self.pages.len() as u64
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.live
            .fetch_sub(self.pages.len() as u64, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Request {
    ticket: u64,
    dir: Direction,
    host: usize,
    device: usize,
    len: usize,
    submitted: Instant,
}

#[derive(Debug, Default)]
struct DmaState {
    queue: VecDeque<Request>,
    next_ticket: u64,
    completed: u64,
    errors: BTreeMap<u64, String>,
    stop: bool,
}

#[derive(Debug)]
struct Dma {
    state: Mutex<DmaState>,
    work: Condvar,
    done: Condvar,
}

/// The simulated device backend.
#[derive(Debug)]
pub struct SimBackend {
    cfg: SimConfig,
    dma: Arc<Dma>,
    thread: Mutex<Option<sync::thread::JoinHandle<()>>>,
    live_host: Arc<AtomicU64>,
    live_device: Arc<AtomicU64>,
}

/// Copies `len` bytes.
///
/// # Safety
/// `src..src+len` readable, `dst..dst+len` writable, no overlap, no concurrent conflicting access.
unsafe fn raw_copy(dir: Direction, host: usize, device: usize, len: usize) {
    let (src, dst) = match dir {
        Direction::HostToDevice => (host, device),
        Direction::DeviceToHost => (device, host),
    };
    // SAFETY: guaranteed by the caller.
    unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) };
}

impl SimBackend {
    /// Starts a sim backend and its DMA thread.
    pub fn new(cfg: SimConfig) -> Result<SimBackend> {
        for bw in [cfg.h2d_bytes_per_s, cfg.d2h_bytes_per_s]
            .into_iter()
            .flatten()
        {
            if !(bw.is_finite() && bw > 0.0) {
                return Err(Error::Backend(format!("invalid sim bandwidth {bw}")));
            }
        }
        let dma = Arc::new(Dma {
            state: Mutex::new(DmaState {
                next_ticket: 1,
                ..Default::default()
            }),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        let d = dma.clone();
        let thread = sync::thread::spawn("synapswap-sim-dma", move || dma_thread(&d, cfg))
            .map_err(|e| Error::Backend(format!("cannot start the sim DMA thread: {e}")))?;
        Ok(SimBackend {
            cfg,
            dma,
            thread: Mutex::new(Some(thread)),
            live_host: Arc::new(AtomicU64::new(0)),
            live_device: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The configuration.
    pub fn config(&self) -> SimConfig {
        self.cfg
    }

    /// Host bytes allocated through this backend and not yet freed.
    pub fn live_host_bytes(&self) -> u64 {
        self.live_host.load(Ordering::Relaxed)
    }

    /// Device-arena bytes allocated through this backend and not yet freed.
    pub fn live_device_bytes(&self) -> u64 {
        self.live_device.load(Ordering::Relaxed)
    }
}

fn dma_thread(dma: &Dma, cfg: SimConfig) {
    let mut link_free = Instant::now();
    let mut st = sync::lock(&dma.state);
    loop {
        let Some(req) = st.queue.pop_front() else {
            if st.stop {
                break;
            }
            st = sync::wait(&dma.work, st);
            continue;
        };
        drop(st);
        let bw = match req.dir {
            Direction::HostToDevice => cfg.h2d_bytes_per_s,
            Direction::DeviceToHost => cfg.d2h_bytes_per_s.or(cfg.h2d_bytes_per_s),
        };
        let start = req.submitted.max(link_free);
        // SAFETY: `submit`'s contract keeps both ranges valid and unshared until this ticket is
        // reported complete below.
        unsafe { raw_copy(req.dir, req.host, req.device, req.len) };
        let copied = Instant::now();
        if let Some(bw) = bw {
            let finish = start + cfg.latency + Duration::from_secs_f64(req.len as f64 / bw);
            sync::sleep_until(finish);
            // The modelled link is free at `finish` unless the real copy took longer; oversleeping
            // is the simulator's artefact, not the model's, so it does not delay the next copy.
            link_free = finish.max(copied);
        } else {
            link_free = copied;
        }
        st = sync::lock(&dma.state);
        st.completed = req.ticket;
        dma.done.notify_all();
    }
}

impl Drop for SimBackend {
    fn drop(&mut self) {
        sync::lock(&self.dma.state).stop = true;
        self.dma.work.notify_all();
        if let Some(t) = sync::lock(&self.thread).take() {
            // The DMA thread never panics on its own; if it did, there is nothing left to clean.
            let _ = t.join();
        }
    }
}

impl Backend for SimBackend {
    fn info(&self) -> BackendInfo {
        let description = match self.cfg.h2d_bytes_per_s {
            Some(bw) => format!(
                "simulated device (host arena), copies paced to {:.2} GB/s + {} us",
                bw / 1e9,
                self.cfg.latency.as_micros()
            ),
            None => "simulated device (host arena), unpaced memcpy".to_string(),
        };
        BackendInfo {
            name: "sim",
            description,
            modelled_h2d_bytes_per_s: self.cfg.h2d_bytes_per_s,
        }
    }

    fn alloc_device(&self, bytes: u64) -> Result<Box<dyn Memory>> {
        Ok(Box::new(Counted::new(bytes, &self.live_device)?))
    }

    fn alloc_host(&self, bytes: u64) -> Result<Box<dyn Memory>> {
        Ok(Box::new(Counted::new(bytes, &self.live_host)?))
    }

    fn host_addressable(&self) -> bool {
        true
    }

    /// Two: the next chunk is queued while one is copied, so the modelled link never waits for
    /// the transfer thread to wake up (assumed: a trial run gave +6% link utilisation over one;
    /// not recorded in BENCHMARKS.md).
    fn pipeline_depth(&self) -> usize {
        2
    }

    unsafe fn submit(
        &self,
        dir: Direction,
        host: *mut u8,
        device: DevicePtr,
        len: usize,
    ) -> Result<Ticket> {
        let mut st = sync::lock(&self.dma.state);
        if st.stop {
            return Err(Error::Backend("the sim DMA thread has stopped".into()));
        }
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push_back(Request {
            ticket,
            dir,
            host: host as usize,
            device: device as usize,
            len,
            submitted: Instant::now(),
        });
        self.dma.work.notify_one();
        Ok(Ticket(ticket))
    }

    fn wait(&self, ticket: Ticket) -> Result<()> {
        let mut st = sync::lock(&self.dma.state);
        while st.completed < ticket.0 {
            if st.stop && st.queue.is_empty() {
                break;
            }
            st = sync::wait(&self.dma.done, st);
        }
        if let Some(e) = st.errors.remove(&ticket.0) {
            return Err(Error::Backend(e));
        }
        if st.completed < ticket.0 {
            return Err(Error::Backend(
                "the sim DMA thread stopped before the copy".into(),
            ));
        }
        Ok(())
    }

    unsafe fn copy_now(
        &self,
        dir: Direction,
        host: *mut u8,
        device: DevicePtr,
        len: usize,
    ) -> Result<()> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { raw_copy(dir, host as usize, device as usize, len) };
        Ok(())
    }
}
