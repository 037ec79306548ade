//! The runtime and the Rust API: an [`Engine`] owns a planner, a device arena, the blocks' host
//! copies and a transfer thread; callers block only in [`Engine::wait`] (on a condition variable,
//! never spinning).
//!
//! Two rules hold everywhere here:
//! - **Driver calls run outside the state lock.** The planner decides under the lock; copies,
//!   fence records and fence queries are issued after it is dropped, with the block held (or in
//!   transfer) so that nothing it decided can change underneath.
//! - **Every use ends stream-ordered.** A guard's drop, [`Engine::unacquire`] and
//!   [`Engine::unacquire_on_stream`] record a fence on the consumer's stream (the default stream
//!   unless one is named); the block's memory is reused, and a mutable block written back, only
//!   once the work queued there before the release has run.
//!
//! A [`crate::Error::DeviceLost`] from the backend is sticky: the engine fails every later call
//! with it (stats and shutdown still work). Every other backend error fails only its own call or
//! copy.

use std::fmt;
// The backend is shared with callers (a public type), so it is always std's `Arc`; the engine's
// own state uses `crate::sync`, which loom replaces.
use std::sync::Arc as StdArc;

use crate::backend::{
    Backend, BackendInfo, Borrowed, Direction, Fence, Memory, SimBackend, SimConfig,
};
use crate::host_buffer::{Buffers, HostBuffer};
use crate::host_tier::HostTier;
use crate::planner::{Acquire, Planner, PlannerConfig};
use crate::ram_tier::{PageCacheCounts, RamTier};
use crate::sync::{self, Arc, Condvar, Instant, Mutex, MutexGuard};
use crate::trace::{Trace, Track};
use crate::transfer::{queue_commands, transfer_thread, LoadTicket, TransferQueue};
use crate::{BlockId, BlockSpec, Error, RamTierStats, Residency, Result, Stats};

/// The consumer stream that [`Engine::wait`], [`Engine::acquire`] and [`Engine::unacquire`] order
/// releases after: the default (legacy) stream, `0`.
pub const DEFAULT_STREAM: u64 = 0;

/// Default copy chunk: large enough to run PCIe near its peak (16 MiB reached 55 GB/s on an H200,
/// 4 MiB 53: DESIGN.md, "Facts that shape the design", a cudarc probe, not yet this repository's
/// `synapswap probe`), small enough that a demand load never waits long behind a prefetch.
pub const DEFAULT_CHUNK_BYTES: u64 = 8 << 20;

/// Builds an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    budget: Option<u64>,
    backend: Option<StdArc<dyn Backend>>,
    chunk_bytes: u64,
    prefetch: bool,
    lookahead_s: Option<f64>,
    pipeline_depth: Option<usize>,
    trace: bool,
    ram_cap: Option<u64>,
    ram_tier: bool,
}

impl EngineBuilder {
    /// Device budget in bytes (required).
    pub fn budget(mut self, bytes: u64) -> Self {
        self.budget = Some(bytes);
        self
    }
    /// The device backend. Default: a `sim` backend with [`SimConfig::default`].
    pub fn backend(mut self, backend: StdArc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }
    /// Copy chunk size in bytes (default [`DEFAULT_CHUNK_BYTES`]).
    pub fn chunk_bytes(mut self, bytes: u64) -> Self {
        self.chunk_bytes = bytes;
        self
    }
    /// Turns prefetching on (default) or off (demand loads only).
    pub fn prefetch(mut self, on: bool) -> Self {
        self.prefetch = on;
        self
    }
    /// Initial prefetch horizon in seconds (it adapts as the engine runs).
    pub fn lookahead_s(mut self, seconds: f64) -> Self {
        self.lookahead_s = Some(seconds);
        self
    }
    /// Copies kept queued on the backend at once (default: the backend's choice).
    pub fn pipeline_depth(mut self, depth: usize) -> Self {
        self.pipeline_depth = Some(depth);
        self
    }

    /// Bytes of file-backed blocks the RAM tier keeps cached (`ram_tier.rs`). Default:
    /// [`default_ram_cap`] of the host memory available when the engine is built (after its
    /// arena). For a mapping registered with [`Engine::register_file_mapping`] the cached set
    /// and the blocks read ahead are the tier's own memory (its landing buffer, pinned on CUDA),
    /// allocated once the set is chosen if the memory available then holds it (else the tier
    /// falls back to advising the kernel); otherwise they are page cache, which the kernel
    /// reclaims under memory pressure rather than failing an allocation, so the cap bounds what
    /// the tier plans for, not what it can hold.
    pub fn ram_cap(mut self, bytes: u64) -> Self {
        self.ram_cap = Some(bytes);
        self
    }

    /// Turns the RAM tier on (default) or off: off, a mapping registered with
    /// [`Engine::register_mapping`] is an ordinary read-only buffer, its pages left to the
    /// kernel's page cache.
    pub fn ram_tier(mut self, on: bool) -> Self {
        self.ram_tier = on;
        self
    }

    /// Records every copy on a timeline (see [`Engine::take_trace`]). Off by default.
    pub fn trace(mut self, on: bool) -> Self {
        self.trace = on;
        self
    }

    /// Allocates the device pool and starts the transfer thread.
    pub fn build(self) -> Result<Engine> {
        let budget = self.budget.ok_or(Error::InvalidBudget(0))?;
        if self.chunk_bytes == 0 {
            return Err(Error::Parse {
                what: "chunk size",
                input: "0".into(),
                reason: "must be greater than zero".into(),
            });
        }
        let mut cfg = PlannerConfig::new(budget);
        cfg.prefetch = self.prefetch;
        if let Some(l) = self.lookahead_s {
            cfg.lookahead_s = l;
        }
        let planner = Planner::new(cfg)?;
        let backend: StdArc<dyn Backend> = match self.backend {
            Some(b) => b,
            None => StdArc::new(SimBackend::new(SimConfig::default())?),
        };
        let arena = backend.alloc_device(planner.budget())?;
        let depth = self
            .pipeline_depth
            .unwrap_or_else(|| backend.pipeline_depth())
            .max(1);
        // Unknown available memory: no cap (nothing is dropped from RAM, as without the tier).
        let ram_cap = self.ram_cap.unwrap_or_else(|| {
            crate::os::available_memory().map_or(u64::MAX, |a| default_ram_cap(a.bytes))
        });
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                planner,
                hosts: Vec::new(),
                queue: TransferQueue::default(),
                shutdown: false,
                arena_base: arena.addr(),
                trace: self.trace.then(Trace::default),
                manual_holds: Vec::new(),
                deferred: Vec::new(),
                lost: None,
                external: Vec::new(),
                stream_waits: Vec::new(),
                ram: RamTier::new(
                    ram_cap,
                    self.ram_tier,
                    crate::transfer::STAGING_SLOTS as u64 * self.chunk_bytes,
                ),
            }),
            io: Mutex::new(()),
            ready: Condvar::new(),
            work: Condvar::new(),
            host_addressable: backend.host_addressable(),
            host_tier: HostTier::new(),
            buffers: Buffers::default(),
            id: {
                static NEXT: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(1);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
            backend,
            arena,
            chunk_bytes: self.chunk_bytes,
            pipeline_depth: depth,
            epoch: Instant::now(),
            page_cache: StdArc::new(PageCacheCounts::default()),
        });
        let s = shared.clone();
        let thread = sync::thread::spawn("synapswap-transfer", move || transfer_thread(s))
            .map_err(|e| Error::Backend(format!("cannot start the transfer thread: {e}")))?;
        Ok(Engine {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }
}

