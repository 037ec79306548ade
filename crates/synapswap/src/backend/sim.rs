//! The simulated device, as strict as CUDA about ordering: device memory is a host arena, and
//! everything that touches it runs on *streams*, in-order queues each run by its own thread.
//!
//! - Copies go on two copy streams (host-to-device, and device-to-host for write-backs, so they
//!   overlap like a GPU's two copy engines). Each copy is a real `memcpy`, optionally paced to a
//!   modelled bandwidth and per-copy latency, and completes an event (its [`Ticket`]).
//! - Consumers' work goes on consumer streams: the default stream `0` (always there; `1` and `2`,
//!   CUDA's legacy and per-thread handles, name it too) and streams
//!   from [`SimBackend::create_stream`]. A *kernel* ([`SimBackend::launch`]) is a closure that
//!   reads or writes device memory through [`DeviceAccess`]; it runs later, in stream order, not
//!   when it is launched, exactly like a GPU kernel. A stream can wait for an event
//!   ([`Backend::stream_wait`]); a fence ([`Backend::record_fence`]) completes once the work
//!   queued before it has run.
//! - Optional random delays ([`SimConfig::jitter`]) before each stream operation make races show.
//! - Device memory is checked like a GPU's MMU would: a copy or kernel that touches bytes outside
//!   every live device allocation loses the context ("illegal address").
//! - Errors are sticky or transient as on CUDA: after [`SimBackend::lose_context`] (or an illegal
//!   address) every call fails with [`Error::DeviceLost`]; an allocation that cannot be met is an
//!   error for that call only.
//! - Registering a host range that shares a page with one already registered fails with
//!   [`Error::AlreadyRegistered`], as `cuMemHostRegister` does.
//!
//! Device memory is accessed by one operation at a time (a copy, a kernel's read or write, a
//! synchronous copy), so no access is a data race in Rust's sense; *when* each runs is decided only
//! by streams and events, so reusing memory before a consumer's fence shows as wrong bytes.
//!
//! Pacing models a DMA engine with a queue: a copy starts when it was submitted or when the
//! previous copy on its stream finished, whichever is later, and takes `latency + len / bandwidth`.
//! The bytes are copied at once and the stream then sleeps until the modelled finish, so a paced
//! sim never reports a copy faster than the model, and never faster than memcpy.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Backend, BackendInfo, DevicePtr, Direction, Fence, Memory, Segment, Ticket};
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
    /// Each stream operation (copy, kernel, event) starts after a random delay of up to this much
    /// (zero: none), so that work ordered only by luck comes out in other orders.
    pub jitter: Duration,
    /// Seed of the delays.
    pub seed: u64,
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
            jitter: Duration::ZERO,
            seed: 0,
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
            jitter: Duration::ZERO,
            seed: 0,
        }
    }

    /// The same, with random delays of up to `max` before each stream operation.
    pub fn with_jitter(mut self, max: Duration, seed: u64) -> SimConfig {
        self.jitter = max;
        self.seed = seed;
        self
    }
}

/// Page-aligned, zero-initialised memory that counts itself in a shared counter.
#[derive(Debug)]
struct Counted {
    pages: os::Pages,
    live: Arc<AtomicU64>,
    /// Device memory is listed in the device map while it lives.
    device: Option<Arc<Core>>,
}

