//! Device backends: where the device pool lives and how bytes get there.
//!
//! The runtime talks to every backend through [`Backend`]: one arena allocated once, host buffers
//! for the blocks' host copies, copy streams with tickets (events), and fences on consumers'
//! streams (the shape of CUDA streams and events). `sim` is the embedded default on machines with
//! no GPU, and as strict as CUDA about ordering (see [`sim`]).
//!
//! Errors: [`crate::Error::DeviceLost`] is sticky (the context is gone; the engine fails every
//! later call); every other error is transient, for that call only.

use std::fmt;

use crate::{Error, Result};

pub mod cuda;
pub mod sim;

pub use cuda::CudaBackend;
pub use sim::{DeviceAccess, Kernel, SimBackend, SimConfig};

/// A device address (on `sim`, a host address).
pub type DevicePtr = u64;

/// One copy of a batch ([`Backend::submit_batch`]): `len` bytes between the host address `host`
/// and the device address `device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Host address.
    pub host: u64,
    /// Device address.
    pub device: DevicePtr,
    /// Bytes.
    pub len: u64,
}

/// Memory owned by a backend; freed on drop.
pub trait Memory: Send + Sync + fmt::Debug {
    /// Start address (host address for host memory, device address for device memory).
    fn addr(&self) -> u64;
    /// Length in bytes.
    fn len(&self) -> u64;
    /// Whether the length is zero.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The allocation (or registration) this memory is part of, by its start address: copies
    /// of adjacent blocks are merged only within one (a slab's sub-blocks share it).
    fn mapping(&self) -> u64 {
        self.addr()
    }
    /// Host memory the device could not page-lock (its registration was refused): a copy from
    /// it would be staged by the driver, synchronously, so the transfer thread stages it through
    /// its own pinned ring instead (`transfer/staging.rs`).
    fn pageable(&self) -> bool {
        false
    }
    /// Host memory that is a file mapping registered as one ([`crate::Engine::register_mapping`]):
    /// its pages are the page cache's, which the RAM tier plans (`ram_tier.rs`).
    fn file_backed(&self) -> bool {
        false
    }
}

/// Direction of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Host copy to device pool.
    HostToDevice,
    /// Device pool to host copy (write-back of mutable blocks).
    DeviceToHost,
}

/// Identifies a queued copy (an event recorded after it on its copy stream). Copies in one
/// direction complete in submission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// A caller's buffer used in place (never freed by the engine).
#[derive(Debug)]
pub(crate) struct Borrowed {
    addr: u64,
    len: u64,
    pageable: bool,
}

impl Borrowed {
    /// A caller's buffer the backend refused to register: used pageable.
    pub(crate) fn new(addr: u64, len: u64) -> Borrowed {
        Borrowed {
            addr,
            len,
            pageable: true,
        }
    }
}

impl Memory for Borrowed {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn pageable(&self) -> bool {
        self.pageable
    }
}

/// A point in a caller's stream (a CUDA event recorded there): work queued on the stream before
/// it has completed once [`Backend::fence_done`] says so.
#[derive(Debug, PartialEq, Eq)]
pub struct Fence(pub u64);

/// What a backend models or measures, for reports.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendInfo {
    /// `sim` or `cuda`.
    pub name: &'static str,
    /// A human description (device name, pacing).
    pub description: String,
    /// The host-to-device bandwidth the backend models (sim) or `None` if unpaced / real.
    pub modelled_h2d_bytes_per_s: Option<f64>,
}