/// The RAM tier's cap for `available` bytes of host memory: seven eighths of it, the eighth left
/// for the process's own allocations and everyone else's. The page cache alone can use no more
/// than that either, so a file that fits under the cap is cached whole, as it would be without
/// the tier. (`synapswap plan --ram` predicts with the same figure.)
pub fn default_ram_cap(available: u64) -> u64 {
    available / 8 * 7
}

/// State shared by callers and the transfer thread, behind one lock.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    /// Signalled when a copy completes or the engine shuts down (waiters).
    pub ready: Condvar,
    /// Signalled when copy jobs are queued or the engine shuts down (transfer thread).
    pub work: Condvar,
    pub backend: StdArc<dyn Backend>,
    /// Serialises the synchronous copies of `write`, `read` and a guard's device reads and
    /// writes, which run outside the state lock.
    io: Mutex<()>,
    /// The device pool. Never read through this field (the state keeps its base address); held
    /// here so it is freed only when the last reference goes, after every guard is gone.
    #[allow(dead_code)]
    arena: Box<dyn Memory>,
    host_addressable: bool,
    /// Slabs the host copies of small allocated blocks are cut from (`host_tier.rs`).
    host_tier: StdArc<HostTier>,
    /// The caller buffers registered once (`host_buffer.rs`).
    buffers: Buffers,
    /// This engine's identity among every engine of the process (never reused, unlike an
    /// address), for the buffers registered with it.
    id: usize,
    pub chunk_bytes: u64,
    pub pipeline_depth: usize,
    pub epoch: Instant,
    /// Pages of file-backed loads found in RAM when queued (`ram_tier.rs`).
    pub page_cache: StdArc<PageCacheCounts>,
}

pub(crate) struct State {
    pub planner: Planner,
    /// Host copies by block index.
    hosts: Vec<Option<Box<dyn Memory>>>,
    pub queue: TransferQueue,
    pub shutdown: bool,
    arena_base: u64,
    /// Copy timeline, when recording.
    pub trace: Option<Trace>,
    /// Holds taken by [`Engine::acquire`], by block index (so `unacquire` can only drop those).
    manual_holds: Vec<u32>,
    /// Stream-ordered releases waiting for their fence: the hold is dropped once it completed.
    pub deferred: Vec<(BlockId, Fence)>,
    /// The sticky device error that ended the engine, if any.
    pub lost: Option<Error>,
    /// Whether the block's host copy is a caller's buffer (by block index).
    external: Vec<bool>,
    /// Blocks whose load a consumer's stream waits on (`acquire_on_stream` of a block in
    /// flight): if that load fails, the work queued behind it ran on bytes that never came.
    pub stream_waits: Vec<BlockId>,
    /// What stays in RAM of the file-backed blocks (`ram_tier.rs`).
    pub ram: RamTier,
}

/// Whether the work before `fence` has run; `None` when the query failed for now (ask again,
/// never reuse memory early). On a lost device nothing runs any more: the fence has passed, and
/// the error goes to `lost`.
fn fence_passed(backend: &dyn Backend, fence: &Fence, lost: &mut Option<Error>) -> Option<bool> {
    match backend.fence_done(fence) {
        Ok(done) => Some(done),
        Err(e @ Error::DeviceLost(_)) => {
            *lost = Some(e);
            Some(true)
        }
        Err(_) => None,
    }
}

/// Queries the fences of pending stream-ordered releases (outside the lock) and drops the holds
/// of those whose work has run. On a lost device every fence counts as passed. A query that fails
/// for now keeps its fence pending, unless `give_up_on_errors` (shutdown, which must end).
pub(crate) fn poll_fences<'a>(
    shared: &'a Shared,
    st: MutexGuard<'a, State>,
    give_up_on_errors: bool,
) -> MutexGuard<'a, State> {
    let fences = st.deferred_fences();
    if fences.is_empty() {
        return st;
    }
    drop(st);
    let mut lost = None;
    let done: Vec<u64> = fences
        .into_iter()
        .filter(|&f| {
            fence_passed(shared.backend.as_ref(), &Fence(f), &mut lost).unwrap_or(give_up_on_errors)
        })
        .collect();
    let mut st = sync::lock(&shared.state);
    if let Some(e) = lost {
        st.fail_device(shared, e);
    }
    st.release_fenced(shared, &done);
    st
}

impl State {
    /// Turns the planner's commands into copy jobs (and a file-backed load into read-ahead).
    pub fn apply_commands(&mut self, shared: &Shared) {
        self.ram.refresh(&self.planner);
        let (hosts, ram) = (&self.hosts, &mut self.ram);
        let mut awaiting = Vec::new();
        let host_of = |block: BlockId, dir: Direction| {
            let host = Self::host_in(hosts, block);
            if dir == Direction::HostToDevice {
                if let Some(Some(m)) = hosts.get(block.index as usize) {
                    // Read into the RAM tier's landing buffer: copied from there (pinned).
                    if let Some((at, mapping, pageable, wait)) = ram.queued(block, host.0, m.len())
                    {
                        if wait {
                            awaiting.push(block);
                        }
                        return (at, mapping, pageable);
                    }
                }
            }
            host
        };
        let queued = queue_commands(&mut self.planner, &mut self.queue, self.arena_base, host_of);
        for block in awaiting {
            self.queue.await_read(block);
        }
        self.ram.look_ahead(&self.planner);
        if queued || self.ram.landing_requested() {
            shared.work.notify_one();
        }
    }

    /// The fences of pending stream-ordered releases, to query outside the lock.
    pub fn deferred_fences(&self) -> Vec<u64> {
        self.deferred.iter().map(|(_, f)| f.0).collect()
    }

    /// Drops the holds of the stream-ordered releases whose fence (by id) completed.
    pub fn release_fenced(&mut self, shared: &Shared, done: &[u64]) {
        let mut released = false;
        for &fence in done {
            if let Some(i) = self.deferred.iter().position(|(_, f)| f.0 == fence) {
                let (id, fence) = self.deferred.swap_remove(i);
                shared.backend.drop_fence(fence);
                self.planner.defer_release(false);
                self.planner.unhold(id);
                released = true;
            }
        }
        if released {
            self.apply_commands(shared);
            shared.ready.notify_all();
        }
    }

    /// The engine lost its device: every copy not yet submitted fails, waiters are woken (they
    /// return the error), and no copy is submitted again.
    pub fn fail_device(&mut self, shared: &Shared, e: Error) {
        if self.lost.is_none() {
            self.lost = Some(e);
        }
        shared.ready.notify_all();
    }

    /// An error from a driver call: a sticky one ends the engine, any other is its call's own.
    pub fn note(&mut self, shared: &Shared, e: &Error) {
        if matches!(e, Error::DeviceLost(_)) {
            self.fail_device(shared, e.clone());
        }
    }