impl Counted {
    fn new(bytes: u64, live: &Arc<AtomicU64>, device: Option<&Arc<Core>>) -> Result<Counted> {
        // The sim's device memory is host memory too: either way the machine ran out of it.
        let len = usize::try_from(bytes.max(1)).map_err(|_| Error::OutOfHostMemory(bytes))?;
        let mut pages = os::Pages::new(len).ok_or(Error::OutOfHostMemory(bytes))?;
        if device.is_some() {
            // A GPU's memory never page-faults: the sim's is committed now, so that the first
            // pass's copies (and the consumers reading beside them) do not pay for faulting in
            // fresh pages, which made the first pass several times slower than the rest.
            pages.commit();
        }
        live.fetch_add(len as u64, Ordering::Relaxed);
        if let Some(core) = device {
            sync::lock(&core.device).insert(pages.as_ptr() as u64, len as u64);
        }
        Ok(Counted {
            pages,
            live: live.clone(),
            device: device.cloned(),
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
        if let Some(core) = &self.device {
            // Taking the device map's lock also waits for any operation touching these bytes.
            sync::lock(&core.device).remove(&(self.pages.as_ptr() as u64));
        }
        self.live
            .fetch_sub(self.pages.len() as u64, Ordering::Relaxed);
    }
}

/// A caller's buffer registered in place: unregistered on drop.
#[derive(Debug)]
struct Registered {
    addr: u64,
    len: u64,
    page_start: u64,
    core: Arc<Core>,
}

impl Memory for Registered {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn len(&self) -> u64 {
        self.len
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        sync::lock(&self.core.registered).remove(&self.page_start);
    }
}

/// Work a consumer queues on a stream: reads and writes device memory when the stream gets to it.
pub type Kernel = Box<dyn FnOnce(&DeviceAccess) -> Result<()> + Send>;

enum Op {
    /// One submission: its segments are copied back to back, and pay the latency once.
    Copy {
        dir: Direction,
        segments: Vec<Segment>,
        submitted: Instant,
        event: u64,
    },
    Kernel(Kernel),
    Record(u64),
    Wait(u64),
}

#[derive(Default)]
struct StreamQueue {
    ops: VecDeque<Op>,
    busy: bool,
    stop: bool,
}

/// One in-order stream; its thread starts with its first operation.
struct Stream {
    q: Mutex<StreamQueue>,
    work: Condvar,
    idle: Condvar,
    thread: Mutex<Option<sync::thread::JoinHandle<()>>>,
    name: &'static str,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("name", &self.name).finish()
    }
}

impl Stream {
    fn new(name: &'static str) -> Arc<Stream> {
        Arc::new(Stream {
            q: Mutex::new(StreamQueue::default()),
            work: Condvar::new(),
            idle: Condvar::new(),
            thread: Mutex::new(None),
            name,
        })
    }
}

#[derive(Debug, Default)]
struct Events {
    next: u64,
    /// Recorded and not yet reached by their stream.
    pending: BTreeSet<u64>,
    /// Completed with an error (a failed copy), until a wait reports it.
    failed: BTreeMap<u64, Error>,
    /// The context is lost: why.
    lost: Option<String>,
}

/// What the streams share: events, the live device allocations and the registered host ranges.
#[derive(Debug)]
struct Core {
    cfg: SimConfig,
    events: Mutex<Events>,
    /// Whether `events.lost` is set.
    is_lost: std::sync::atomic::AtomicBool,
    done: Condvar,
    /// Live device allocations, address -> length. Every access to device memory holds this lock.
    device: Mutex<BTreeMap<u64, u64>>,
    /// Registered host ranges, page-rounded: start -> end.
    registered: Mutex<BTreeMap<u64, u64>>,
}

impl Core {
    fn lost(&self) -> Option<Error> {
        // The flag keeps the lock off every call's path while the context is fine.
        if !self.is_lost.load(Ordering::Acquire) {
            return None;
        }
        sync::lock(&self.events).lost.clone().map(Error::DeviceLost)
    }

    fn lose(&self, why: String) {
        let mut ev = sync::lock(&self.events);
        if ev.lost.is_none() {
            ev.lost = Some(why);
        }
        self.is_lost.store(true, Ordering::Release);
        self.done.notify_all();
    }

    fn new_event(&self) -> Result<u64> {
        let mut ev = sync::lock(&self.events);
        if let Some(why) = &ev.lost {
            return Err(Error::DeviceLost(why.clone()));
        }
        ev.next += 1;
        let e = ev.next;
        ev.pending.insert(e);
        Ok(e)
    }

    fn complete(&self, event: u64, error: Option<Error>) {
        let mut ev = sync::lock(&self.events);
        ev.pending.remove(&event);
        if let Some(e) = error {
            ev.failed.insert(event, e);
        }
        self.done.notify_all();
    }

    /// Blocks until `event` completed, also on a lost context: a copy still running touches
    /// host memory its caller frees once told the copy is over. (Stream threads complete every
    /// event they reach, failing copies at once when the context is lost, so this returns.)
    /// `consume`: report and forget a failed copy's error (its owner's wait); a stream waiting
    /// on the copy only looks.
    fn wait_event(&self, event: u64, consume: bool) -> Result<()> {
        let mut ev = sync::lock(&self.events);
        while ev.pending.contains(&event) {
            ev = sync::wait(&self.done, ev);
        }
        let failed = if consume {
            ev.failed.remove(&event)
        } else {
            ev.failed.get(&event).cloned()
        };
        if let Some(e) = failed {
            return Err(e);
        }
        match &ev.lost {
            Some(why) => Err(Error::DeviceLost(why.clone())),
            None => Ok(()),
        }
    }