/// A device backend.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Short name and description.
    fn info(&self) -> BackendInfo;
    /// Allocates the device arena (once per engine).
    fn alloc_device(&self, bytes: u64) -> Result<Box<dyn Memory>>;
    /// Allocates a host buffer suited to fast copies (page-aligned; pinned where that exists).
    fn alloc_host(&self, bytes: u64) -> Result<Box<dyn Memory>>;
    /// Whether device addresses can be dereferenced by the host (true on `sim`).
    fn host_addressable(&self) -> bool;
    /// How many copies the runtime may keep queued at once (1: submit the next chunk only once the
    /// previous one completed, so a demand load waits behind at most one chunk).
    fn pipeline_depth(&self) -> usize {
        1
    }
    /// Queues an asynchronous copy of `len` bytes between `host` and `device`.
    ///
    /// # Safety
    /// - `host..host+len` must lie in a host buffer from [`Backend::alloc_host`] (or other memory
    ///   valid for the access) and `device..device+len` in this backend's device arena.
    /// - Both ranges must stay allocated, and must not be accessed by anyone else in a way that
    ///   conflicts with the copy, until [`Backend::wait`] has returned for this ticket.
    unsafe fn submit(
        &self,
        dir: Direction,
        host: *mut u8,
        device: DevicePtr,
        len: usize,
    ) -> Result<Ticket>;
    /// Queues the copies of `segments` (at least one), all in direction `dir`, as one submission:
    /// one ticket, completed once every one of them has. Copies that are not adjacent (separate
    /// tensors) then pay a submission's fixed cost once between them, not once each. The default
    /// submits each with [`Backend::submit`] and returns the last ticket (copies in one direction
    /// complete in submission order); if one fails to submit, it first waits for those already
    /// queued, so that none is still running when the error is returned.
    ///
    /// # Safety
    /// As for [`Backend::submit`], for every segment.
    unsafe fn submit_batch(&self, dir: Direction, segments: &[Segment]) -> Result<Ticket> {
        let mut last = None;
        for s in segments {
            // SAFETY: the caller's contract, for this segment.
            let r =
                unsafe { self.submit(dir, s.host as usize as *mut u8, s.device, s.len as usize) };
            match r {
                Ok(t) => last = Some(t),
                Err(e) => {
                    if let Some(t) = last {
                        let _ = self.wait(t);
                    }
                    return Err(e);
                }
            }
        }
        last.ok_or_else(|| Error::Backend("an empty batch of copies".into()))
    }
    /// Blocks until the copy with this ticket (and every earlier one in its direction) completed;
    /// reports its error.
    fn wait(&self, ticket: Ticket) -> Result<()>;

    /// Whether the copy of `ticket` has completed, without blocking: `None` where the backend
    /// cannot tell (the transfer thread then blocks in [`Backend::wait`]). With it, the thread
    /// can submit work queued while a copy runs instead of only after it ends (which idles the
    /// link for a thread's wake-up per copy: BENCHMARKS.md, "Small copies").
    fn query(&self, ticket: Ticket) -> Option<bool> {
        let _ = ticket;
        None
    }
    /// Copies synchronously, outside the queue (small reads and writes of a resident block).
    ///
    /// # Safety
    /// As for [`Backend::submit`], for the duration of the call.
    unsafe fn copy_now(
        &self,
        dir: Direction,
        host: *mut u8,
        device: DevicePtr,
        len: usize,
    ) -> Result<()>;
    /// Adopts a caller's host buffer as a block's host copy, page-locking it in place where the
    /// backend can (CUDA: `cuMemHostRegister`), so it is not copied a second time. Dropping the
    /// returned memory unregisters it; it never frees the buffer. The default (sim) uses the
    /// buffer as it is.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be a live host allocation that outlives the returned value.
    unsafe fn register_host(
        &self,
        ptr: *mut u8,
        len: u64,
        read_only: bool,
    ) -> Result<Box<dyn Memory>> {
        let _ = read_only;
        // A backend with no page-locking copies from any host memory alike.
        Ok(Box::new(Borrowed {
            addr: ptr as u64,
            len,
            pageable: false,
        }))
    }
    /// Makes the consumer's `stream` wait (on the device, not the host) until the copy with
    /// `ticket` has completed, so work queued there later sees its bytes. The default has no
    /// streams and waits on the host.
    fn stream_wait(&self, stream: u64, ticket: Ticket) -> Result<()> {
        let _ = stream;
        self.wait(ticket)
    }
    /// Records a fence on the caller's `stream` (a `CUstream` as an integer; 0 = default
    /// stream) for a stream-ordered release. `None`: nothing queued there is still to run (or the
    /// backend has no streams), so the memory may be reused at once.
    fn record_fence(&self, stream: u64) -> Result<Option<Fence>> {
        let _ = stream;
        Ok(None)
    }
    /// Whether the work before `fence` has completed.
    fn fence_done(&self, fence: &Fence) -> Result<bool> {
        let _ = fence;
        Ok(true)
    }
    /// Gives a fence back (after it completed or was abandoned).
    fn drop_fence(&self, fence: Fence) {
        let _ = fence;
    }
}

/// How to choose a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// CUDA when a driver and a device are present, else sim.
    Auto,
    /// The simulated device.
    Sim,
    /// CUDA (an error if it is unavailable).
    Cuda,
}

impl std::str::FromStr for BackendKind {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<BackendKind> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendKind::Auto),
            "sim" => Ok(BackendKind::Sim),
            "cuda" => Ok(BackendKind::Cuda),
            _ => Err(crate::Error::Parse {
                what: "backend",
                input: s.to_string(),
                reason: "expected auto, sim or cuda".into(),
            }),
        }
    }
}

/// Opens a backend. `Auto` picks CUDA device 0 when a driver and a device are present, else the
/// sim backend with `sim`'s settings; the second value says why when it fell back to sim.
pub fn open(
    kind: BackendKind,
    sim: SimConfig,
) -> Result<(std::sync::Arc<dyn Backend>, Option<String>)> {
    match kind {
        BackendKind::Sim => Ok((std::sync::Arc::new(SimBackend::new(sim)?), None)),
        BackendKind::Cuda => Ok((std::sync::Arc::new(CudaBackend::new(0)?), None)),
        BackendKind::Auto => match cuda::available() {
            Ok(_) => Ok((std::sync::Arc::new(CudaBackend::new(0)?), None)),
            Err(why) => Ok((std::sync::Arc::new(SimBackend::new(sim)?), Some(why))),
        },
    }
}