    /// Counts a hold the caller now owns (taken by [`Engine::acquire`] or `acquire_on_stream`).
    fn add_manual_hold(&mut self, id: BlockId) {
        let i = id.index as usize;
        if self.manual_holds.len() <= i {
            self.manual_holds.resize(i + 1, 0);
        }
        self.manual_holds[i] += 1;
    }

    /// Takes back one hold counted by [`Engine::acquire`] (the planner's hold is the caller's to
    /// drop next).
    fn take_manual_hold(&mut self, id: BlockId) -> Result<()> {
        self.planner.spec(id)?;
        match self.manual_holds.get_mut(id.index as usize) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Ok(())
            }
            _ => Err(Error::NotHeld(id)),
        }
    }

    /// The block's host address and the mapping it lies in.
    fn host_of(&self, block: BlockId) -> (u64, u64, bool) {
        Self::host_in(&self.hosts, block)
    }

    /// `host_of`, borrowing only the host copies.
    fn host_in(hosts: &[Option<Box<dyn Memory>>], block: BlockId) -> (u64, u64, bool) {
        hosts[block.index as usize]
            .as_ref()
            .map(|m| (m.addr(), m.mapping(), m.pageable()))
            .expect("a live block has a host copy")
    }

    fn check_range(&self, id: BlockId, offset: u64, len: u64) -> Result<u64> {
        let size = self.planner.spec(id)?.size;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::OutOfBounds { offset, len, size });
        }
        Ok(size)
    }
}