    /// Runs `f` on the device bytes `addr..addr+len`, if they lie inside one live allocation;
    /// otherwise the context is lost, as on a GPU touching an unmapped address.
    fn with_device<T>(&self, addr: u64, len: u64, f: impl FnOnce() -> T) -> Result<T> {
        let map = sync::lock(&self.device);
        let inside = map
            .range(..=addr)
            .next_back()
            .is_some_and(|(&a, &l)| addr.checked_add(len).is_some_and(|end| end <= a + l));
        if !inside {
            drop(map);
            let why = format!("illegal address: device bytes {addr:#x}+{len} are not allocated");
            self.lose(why.clone());
            return Err(Error::DeviceLost(why));
        }
        let r = f();
        drop(map);
        Ok(r)
    }
}

/// A kernel's view of device memory: bounds-checked reads and writes.
pub struct DeviceAccess<'a> {
    core: &'a Core,
}

impl std::fmt::Debug for DeviceAccess<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAccess").finish_non_exhaustive()
    }
}

impl DeviceAccess<'_> {
    /// Reads device bytes at `addr` into `buf`. Bytes outside every live allocation lose the
    /// context.
    pub fn read(&self, addr: DevicePtr, buf: &mut [u8]) -> Result<()> {
        self.core.with_device(addr, buf.len() as u64, || {
            // SAFETY: the range lies inside a live device allocation (checked under the device
            // map's lock, which also keeps every other access to device memory out meanwhile);
            // `buf` is a distinct host buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    addr as usize as *const u8,
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            }
        })
    }

    /// Writes `data` to device bytes at `addr`.
    pub fn write(&self, addr: DevicePtr, data: &[u8]) -> Result<()> {
        self.core.with_device(addr, data.len() as u64, || {
            // SAFETY: as in `read`.
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), addr as usize as *mut u8, data.len())
            }
        })
    }
}