/// The engine. Every method takes `&self` and is safe to call from many threads at once.
pub struct Engine {
    shared: Arc<Shared>,
    thread: Mutex<Option<sync::thread::JoinHandle<()>>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.shared.backend.info().name)
            .field("budget", &self.budget())
            .finish()
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts building an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            budget: None,
            backend: None,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            prefetch: true,
            lookahead_s: None,
            pipeline_depth: None,
            trace: false,
            ram_cap: None,
            ram_tier: true,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        sync::lock(&self.shared.state)
    }

    fn lock_live(&self) -> Result<MutexGuard<'_, State>> {
        let st = self.lock();
        if st.shutdown {
            return Err(Error::ShutDown);
        }
        if let Some(e) = &st.lost {
            return Err(e.clone());
        }
        Ok(st)
    }

    /// Seconds since the engine started: the clock of its statistics and trace.
    pub fn now_s(&self) -> f64 {
        self.shared.epoch.elapsed().as_secs_f64()
    }

    /// The copies recorded since the last call (empty unless built with
    /// [`EngineBuilder::trace`]); times are [`Engine::now_s`] seconds.
    pub fn take_trace(&self) -> Trace {
        let mut st = self.lock();
        match st.trace.as_mut() {
            Some(t) => std::mem::take(t),
            None => Trace::default(),
        }
    }

    /// Waits (on the condition variable) until no copy of `id` is queued or running and no
    /// stream-ordered release of it is still waiting for its fence: a consumer's kernel queued
    /// before such a release may still read or write the block's device bytes.
    fn settle<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        id: BlockId,
    ) -> Result<MutexGuard<'a, State>> {
        loop {
            if st.deferred.iter().any(|(b, _)| *b == id) {
                // The transfer thread polls fences and signals `ready` when one completes.
                st =
                    sync::wait_timeout(&self.shared.ready, st, std::time::Duration::from_millis(1));
                if st.shutdown {
                    return Err(Error::ShutDown);
                }
                continue;
            }
            st.planner.spec(id)?;
            if st.shutdown {
                return Err(Error::ShutDown);
            }
            if let Some(e) = &st.lost {
                return Err(e.clone());
            }
            let moving = matches!(
                st.planner.residency(id)?,
                Residency::Loading | Residency::WritingBack
            );
            if !moving {
                return Ok(st);
            }
            st = sync::wait(&self.shared.ready, st);
        }
    }

    /// Device budget in bytes (the pool's usable size).
    pub fn budget(&self) -> u64 {
        self.lock().planner.budget()
    }

    /// The device arena every block's device copy is cut from: (address, bytes). It lives as long
    /// as the engine (until its last handle is dropped, shut down or not), so a view of it made
    /// once can be sliced at the addresses [`Engine::acquire`] returns.
    pub fn arena(&self) -> (u64, u64) {
        (self.shared.arena.addr(), self.shared.arena.len())
    }

    /// What the backend is.
    pub fn backend_info(&self) -> BackendInfo {
        self.shared.backend.info()
    }

    /// Allocates a block with a zeroed host copy.
    pub fn alloc(&self, spec: BlockSpec) -> Result<BlockId> {
        {
            let st = self.lock_live()?;
            st.planner.validate(&spec)?;
        }
        // Allocate (and zero) the host copy outside the lock: it can be gigabytes.
        let host = self
            .shared
            .host_tier
            .alloc(&*self.shared.backend, spec.size)?;
        self.add_block(spec, host, false)
    }

    /// Registers a block whose host copy is `host` (a caller's buffer if `external`).
    fn add_block(&self, spec: BlockSpec, host: Box<dyn Memory>, external: bool) -> Result<BlockId> {
        let mut st = self.lock_live()?;
        let id = st.planner.add_block(spec)?;
        let i = id.index as usize;
        if st.hosts.len() <= i {
            st.hosts.resize_with(i + 1, || None);
            st.external.resize(i + 1, false);
        }
        st.ram
            .add(id.index, host.file_backed(), host.addr(), host.len());
        st.hosts[i] = Some(host);
        st.external[i] = external;
        Ok(id)
    }

    /// Allocates a block whose host copy is the caller's buffer `ptr..ptr+spec.size`, page-locked
    /// in place where the backend can (CUDA), so a model already in RAM (or mapped from a file)
    /// is not copied a second time. The engine never frees the buffer; write-backs of a mutable
    /// block go into it. `read_only` lets CUDA register a read-only mapping (immutable blocks).
    ///
    /// # Safety
    /// The buffer must be a live host allocation of at least `spec.size` bytes that stays valid,
    /// and that the caller does not write while the block may be loading or writing back, until
    /// [`Engine::free`] of the block (or shutdown) has returned.
    pub unsafe fn alloc_external(
        &self,
        spec: BlockSpec,
        ptr: *mut u8,
        read_only: bool,
    ) -> Result<BlockId> {
        if ptr.is_null() {
            return Err(Error::Backend("a NULL host buffer".into()));
        }
        if read_only && spec.mutable {
            return Err(Error::Backend(
                "a mutable block needs a writable host buffer".into(),
            ));
        }
        {
            let st = self.lock_live()?;
            st.planner.validate(&spec)?;
        }
        // A range inside a buffer registered once is a sub-range of it: no second registration.
        if let Some(buffer) = self.shared.buffers.find(ptr as u64, spec.size) {
            let offset = ptr as u64 - buffer.addr();
            let host = buffer.sub_range(offset, spec.size, spec.mutable, self.id())?;
            return self.add_block(spec, Box::new(host), true);
        }
        // SAFETY: forwarded from this function's contract.
        let host = match unsafe { self.shared.backend.register_host(ptr, spec.size, read_only) } {
            Ok(h) => h,
            // The buffer shares a page with one registered before (separate tensors packed in
            // one allocation): CUDA refuses to register it twice, so it is used as it is,
            // pageable. Copies from it go through the transfer thread's pinned staging ring
            // (`transfer/staging.rs`).
            Err(Error::AlreadyRegistered { .. }) => Box::new(Borrowed::new(ptr as u64, spec.size)),
            Err(e) => return Err(e),
        };
        self.add_block(spec, host, true)
    }

    /// Registers the caller's buffer `ptr..ptr+len` with the device once (page-locked in place
    /// where the backend can: CUDA `cuMemHostRegister`), for blocks that are sub-ranges of it:
    /// [`Engine::alloc_in`], and [`Engine::alloc_external`] of any range inside it. For the
    /// tensors of one allocation or a memory-mapped model file: CUDA refuses to register ranges
    /// that share a page, so registering each tensor leaves all but the first pageable (see
    /// `host_buffer.rs`). Blocks of one buffer are one mapping, so adjacent ones copy as one.
    /// `read_only` lets CUDA register a read-only mapping (no mutable block can be cut from it).
    /// The registration ends when the last handle and the last block cut from it are gone. If the
    /// backend refuses to page-lock it (other than for an overlap, an error), the buffer is used
    /// pageable, its copies staged through the transfer thread's pinned ring
    /// (`transfer/staging.rs`), and [`HostBuffer::pinned`] is false.
    ///
    /// # Safety
    /// The buffer must be a live host allocation of at least `len` bytes that stays valid until
    /// the registration ends (every handle dropped and every block cut from it freed, or the
    /// engine shut down and dropped), and that the caller does not write where a block lies while
    /// the block may be loading or writing back.
    pub unsafe fn register_buffer(
        &self,
        ptr: *mut u8,
        len: u64,
        read_only: bool,
    ) -> Result<HostBuffer> {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.register(ptr, len, read_only, false, true) }
    }

    /// Registers a read-only memory-mapped file, `ptr..ptr+len`, for blocks cut from it as from
    /// [`Engine::register_buffer`]; its blocks are also in the RAM tier (`ram_tier.rs`): the
    /// ones the plan does not keep in RAM are read ahead before their copy and dropped from RAM
    /// after it, so a model file larger than RAM runs from the disk at its speed. A mapping
    /// larger than the RAM tier's cap ([`EngineBuilder::ram_cap`]) is not page-locked (that
    /// would hold all of it in RAM): its copies go through the pinned staging ring
    /// (`transfer/staging.rs`).
    ///
    /// # Safety
    /// As [`Engine::register_buffer`]; the mapping must be read-only.
    pub unsafe fn register_mapping(&self, ptr: *mut u8, len: u64) -> Result<HostBuffer> {
        // Page-locked only while every mapping locked so far and this one fit under the cap
        // (pinned pages cannot leave RAM); with the tier off too, so that a file larger than
        // RAM is never pinned whole.
        let (lock, advised) = {
            let mut st = self.lock_live()?;
            (st.ram.reserve_lock(len), st.ram.has_advisor())
        };
        if !advised {
            // Without the thread (it could not start) the transfer thread gives the advice.
            if let Ok(advisor) = crate::ram_tier::start_advisor(self.shared.page_cache.clone()) {
                self.lock().ram.set_advisor(advisor);
            }
        }
        // SAFETY: forwarded from this function's contract.
        let buffer = unsafe { self.register(ptr, len, true, true, lock) };
        if lock && !buffer.as_ref().is_ok_and(HostBuffer::pinned) {
            self.lock().ram.unreserve_lock(len);
        }
        if buffer.is_ok() {
            self.lock().ram.forget_disk_files(ptr as u64, len);
        }
        buffer
    }

    /// [`Engine::register_mapping`] of a mapping of the file at `path`: `ptr..ptr + len` holds
    /// the file's bytes from `offset`. Knowing the file, the RAM tier reads the blocks it does
    /// not keep cached straight from the disk (`O_DIRECT`, past the page cache) into a buffer of
    /// its own, pinned on CUDA, a disk horizon ahead of their copy (`ram_tier/disk_reader.rs`),
    /// instead of advising the kernel to read them into the page cache and drop them again.
    /// Fails, registering nothing, when the file cannot be opened, is shorter than
    /// `offset + len`, or its first or last page differs from the mapping's.
    ///
    /// # Safety
    /// As [`Engine::register_mapping`].
    pub unsafe fn register_file_mapping(
        &self,
        ptr: *mut u8,
        len: u64,
        path: &std::path::Path,
        offset: u64,
    ) -> Result<HostBuffer> {
        use crate::ram_tier::{DiskFile, DiskReader, OnDone};
        let bad = |why: String| Error::Model(format!("{}: {why}", path.display()));
        if ptr.is_null() || len == 0 {
            return Err(bad("an empty or NULL mapping".into()));
        }
        let file = DiskFile::open(path).map_err(|e| bad(e.to_string()))?;
        let file_len = file.len().map_err(|e| bad(e.to_string()))?;
        if offset.checked_add(len).is_none_or(|end| end > file_len) {
            return Err(bad(format!(
                "{len} bytes at offset {offset} run past the file's end ({file_len} bytes)"
            )));
        }
        // The mapping must hold this file's bytes: its first and last page are compared.
        let page = len.min(4096);
        for at in [0, len - page] {
            let mut disk = vec![0u8; page as usize];
            file.read_exact_at(&mut disk, offset + at)
                .map_err(|e| bad(e.to_string()))?;
            // SAFETY: `ptr..ptr + len` is a live mapping (this function's contract) and
            // `at + page <= len`.
            let mapped = unsafe { std::slice::from_raw_parts(ptr.add(at as usize), page as usize) };
            if mapped != disk {
                return Err(bad(format!(
                    "the mapping at {ptr:p} is not this file's bytes from offset {offset} \
                     (they differ at {})",
                    offset + at
                )));
            }
        }
        // SAFETY: forwarded from this function's contract.
        let buffer = unsafe { self.register_mapping(ptr, len) }?;
        if !self.lock_live()?.ram.has_reader() {
            let shared = self.shared.clone();
            let on_done: StdArc<OnDone> = StdArc::new(move |token, result, (start, end)| {
                let mut st = sync::lock(&shared.state);
                let ok = result.is_ok();
                let st = &mut *st;
                if let (Some(t), Some((index, kept))) = (st.trace.as_mut(), st.ram.read_of(token)) {
                    let name = (st.planner.id_at(index))
                        .and_then(|id| st.planner.spec(id).ok())
                        .map(|s| s.name.clone())
                        .unwrap_or_default();
                    // The reader's clock is std's; the engine's is its epoch (frozen under
                    // loom): the span is placed back from now on the engine's clock.
                    let (now, now_s) = (std::time::Instant::now(), shared.epoch.elapsed());
                    let ago = |i: std::time::Instant| now.saturating_duration_since(i);
                    let start_s = now_s.saturating_sub(ago(start)).as_secs_f64();
                    t.push(
                        Track::Disk,
                        format!("read {name}"),
                        if kept { "read-cached" } else { "read" },
                        start_s,
                        end.saturating_duration_since(start).as_secs_f64(),
                        0,
                    );
                }
                if let Some(index) = st.ram.read_done(token, result) {
                    // A load waits for this read: it goes, from its own mapping if the read
                    // failed.
                    if let Some(id) = st.planner.id_at(index) {
                        let fallback = (!ok).then(|| State::host_in(&st.hosts, id));
                        st.queue.read_released(id, fallback);
                    }
                }
                st.ram.look_ahead(&st.planner);
                shared.work.notify_one();
            });
            if let Ok(reader) = DiskReader::start(self.shared.page_cache.clone(), on_done) {
                // Shut down meanwhile: closed here (shutdown joined the tier's threads already).
                let extra = {
                    let mut st = self.lock();
                    if st.shutdown {
                        Some(reader)
                    } else {
                        st.ram.set_reader(reader)
                    }
                };
                for t in extra.map(DiskReader::close).unwrap_or_default() {
                    let _ = t.join();
                }
            }
        }
        self.lock()
            .ram
            .add_disk_file(ptr as u64, len, offset, StdArc::new(file));
        Ok(buffer)
    }

    /// [`Engine::register_buffer`] and [`Engine::register_mapping`]: `lock` asks the backend to
    /// page-lock the buffer (else it is used pageable).
    ///
    /// # Safety
    /// As [`Engine::register_buffer`].
    unsafe fn register(
        &self,
        ptr: *mut u8,
        len: u64,
        read_only: bool,
        file_backed: bool,
        lock: bool,
    ) -> Result<HostBuffer> {
        if ptr.is_null() {
            return Err(Error::Backend("a NULL host buffer".into()));
        }
        if len == 0 {
            return Err(Error::ZeroSize);
        }
        drop(self.lock_live()?);
        // The index of registrations must stay disjoint (a pageable fallback below skips the
        // backend's own overlap check).
        if self.shared.buffers.overlaps(ptr as u64, len) {
            return Err(Error::AlreadyRegistered {
                addr: ptr as u64,
                len,
            });
        }
        let registered = if lock {
            // SAFETY: forwarded from this function's contract.
            unsafe { self.shared.backend.register_host(ptr, len, read_only) }
        } else {
            Err(Error::Backend(
                "not page-locked: larger than the RAM tier's cap".into(),
            ))
        };
        let (mem, pinned): (Box<dyn Memory>, bool) = match registered {
            Ok(m) => (m, true),
            // Overlapping an existing registration is the caller's mistake; a lost device is
            // final.
            Err(e @ (Error::AlreadyRegistered { .. } | Error::DeviceLost(_))) => return Err(e),
            // Refused otherwise (read-only registration unsupported by the driver, the
            // page-lock limit): the buffer is used pageable, which is correct but slower
            // (the driver stages each copy); `HostBuffer::pinned` says so.
            Err(_) => (Box::new(Borrowed::new(ptr as u64, len)), false),
        };
        let buffer = HostBuffer::new(mem, read_only, pinned, file_backed, self.id());
        self.shared.buffers.add(&buffer);
        Ok(buffer)
    }

    /// Allocates a block whose host copy is `buffer`'s bytes `offset..offset + spec.size`, in
    /// place (see [`Engine::register_buffer`], whose contract covers the bytes). Write-backs of
    /// a mutable block go into the buffer.
    pub fn alloc_in(&self, buffer: &HostBuffer, offset: u64, spec: BlockSpec) -> Result<BlockId> {
        {
            let st = self.lock_live()?;
            st.planner.validate(&spec)?;
        }
        let host = buffer.sub_range(offset, spec.size, spec.mutable, self.id())?;
        self.add_block(spec, Box::new(host), true)
    }

    /// This engine's identity, for the buffers registered with it.
    fn id(&self) -> usize {
        self.shared.id
    }

    /// Frees a block: its host copy and any device space. Waits for its copies in flight; fails
    /// with [`Error::BlockInUse`] while a guard holds it.
    pub fn free(&self, id: BlockId) -> Result<()> {
        let st = self.lock_live()?;
        let mut st = self.settle(st, id)?;
        st.planner.remove_block(id)?;
        if let Some(n) = st.manual_holds.get_mut(id.index as usize) {
            *n = 0;
        }
        let host = st.hosts[id.index as usize].take();
        st.ram.remove(id.index);
        st.apply_commands(&self.shared);
        drop(st);
        drop(host);
        Ok(())
    }

    /// Writes `data` into the block's host copy at `offset`. If the block is on the device, the
    /// device copy is updated too, so both stay coherent. Waits for the block's copies in flight;
    /// fails with [`Error::BlockInUse`] while a guard holds it.
    pub fn write(&self, id: BlockId, offset: u64, data: &[u8]) -> Result<()> {
        let _io = sync::lock(&self.shared.io);
        let st = self.lock_live()?;
        let st = self.settle(st, id)?;
        st.check_range(id, offset, data.len() as u64)?;
        if st.planner.is_busy(id)? {
            return Err(Error::BlockInUse(id));
        }
        let host = st.host_of(id).0 + offset;
        // SAFETY: the range was checked to lie inside the host copy; no copy of this block is in
        // flight (settled) and the lock keeps new ones from starting; `data` cannot alias the
        // engine's buffer through safe code.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), host as usize as *mut u8, data.len());
        }
        let Some(dev) = st.planner.device_offset(id)? else {
            return Ok(());
        };
        let device = st.arena_base + dev + offset;
        // SAFETY: the device range lies in the block's resident region; no guard held the block
        // (checked) and `io` serialises the other synchronous copies, so nobody else touches it.
        unsafe {
            self.copy_held(
                st,
                id,
                Direction::HostToDevice,
                host as usize as *mut u8,
                device,
                data.len(),
            )
        }
    }

    /// Notes a sticky device error from a driver call made outside the lock.
    fn after_driver_call<T>(&self, r: &Result<T>) {
        if let Err(e @ Error::DeviceLost(_)) = r {
            self.lock().note(&self.shared, e);
            self.shared.work.notify_all();
        }
    }

    /// A synchronous copy (`Backend::copy_now`) outside the state lock, its sticky error noted.
    /// Callers hold `io`, which serialises these copies with each other.
    ///
    /// # Safety
    /// As for [`Backend::copy_now`].
    unsafe fn copy_now(
        &self,
        dir: Direction,
        host: *mut u8,
        device: u64,
        len: usize,
    ) -> Result<()> {
        // SAFETY: forwarded from this function's contract.
        let r = unsafe { self.shared.backend.copy_now(dir, host, device, len) };
        self.after_driver_call(&r);
        r
    }

    /// [`Engine::copy_now`] on a resident block that no guard holds: a hold (not a use) keeps it
    /// where it is while the copy runs with the state lock `st` dropped.
    ///
    /// # Safety
    /// As for [`Backend::copy_now`]; `device..device+len` lies in `id`'s resident region.
    unsafe fn copy_held(
        &self,
        mut st: MutexGuard<'_, State>,
        id: BlockId,
        dir: Direction,
        host: *mut u8,
        device: u64,
        len: usize,
    ) -> Result<()> {
        st.planner.hold(id)?;
        drop(st);
        // SAFETY: forwarded; the hold keeps the device region allocated until `unhold`.
        let r = unsafe { self.copy_now(dir, host, device, len) };
        self.unhold(id);
        r
    }

    /// Reads the block's current bytes at `offset`: from the device if a mutable block was changed
    /// there, else from the host copy.
    pub fn read(&self, id: BlockId, offset: u64, buf: &mut [u8]) -> Result<()> {
        let _io = sync::lock(&self.shared.io);
        let st = self.lock_live()?;
        let st = self.settle(st, id)?;
        st.check_range(id, offset, buf.len() as u64)?;
        match (st.planner.is_dirty(id)?, st.planner.device_offset(id)?) {
            (true, Some(dev)) => {
                let device = st.arena_base + dev + offset;
                // SAFETY: the range lies in the block's resident region; `io` keeps a guard's
                // `write_device` out meanwhile.
                unsafe {
                    self.copy_held(
                        st,
                        id,
                        Direction::DeviceToHost,
                        buf.as_mut_ptr(),
                        device,
                        buf.len(),
                    )?;
                }
            }
            _ => {
                let host = st.host_of(id).0 + offset;
                // SAFETY: the range lies in the host copy; no write-back is in flight (settled).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        host as usize as *const u8,
                        buf.as_mut_ptr(),
                        buf.len(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Declares that `step` uses `block`. Steps run in ascending order, cyclically: after the last
    /// comes the first again, as in token-by-token decoding.
    pub fn declare(&self, step: u64, id: BlockId) -> Result<()> {
        self.lock_live()?.planner.declare(step, id)
    }

    /// Declares that `step` may use `block` with `probability` per pass (a routed expert: `k / n`
    /// of the candidates). Such blocks are loaded when waited for rather than prefetched, and
    /// ranked for eviction by their expected next use. `probability` must lie in (0, 1].
    pub fn declare_candidate(&self, step: u64, id: BlockId, probability: f64) -> Result<()> {
        self.lock_live()?.planner.declare_p(step, id, probability)
    }

    /// A routed step's choice, before the step runs: these of `step`'s declared candidates will
    /// be used at its coming occurrence (the step being run, if it is `step`, else the next one
    /// ahead), each with a probability: 1 for a router's output, less for a guess (a predictor's
    /// accuracy). They are loaded ahead in deadline order like certain uses; a wrong guess costs
    /// at most its own copy. The hint lapses once that occurrence is past; a new hint for the
    /// same step replaces it, an empty one withdraws it. Errors: a step that is not declared, a
    /// block not declared at it ([`Error::NotACandidate`]), a probability outside (0, 1].
    pub fn hint_choice(&self, step: u64, choices: &[(BlockId, f64)]) -> Result<()> {
        let mut st = self.lock_live()?;
        st.planner.hint_choice(step, choices)?;
        st.apply_commands(&self.shared);
        Ok(())
    }

    /// Forgets the declared schedule (to declare a new one).
    pub fn clear_schedule(&self) -> Result<()> {
        self.lock_live()?.planner.clear_schedule();
        Ok(())
    }

    /// Execution is at `step`. The step's blocks stay protected until the next hint or their
    /// [`Engine::release`]; prefetching looks ahead from here.
    pub fn hint(&self, step: u64) -> Result<()> {
        let now = self.now_s();
        let mut st = self.lock_live()?;
        st.planner.hint(step, now);
        st.apply_commands(&self.shared);
        Ok(())
    }

    /// Ends the protection the current step gives `block`.
    pub fn release(&self, id: BlockId) -> Result<()> {
        let mut st = self.lock_live()?;
        st.planner.release(id)?;
        st.apply_commands(&self.shared);
        Ok(())
    }

    /// Returns once `block` is on the device, holding it there until the guard is dropped. A block
    /// the schedule did not predict is loaded on demand, ahead of every prefetch. The guard's
    /// drop is ordered after the work queued on the default stream (stream 0) by then; use
    /// [`Engine::wait_on_stream`] for work on another stream.
    pub fn wait(&self, id: BlockId) -> Result<Guard<'_>> {
        self.wait_on_stream(id, DEFAULT_STREAM)
    }

    /// [`Engine::wait`] for a consumer whose work on the block runs on `stream` (a `CUstream` as
    /// an integer; on sim, a stream of [`SimBackend::create_stream`]): when the guard drops, the
    /// block's memory is reused only after the work queued on `stream` by then has run.
    pub fn wait_on_stream(&self, id: BlockId, stream: u64) -> Result<Guard<'_>> {
        let offset = self.take_hold(id)?;
        let st = self.lock();
        let spec = st.planner.spec(id)?;
        Ok(Guard {
            engine: self,
            id,
            addr: st.arena_base + offset,
            len: spec.size,
            mutable: spec.mutable,
            stream,
        })
    }

    /// Waits until `block` is on the device and takes a hold on it; returns its arena offset.
    fn take_hold(&self, id: BlockId) -> Result<u64> {
        let mut st = self.lock_live()?;
        match st.planner.acquire(id)? {
            Acquire::Ready(offset) => {
                // A hit can still let prefetches (and the evictions they need) through: hand
                // them to the transfer thread now, not at some later call.
                st.apply_commands(&self.shared);
                Ok(offset)
            }
            Acquire::Pending => {
                st.apply_commands(&self.shared);
                let t0 = Instant::now();
                loop {
                    if st.shutdown {
                        st.planner.cancel_wait(id);
                        return Err(Error::ShutDown);
                    }
                    if let Some(e) = st.lost.clone() {
                        st.planner.cancel_wait(id);
                        return Err(e);
                    }
                    if let Some(r) = st.planner.poll_waiter(id) {
                        st.planner.add_stall(t0.elapsed().as_secs_f64());
                        st.apply_commands(&self.shared);
                        return r;
                    }
                    st = sync::wait(&self.shared.ready, st);
                }
            }
        }
    }

    /// Waits for `block` like [`Engine::wait`] and keeps it held until [`Engine::unacquire`]: the
    /// manual form of a [`Guard`], for callers that cannot keep a borrow (the C ABI, Python).
    /// Returns the device address of the block's first byte (a host address on `sim`). Holds
    /// nest: each `acquire` needs its own `unacquire`.
    pub fn acquire(&self, id: BlockId) -> Result<u64> {
        let offset = self.take_hold(id)?;
        let mut st = self.lock();
        st.add_manual_hold(id);
        Ok(st.arena_base + offset)
    }

    /// Another hold on a block that [`Engine::acquire`] holds already, released like any other
    /// with [`Engine::unacquire`] (or `unacquire_on_stream`): for a second owner of the same use
    /// (Python's DLPack export of a held view). It never waits and is not a use: `waits` and
    /// `hits` do not count it. Fails with [`Error::NotHeld`] if no `acquire` holds `block`.
    pub fn acquire_held(&self, id: BlockId) -> Result<u64> {
        let mut st = self.lock_live()?;
        let i = id.index as usize;
        st.planner.spec(id)?;
        if st.manual_holds.get(i).is_none_or(|&n| n == 0) {
            return Err(Error::NotHeld(id));
        }
        let offset = st.planner.hold_again(id)?;
        st.manual_holds[i] += 1;
        Ok(st.arena_base + offset)
    }

    /// Drops one hold taken by [`Engine::acquire`], ordered after the work queued on the
    /// default stream (stream 0) so far. Fails with [`Error::NotHeld`] if `block` has none (a
    /// guard's hold can only be dropped by dropping the guard).
    pub fn unacquire(&self, id: BlockId) -> Result<()> {
        self.unacquire_on_stream(id, DEFAULT_STREAM)
    }

    /// Stream-ordered acquire: [`Engine::acquire`] for work queued on `stream` (a `CUstream` as an
    /// integer, 0 for the default stream). Work queued on `stream` after this returns sees the
    /// block's bytes. A block whose copy is still in flight is not waited for on the host: its
    /// copy is moved ahead of the other prefetches and, once it is on the copy queue, `stream` is
    /// made to wait on its event, so the caller can run ahead of the copy engine. (A load that
    /// then fails cannot be undone for the work queued behind it: the engine fails with
    /// [`Error::DeviceLost`].) A block not on its way is loaded and waited for on the host, as
    /// by `acquire`.
    pub fn acquire_on_stream(&self, id: BlockId, stream: u64) -> Result<u64> {
        let mut st = self.lock_live()?;
        let Some(offset) = st.planner.acquire_in_flight(id)? else {
            drop(st);
            return self.acquire(id);
        };
        st.apply_commands(&self.shared);
        st.queue.make_eager(id);
        self.shared.work.notify_one();
        // The hold is taken; from here every exit either hands it to the caller or drops it.
        let failed = |st: MutexGuard<'_, State>, e: Error| {
            drop(st);
            self.unhold(id);
            Err(e)
        };
        let ticket = loop {
            if st.shutdown {
                return failed(st, Error::ShutDown);
            }
            if let Some(e) = st.lost.clone() {
                return failed(st, e);
            }
            match st.queue.load_ticket(id) {
                LoadTicket::Queued(t) => {
                    // From here a failure of this load cannot be undone: the transfer thread
                    // then fails the engine.
                    st.stream_waits.push(id);
                    break Some(t);
                }
                LoadTicket::Submitting => st = sync::wait(&self.shared.ready, st),
                LoadTicket::Gone if st.planner.residency(id) == Ok(Residency::Resident) => {
                    break None
                }
                LoadTicket::Gone | LoadTicket::Failed => {
                    let e = Error::Transfer {
                        block: id,
                        reason: "its load failed".into(),
                    };
                    return failed(st, e);
                }
            }
        };
        let addr = st.arena_base + offset;
        drop(st);
        if let Some(t) = ticket {
            let r = self.shared.backend.stream_wait(stream, t);
            self.after_driver_call(&r);
            if let Err(e) = r {
                self.unhold(id);
                return Err(e);
            }
        }
        let mut st = self.lock();
        if let Some(e) = st.lost.clone() {
            drop(st);
            self.unhold(id);
            return Err(e);
        }
        st.add_manual_hold(id);
        Ok(addr)
    }

    /// Stream-ordered release of a hold taken by [`Engine::acquire`] / `acquire_on_stream`: the
    /// block's memory is not reused (nor a mutable block written back) before the work queued on
    /// `stream` so far has run: a fence recorded there. If the fence cannot be recorded, the hold
    /// stays with the caller, who may retry.
    pub fn unacquire_on_stream(&self, id: BlockId, stream: u64) -> Result<()> {
        self.lock_live()?.take_manual_hold(id)?;
        if let Err(e) = self.end_use(id, stream) {
            if !matches!(e, Error::DeviceLost(_)) {
                // Undo: the hold stays with the caller, who may retry or unacquire.
                self.lock().add_manual_hold(id);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Records that the caller wrote the device bytes of a mutable block it holds (through its
    /// device pointer, in a kernel): the block is written back before it leaves the device. Only
    /// written blocks are written back; [`Guard::write_device`] marks its block itself.
    pub fn mark_dirty(&self, id: BlockId) -> Result<()> {
        self.lock_live()?.planner.mark_dirty(id)
    }

    /// Ends one hold of `id` after the work queued on `stream` so far: a fence recorded there
    /// (outside the lock) defers the release until it completes. A fence already complete (or
    /// none needed) releases at once. `Err`: nothing was released (except on a lost device,
    /// where nothing will run any more and the hold is dropped).
    fn end_use(&self, id: BlockId, stream: u64) -> Result<()> {
        let backend = &self.shared.backend;
        let fence = match backend.record_fence(stream) {
            Ok(Some(f)) => {
                let mut lost = None;
                let passed = fence_passed(backend.as_ref(), &f, &mut lost);
                if let Some(e) = lost {
                    self.after_driver_call::<()>(&Err(e));
                }
                match passed {
                    Some(true) => {
                        backend.drop_fence(f);
                        None
                    }
                    // Not passed, or not known yet: the transfer thread asks again.
                    Some(false) | None => Some(f),
                }
            }
            Ok(None) => None,
            Err(e @ Error::DeviceLost(_)) => {
                self.after_driver_call::<()>(&Err(e.clone()));
                self.unhold(id);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        match fence {
            None => self.unhold(id),
            Some(f) => {
                let mut st = self.lock();
                st.planner.defer_release(true);
                st.deferred.push((id, f));
                drop(st);
                self.shared.work.notify_one();
            }
        }
        Ok(())
    }

    /// Address of the block's host copy, which the engine owns until [`Engine::free`]. A caller
    /// may fill it directly before the block is first waited for (what the C ABI's
    /// `synapswap_malloc` hands out); later direct writes reach the device only when the block is
    /// next loaded, so use [`Engine::write`] to update a block that may be resident, and never
    /// write it while a copy of the block may be in flight.
    pub fn host_ptr(&self, id: BlockId) -> Result<u64> {
        let st = self.lock_live()?;
        st.planner.spec(id)?;
        Ok(st.host_of(id).0)
    }

    fn unhold(&self, id: BlockId) {
        let mut st = self.lock();
        st.planner.unhold(id);
        if !st.shutdown {
            st.apply_commands(&self.shared);
        }
    }

    /// Whether anything holds `id` (see [`Planner::is_held`](crate::planner::Planner::is_held)):
    /// [`Engine::free`] of a held block fails.
    pub fn is_held(&self, id: BlockId) -> Result<bool> {
        self.lock_live()?.planner.is_held(id)
    }

    /// Where the block is now.
    pub fn residency(&self, id: BlockId) -> Result<Residency> {
        self.lock_live()?.planner.residency(id)
    }

    /// Whether a resident mutable block holds device bytes newer than its host copy (it will be
    /// written back before it leaves the device).
    pub fn is_dirty(&self, id: BlockId) -> Result<bool> {
        self.lock_live()?.planner.is_dirty(id)
    }

    /// The block's spec.
    pub fn spec(&self, id: BlockId) -> Result<BlockSpec> {
        self.lock_live()?.planner.spec(id).cloned()
    }

    /// A snapshot of the statistics (also after shutdown).
    pub fn stats(&self) -> Stats {
        self.lock().planner.stats()
    }

    /// Whether the keep plan in force keeps `id` resident on the device for good (else it
    /// streams).
    pub fn is_kept(&self, id: BlockId) -> Result<bool> {
        self.lock().planner.is_kept(id)
    }

    /// Whether the RAM tier keeps `id`'s host bytes cached in RAM (`ram_tier.rs`; false for a
    /// block not cut from a file mapping).
    pub fn is_cached_in_ram(&self, id: BlockId) -> Result<bool> {
        let mut st = self.lock();
        let State { ram, planner, .. } = &mut *st;
        planner.residency(id)?;
        ram.refresh(planner);
        Ok(ram.is_cached(id.index))
    }

    /// The RAM tier over file-backed blocks ([`Engine::register_mapping`]).
    pub fn ram_tier(&self) -> RamTierStats {
        use std::sync::atomic::Ordering::Relaxed;
        let (cap_bytes, cached_bytes, direct_reads_off) = {
            let mut st = self.lock();
            let State { ram, planner, .. } = &mut *st;
            ram.refresh(planner);
            (
                ram.cap(),
                ram.cached_bytes(),
                ram.direct_off().map(str::to_string),
            )
        };
        RamTierStats {
            cap_bytes,
            cached_bytes,
            pages_checked: self.shared.page_cache.checked.load(Relaxed),
            pages_resident: self.shared.page_cache.resident.load(Relaxed),
            disk_bytes_per_s: (self.shared.page_cache.disk.lock()).map_or(0.0, |d| d.bytes_per_s()),
            direct_bytes_read: self.shared.page_cache.direct.load(Relaxed),
            direct_busy_s: self.shared.page_cache.direct_busy_ns.load(Relaxed) as f64 * 1e-9,
            direct_reads_off,
        }
    }

    /// Whether [`Engine::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.lock().shutdown
    }

    /// Stops the engine: every blocked waiter returns [`Error::ShutDown`], copies in flight finish,
    /// the transfer thread exits and every host copy is freed. Later calls return
    /// [`Error::ShutDown`]; [`Engine::stats`] still answers. The device pool itself is freed when
    /// the engine is dropped (guards may still point into it). Idempotent.
    pub fn shutdown(&self) {
        let ram_threads;
        {
            let mut st = self.lock();
            st.shutdown = true;
            ram_threads = st.ram.close();
        }
        // The advisor gives what was sent to it, then ends: after this, no advice reaches
        // memory the caller may unmap once the engine is shut down. The disk readers end once
        // the reads sent to them are done (into the tier's own memory).
        for t in ram_threads {
            let _ = t.join();
        }
        self.shared.ready.notify_all();
        self.shared.work.notify_all();
        if let Some(t) = sync::lock(&self.thread).take() {
            // The transfer thread does not panic on its own; if it did, the state it leaves is
            // still consistent (every unlock point is), so shutdown goes on.
            let _ = t.join();
        }
        // Stream-ordered releases still running: their kernels may write the blocks that are
        // written back below, and read memory freed with the engine. Wait for their fences
        // (nothing runs any more on a lost device).
        loop {
            let st = poll_fences(&self.shared, self.lock(), true);
            if st.deferred.is_empty() {
                break;
            }
            drop(st);
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        // A caller-owned mutable block keeps the engine's only copy of what was written on the
        // device: copy it into the caller's buffer before the device memory goes.
        let (dirty, lost) = {
            let st = self.lock();
            let dirty: Vec<(u64, u64, u64)> = st
                .planner
                .dirty_resident()
                .into_iter()
                .filter_map(|(id, offset, size)| {
                    let i = id.index as usize;
                    let host = st.hosts.get(i)?.as_ref()?.addr();
                    (st.external.get(i) == Some(&true)).then_some((
                        host,
                        st.arena_base + offset,
                        size,
                    ))
                })
                .collect();
            (dirty, st.lost.is_some())
        };
        if !lost {
            for (host, device, size) in dirty {
                // SAFETY: the host range is the block's caller-owned host copy (alive until the
                // caller's `free`, past this engine's shutdown, by `alloc_external`'s contract);
                // the device range is its resident region; the transfer thread has exited and
                // every release's fence completed, so nothing else touches either.
                let r = unsafe {
                    self.copy_now(
                        Direction::DeviceToHost,
                        host as usize as *mut u8,
                        device,
                        size as usize,
                    )
                };
                if r.is_err() {
                    break;
                }
            }
        }
        let (hosts, deferred) = {
            let mut st = self.lock();
            (
                std::mem::take(&mut st.hosts),
                std::mem::take(&mut st.deferred),
            )
        };
        for (_, fence) in deferred {
            self.shared.backend.drop_fence(fence);
        }
        drop(hosts);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Proof that a block is on the device; it cannot be evicted while this exists.
pub struct Guard<'a> {
    engine: &'a Engine,
    id: BlockId,
    addr: u64,
    len: u64,
    mutable: bool,
    /// The consumer's stream: the release is ordered after the work queued there.
    stream: u64,
}

impl fmt::Debug for Guard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("block", &self.id)
            .field("device_ptr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .finish()
    }
}

impl Guard<'_> {
    /// The block.
    pub fn block(&self) -> BlockId {
        self.id
    }
    /// Device address of the block's first byte (a host address on `sim`).
    pub fn device_ptr(&self) -> u64 {
        self.addr
    }
    /// Block size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether the block is empty (never: blocks have at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device bytes, where the host can address them (`sim`) and the block is immutable
    /// (so nothing writes them while this borrow lives).
    pub fn as_slice(&self) -> Option<&[u8]> {
        if !self.engine.shared.host_addressable || self.mutable {
            return None;
        }
        // SAFETY: on a host-addressable backend the device region is host memory owned by the
        // arena, which lives as long as the engine this guard borrows. The guard keeps the block
        // resident (never evicted, so the region is not reused), and an immutable block's device
        // bytes are written only while it loads, before any guard exists.
        Some(unsafe {
            std::slice::from_raw_parts(self.addr as usize as *const u8, self.len as usize)
        })
    }

    /// Copies device bytes at `offset` into `buf`.
    pub fn read_device(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len())?;
        let _io = sync::lock(&self.engine.shared.io);
        // SAFETY: the range lies inside the block's resident region (checked), which this guard
        // keeps allocated; `io` serialises it with `write_device` and the engine's own copies.
        unsafe {
            self.engine.copy_now(
                Direction::DeviceToHost,
                buf.as_mut_ptr(),
                self.addr + offset,
                buf.len(),
            )
        }
    }

    /// Writes `data` into the device copy at `offset` (mutable blocks only). The change reaches the
    /// host copy when the block is written back before eviction.
    pub fn write_device(&self, offset: u64, data: &[u8]) -> Result<()> {
        if !self.mutable {
            return Err(Error::NotMutable(self.id));
        }
        self.check(offset, data.len())?;
        self.engine.lock_live()?.planner.mark_dirty(self.id)?;
        let _io = sync::lock(&self.engine.shared.io);
        // SAFETY: as in `read_device`; `as_slice` is never handed out for mutable blocks, so no
        // shared borrow of these bytes exists.
        unsafe {
            self.engine.copy_now(
                Direction::HostToDevice,
                data.as_ptr() as *mut u8,
                self.addr + offset,
                data.len(),
            )
        }
    }

    fn check(&self, offset: u64, len: usize) -> Result<()> {
        let len = len as u64;
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::OutOfBounds {
                offset,
                len,
                size: self.len,
            });
        }
        Ok(())
    }
}

impl Drop for Guard<'_> {
    /// Ends the use after the work queued on the guard's stream so far. If no fence can be
    /// recorded there (a transient driver error), the hold is kept: the block stays resident
    /// until it is freed or the engine shuts down, since reusing memory a kernel may still read
    /// would be worse than losing its room.
    fn drop(&mut self) {
        let _ = self.engine.end_use(self.id, self.stream);
    }
}