/// The simulated device backend.
#[derive(Debug)]
pub struct SimBackend {
    core: Arc<Core>,
    h2d: Arc<Stream>,
    d2h: Arc<Stream>,
    /// Consumer streams by handle; `0` is the default stream.
    streams: Mutex<HashMap<u64, Arc<Stream>>>,
    /// The default stream (also in `streams`), reached without the map's lock.
    default: Arc<Stream>,
    next_stream: AtomicU64,
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

/// A small deterministic generator for the delays (xorshift64*).
struct Jitter {
    max_ns: u64,
    state: u64,
}

impl Jitter {
    fn new(cfg: &SimConfig, salt: u64) -> Jitter {
        Jitter {
            max_ns: cfg.jitter.as_nanos().min(u128::from(u64::MAX)) as u64,
            state: (cfg.seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
        }
    }

    fn pause(&mut self) {
        if self.max_ns == 0 {
            return;
        }
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let r = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let ns = r % (self.max_ns + 1);
        sync::sleep_until(Instant::now() + Duration::from_nanos(ns));
    }
}

fn stream_thread(stream: &Stream, core: &Core, salt: u64) {
    let cfg = core.cfg;
    let mut jitter = Jitter::new(&cfg, salt);
    let mut link_free = Instant::now();
    let mut q = sync::lock(&stream.q);
    loop {
        let Some(op) = q.ops.pop_front() else {
            q.busy = false;
            stream.idle.notify_all();
            if q.stop {
                break;
            }
            q = sync::wait(&stream.work, q);
            continue;
        };
        q.busy = true;
        drop(q);
        jitter.pause();
        match op {
            Op::Copy {
                dir,
                segments,
                submitted,
                event,
            } => {
                let mut result = Ok(());
                let mut len = 0usize;
                for s in &segments {
                    len += s.len as usize;
                    if result.is_err() {
                        continue;
                    }
                    result = match core.lost() {
                        Some(e) => Err(e),
                        // SAFETY: `submit`'s contract keeps the host range valid and unshared
                        // until this event completes; the device range was found inside a live
                        // device allocation, and the device map's lock keeps other accesses out.
                        None => core.with_device(s.device, s.len, || unsafe {
                            raw_copy(dir, s.host as usize, s.device as usize, s.len as usize)
                        }),
                    };
                }
                let copied = Instant::now();
                let bw = match dir {
                    Direction::HostToDevice => cfg.h2d_bytes_per_s,
                    Direction::DeviceToHost => cfg.d2h_bytes_per_s.or(cfg.h2d_bytes_per_s),
                };
                if let Some(bw) = bw {
                    let start = submitted.max(link_free);
                    // Bounded: bandwidth >= 1 kB/s and len fits in memory (checked in `new`).
                    let copy = Duration::try_from_secs_f64(len as f64 / bw)
                        .unwrap_or(Duration::from_secs(u64::from(u32::MAX)));
                    let finish = start + cfg.latency + copy;
                    sync::sleep_until(finish);
                    // The modelled link is free at `finish` unless the real copy took longer;
                    // oversleeping is the simulator's artefact, not the model's.
                    link_free = finish.max(copied);
                } else {
                    link_free = copied;
                }
                core.complete(event, result.err());
            }
            Op::Kernel(k) => {
                if core.lost().is_none() {
                    if let Err(e) = k(&DeviceAccess { core }) {
                        // A kernel that faults takes the context with it, as on a GPU.
                        core.lose(format!("a kernel failed: {e}"));
                    }
                }
            }
            Op::Record(event) => core.complete(event, None),
            Op::Wait(event) => {
                // An error of the awaited copy is its waiter's to report; the stream goes on.
                let _ = core.wait_event(event, false);
            }
        }
        q = sync::lock(&stream.q);
    }
}

impl SimBackend {
    /// A sim backend. Its streams start their threads on first use.
    pub fn new(cfg: SimConfig) -> Result<SimBackend> {
        for bw in [cfg.h2d_bytes_per_s, cfg.d2h_bytes_per_s]
            .into_iter()
            .flatten()
        {
            // Below 1 kB/s a copy's modelled time overflows the clock for large blocks.
            if !(bw.is_finite() && bw >= 1e3) {
                return Err(Error::Backend(format!(
                    "invalid sim bandwidth {bw} bytes/s (at least 1e3)"
                )));
            }
        }
        if cfg.jitter > Duration::from_secs(1) || cfg.latency > Duration::from_secs(1) {
            return Err(Error::Backend(format!(
                "sim latency {:?} and jitter {:?} must be at most 1 s",
                cfg.latency, cfg.jitter
            )));
        }
        let core = Arc::new(Core {
            cfg,
            events: Mutex::new(Events::default()),
            is_lost: std::sync::atomic::AtomicBool::new(false),
            done: Condvar::new(),
            device: Mutex::new(BTreeMap::new()),
            registered: Mutex::new(BTreeMap::new()),
        });
        let default = Stream::new("synapswap-sim-stream");
        let mut streams = HashMap::new();
        streams.insert(0, default.clone());
        Ok(SimBackend {
            core,
            h2d: Stream::new("synapswap-sim-h2d"),
            d2h: Stream::new("synapswap-sim-d2h"),
            streams: Mutex::new(streams),
            default,
            // Above CUDA's special handles (1: legacy, 2: per-thread default).
            next_stream: AtomicU64::new(16),
            live_host: Arc::new(AtomicU64::new(0)),
            live_device: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The configuration.
    pub fn config(&self) -> SimConfig {
        self.core.cfg
    }

    /// Host bytes allocated through this backend and not yet freed.
    pub fn live_host_bytes(&self) -> u64 {
        self.live_host.load(Ordering::Relaxed)
    }

    /// Device-arena bytes allocated through this backend and not yet freed.
    pub fn live_device_bytes(&self) -> u64 {
        self.live_device.load(Ordering::Relaxed)
    }

    /// A new consumer stream (like `cuStreamCreate` with `CU_STREAM_NON_BLOCKING`): work on it
    /// is ordered only with itself and the events it waits for.
    pub fn create_stream(&self) -> Result<u64> {
        if let Some(e) = self.core.lost() {
            return Err(e);
        }
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        sync::lock(&self.streams).insert(id, Stream::new("synapswap-sim-stream"));
        Ok(id)
    }

    /// Queues `kernel` on `stream`: it runs after everything queued there before it, on the
    /// stream's thread, and reaches device memory only through its [`DeviceAccess`]. A kernel
    /// that returns an error (or touches unallocated bytes) loses the context.
    pub fn launch(
        &self,
        stream: u64,
        kernel: impl FnOnce(&DeviceAccess) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        let s = self.stream(stream)?;
        self.enqueue(&s, Op::Kernel(Box::new(kernel)), stream + 3)
    }

    /// Blocks until everything queued on `stream` has run (`cuStreamSynchronize`).
    pub fn synchronize(&self, stream: u64) -> Result<()> {
        let s = self.stream(stream)?;
        let mut q = sync::lock(&s.q);
        while q.busy || !q.ops.is_empty() {
            q = sync::wait(&s.idle, q);
        }
        drop(q);
        match self.core.lost() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Loses the context, as a GPU does after an illegal access or an ECC error: every later
    /// call fails with [`Error::DeviceLost`] (fault injection for tests).
    pub fn lose_context(&self, why: &str) {
        self.core.lose(why.to_string());
    }

    fn stream(&self, id: u64) -> Result<Arc<Stream>> {
        // CUDA's CU_STREAM_LEGACY (1) and CU_STREAM_PER_THREAD (2), which DLPack consumers pass,
        // name the default stream here.
        if id <= 2 {
            return Ok(self.default.clone());
        }
        sync::lock(&self.streams)
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::Backend(format!("stream {id:#x} is not a stream of this device")))
    }

    fn enqueue(&self, s: &Arc<Stream>, op: Op, salt: u64) -> Result<()> {
        let mut q = sync::lock(&s.q);
        if q.stop {
            return Err(Error::Backend("the sim device has stopped".into()));
        }
        let mut thread = sync::lock(&s.thread);
        if thread.is_none() {
            let (stream, core) = (s.clone(), self.core.clone());
            let t = sync::thread::spawn(s.name, move || stream_thread(&stream, &core, salt))
                .map_err(|e| Error::Backend(format!("cannot start a sim stream thread: {e}")))?;
            *thread = Some(t);
        }
        drop(thread);
        q.ops.push_back(op);
        s.work.notify_one();
        Ok(())
    }

    fn all_streams(&self) -> Vec<Arc<Stream>> {
        let mut v: Vec<Arc<Stream>> = sync::lock(&self.streams).values().cloned().collect();
        v.push(self.h2d.clone());
        v.push(self.d2h.clone());
        v
    }
}

impl Drop for SimBackend {
    fn drop(&mut self) {
        // Every stream runs what it has queued, then stops.
        for s in self.all_streams() {
            sync::lock(&s.q).stop = true;
            s.work.notify_all();
            if let Some(t) = sync::lock(&s.thread).take() {
                // Stream threads never panic on their own; if one did, there is nothing to clean.
                let _ = t.join();
            }
        }
    }
}

impl Backend for SimBackend {
    fn info(&self) -> BackendInfo {
        let cfg = self.core.cfg;
        let description = match cfg.h2d_bytes_per_s {
            Some(bw) => format!(
                "simulated device (host arena), copies paced to {:.2} GB/s + {} us",
                bw / 1e9,
                cfg.latency.as_micros()
            ),
            None => "simulated device (host arena), unpaced memcpy".to_string(),
        };
        BackendInfo {
            name: "sim",
            description,
            modelled_h2d_bytes_per_s: cfg.h2d_bytes_per_s,
        }
    }

    fn alloc_device(&self, bytes: u64) -> Result<Box<dyn Memory>> {
        if let Some(e) = self.core.lost() {
            return Err(e);
        }
        Ok(Box::new(Counted::new(
            bytes,
            &self.live_device,
            Some(&self.core),
        )?))
    }

    fn alloc_host(&self, bytes: u64) -> Result<Box<dyn Memory>> {
        if let Some(e) = self.core.lost() {
            return Err(e);
        }
        Ok(Box::new(Counted::new(bytes, &self.live_host, None)?))
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
        let segment = Segment {
            host: host as u64,
            device,
            len: len as u64,
        };
        // SAFETY: the caller's contract, for the one segment.
        unsafe { self.submit_batch(dir, &[segment]) }
    }

    /// One operation on the copy stream for the whole batch: the latency is paid once, the
    /// bytes at the modelled bandwidth (a batched submission's cost on a GPU is assumed to be
    /// one submission's: `cuMemcpyBatchAsync` exists to make it so).
    unsafe fn submit_batch(&self, dir: Direction, segments: &[Segment]) -> Result<Ticket> {
        if segments.is_empty() {
            return Err(Error::Backend("an empty batch of copies".into()));
        }
        let event = self.core.new_event()?;
        let (stream, salt) = match dir {
            Direction::HostToDevice => (&self.h2d, 1),
            Direction::DeviceToHost => (&self.d2h, 2),
        };
        let op = Op::Copy {
            dir,
            segments: segments.to_vec(),
            submitted: Instant::now(),
            event,
        };
        if let Err(e) = self.enqueue(stream, op, salt) {
            self.core.complete(event, None);
            return Err(e);
        }
        Ok(Ticket(event))
    }

    fn wait(&self, ticket: Ticket) -> Result<()> {
        self.core.wait_event(ticket.0, true)
    }

    fn query(&self, ticket: Ticket) -> Option<bool> {
        Some(!sync::lock(&self.core.events).pending.contains(&ticket.0))
    }

    unsafe fn copy_now(
        &self,
        dir: Direction,
        host: *mut u8,
        device: DevicePtr,
        len: usize,
    ) -> Result<()> {
        if let Some(e) = self.core.lost() {
            return Err(e);
        }
        self.core.with_device(device, len as u64, || {
            // SAFETY: the host range is the caller's to guarantee; the device range lies inside
            // a live allocation and the device map's lock keeps other accesses out.
            unsafe { raw_copy(dir, host as usize, device as usize, len) }
        })
    }

    unsafe fn register_host(
        &self,
        ptr: *mut u8,
        len: u64,
        read_only: bool,
    ) -> Result<Box<dyn Memory>> {
        let _ = read_only;
        if let Some(e) = self.core.lost() {
            return Err(e);
        }
        let page = os::page_size() as u64;
        let addr = ptr as u64;
        let start = addr / page * page;
        let end = addr
            .checked_add(len.max(1))
            .map(|e| e.div_ceil(page) * page)
            .ok_or_else(|| Error::Backend(format!("host range {addr:#x}+{len} overflows")))?;
        let mut reg = sync::lock(&self.core.registered);
        let overlaps = reg
            .range(..end)
            .next_back()
            .is_some_and(|(_, &e)| e > start);
        if overlaps {
            return Err(Error::AlreadyRegistered { addr, len });
        }
        reg.insert(start, end);
        Ok(Box::new(Registered {
            addr,
            len,
            page_start: start,
            core: self.core.clone(),
        }))
    }

    fn stream_wait(&self, stream: u64, ticket: Ticket) -> Result<()> {
        let s = self.stream(stream)?;
        self.enqueue(&s, Op::Wait(ticket.0), stream + 3)
    }

    fn record_fence(&self, stream: u64) -> Result<Option<Fence>> {
        // The default stream without the map's lock or a reference count: this is every
        // guard drop's path.
        let named;
        let s: &Arc<Stream> = if stream <= 2 {
            &self.default
        } else {
            named = self.stream(stream)?;
            &named
        };
        if let Some(e) = self.core.lost() {
            return Err(e);
        }
        {
            let q = sync::lock(&s.q);
            if !q.busy && q.ops.is_empty() {
                // Nothing queued: the fence would complete at once.
                return Ok(None);
            }
        }
        let event = self.core.new_event()?;
        if let Err(e) = self.enqueue(s, Op::Record(event), stream + 3) {
            self.core.complete(event, None);
            return Err(e);
        }
        Ok(Some(Fence(event)))
    }

    fn fence_done(&self, fence: &Fence) -> Result<bool> {
        // The truth also on a lost context: its stream still reaches the fence (kernels are
        // skipped then), and memory a running kernel reads must not be reused before.
        let ev = sync::lock(&self.core.events);
        Ok(!ev.pending.contains(&fence.0))
    }

    fn drop_fence(&self, fence: Fence) {
        let mut ev = sync::lock(&self.core.events);
        ev.pending.remove(&fence.0);
        ev.failed.remove(&fence.0);
    }
}
