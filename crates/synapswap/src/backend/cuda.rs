//! The CUDA backend: the driver API through cudarc, loaded at run time.
//!
//! Every build compiles without CUDA: cudarc's dynamic loading opens the driver library
//! ([`DRIVER_LIBRARY`]: `libcuda.so` on Linux, `nvcuda.dll` on Windows, which the display driver
//! installs in System32) on first use and panics if it is missing, so [`available`] checks for the library (and a device) first and
//! nothing here touches the driver before that check succeeded.
//!
//! - Device arena: one `cuMemAlloc` of the budget.
//! - Host copies: page-locked memory from `cuMemHostAlloc(PORTABLE)`, not write-combined, since
//!   the CPU reads it too (verification, write-backs); or a caller's buffer registered in place
//!   with `cuMemHostRegister` ([`Backend::register_host`]), so it is not copied twice. Pinned
//!   and registered bytes are counted exactly.
//! - Copies go on two dedicated non-blocking streams (loads, and write-backs so that D2H overlaps
//!   H2D); each submitted copy records an event (`BLOCKING_SYNC`: a waiting thread sleeps instead
//!   of spinning), and [`Backend::wait`] synchronises on that event only.
//! - Every call pushes the device's primary context for its duration and pops it after, so a
//!   caller's own current context is never replaced.
//! - Sticky driver errors (illegal address, launch failure, ECC, ...) become
//!   [`Error::DeviceLost`]; the rest (out of memory, bad arguments) are transient.
//! - Stream-ordered release: [`Backend::record_fence`] records an event on the consumer's stream;
//!   the engine keeps the block's memory until that event has completed.
//! - Teardown tolerates a driver that is already shutting down: errors in drop are ignored.

use std::collections::VecDeque;
use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cudarc::driver::sys;

use super::{Backend, BackendInfo, DevicePtr, Direction, Fence, Memory, Segment, Ticket};
use crate::sync::{self, Mutex};
use crate::{Error, Result};

fn describe(r: sys::CUresult) -> String {
    let mut s: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: the driver library is loaded (every caller ran `available` first); the out pointer
    // is valid; on success the driver returns a static NUL-terminated string.
    let ok = unsafe { sys::cuGetErrorString(r, &mut s) } == sys::CUresult::CUDA_SUCCESS;
    if ok && !s.is_null() {
        // SAFETY: a static NUL-terminated string from the driver.
        let msg = unsafe { CStr::from_ptr(s) }.to_string_lossy();
        format!("{r:?}: {msg}")
    } else {
        format!("{r:?}")
    }
}

/// Errors after which the context is unusable (CUDA's "sticky" errors: every later call in the
/// context fails with them).
fn is_sticky(r: sys::CUresult) -> bool {
    use sys::CUresult as R;
    matches!(
        r,
        R::CUDA_ERROR_DEINITIALIZED
            | R::CUDA_ERROR_ECC_UNCORRECTABLE
            | R::CUDA_ERROR_ILLEGAL_ADDRESS
            | R::CUDA_ERROR_LAUNCH_TIMEOUT
            | R::CUDA_ERROR_CONTEXT_IS_DESTROYED
            | R::CUDA_ERROR_ASSERT
            | R::CUDA_ERROR_HARDWARE_STACK_ERROR
            | R::CUDA_ERROR_ILLEGAL_INSTRUCTION
            | R::CUDA_ERROR_MISALIGNED_ADDRESS
            | R::CUDA_ERROR_INVALID_ADDRESS_SPACE
            | R::CUDA_ERROR_INVALID_PC
            | R::CUDA_ERROR_LAUNCH_FAILED
            | R::CUDA_ERROR_UNKNOWN
    )
}

fn check(r: sys::CUresult, what: &str) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    let msg = format!("CUDA {what} failed: {}", describe(r));
    Err(if is_sticky(r) {
        Error::DeviceLost(msg)
    } else {
        Error::Backend(msg)
    })
}

/// The CUDA driver library cudarc opens on this platform (it tries `cuda` and `nvcuda` with the
/// platform's prefix and suffix, so `nvcuda.dll` on Windows).
pub const DRIVER_LIBRARY: &str = if cfg!(windows) {
    "nvcuda.dll"
} else {
    "libcuda.so"
};

/// Device memory a pool leaves free: 1/64 of the device, at least 256 MiB (assumed, not
/// measured: room for the caller's CUDA context growth, cuBLAS workspaces and other processes'
/// allocations between the check and the kernels). On Windows the WDDM driver's "sysmem fallback
/// policy" (CUDA 12.2+ on 536.40+ drivers, default on) lets an allocation past free VRAM succeed
/// in shared system memory, where every access crosses PCIe and the engine's streaming is worse
/// than useless; a pool that fits with this margin never gets there. The README says how to turn
/// that fallback off.
pub fn vram_margin(total: u64) -> u64 {
    (256u64 << 20).max(total / 64)
}

/// A pool of `bytes` fits in `free` of `total` device bytes with [`vram_margin`] to spare, or
/// the up-front error with all four figures.
pub fn fits_free_vram(bytes: u64, free: u64, total: u64) -> Result<()> {
    let margin = vram_margin(total);
    if bytes.checked_add(margin).is_none_or(|n| n > free) {
        return Err(Error::DeviceMemory {
            needed: bytes,
            margin,
            free,
            total,
        });
    }
    Ok(())
}

/// Whether CUDA can be used: the driver library loads, initialises, and reports at least one
/// device. Returns the device count, or why not. Never panics.
pub fn available() -> std::result::Result<usize, String> {
    // Looking for the library walks the loader's search path (hundreds of failed opens when it is
    // absent), so it is done once per process: engines created in a loop (the C ABI's
    // `backend = AUTO`) pay for it once.
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: loading a shared library by name; cudarc's check has no other precondition.
    if !*PRESENT.get_or_init(|| unsafe { sys::is_culib_present() }) {
        return Err(format!(
            "the CUDA driver library ({DRIVER_LIBRARY}) is not installed"
        ));
    }
    // SAFETY: the library is present, so cudarc's lazy loader succeeds.
    let r = unsafe { sys::cuInit(0) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(format!("cuInit failed: {}", describe(r)));
    }
    let mut n = 0;
    // SAFETY: initialised; valid out pointer.
    let r = unsafe { sys::cuDeviceGetCount(&mut n) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(format!("cuDeviceGetCount failed: {}", describe(r)));
    }
    if n <= 0 {
        return Err("the CUDA driver reports no device".into());
    }
    Ok(n as usize)
}

/// The device's primary context, retained; released when the last user (backend or memory)
/// is gone.
#[derive(Debug)]
struct Context {
    ctx: sys::CUcontext,
    dev: sys::CUdevice,
}

// SAFETY: a CUDA context handle may be used from any thread (each thread makes it current
// before use); the handle itself is immutable here.
unsafe impl Send for Context {}
// SAFETY: as above; no interior state.
unsafe impl Sync for Context {}

impl Context {
    /// Makes the context current on this thread until the returned value drops, which restores
    /// whatever context the caller had current (a caller's own context survives every call).
    fn bind(&self) -> Result<Bound> {
        // SAFETY: a retained primary context; pushing is per calling thread and undone by the
        // pop in `Bound::drop`.
        let r = unsafe { sys::cuCtxPushCurrent_v2(self.ctx) };
        check(r, "cuCtxPushCurrent")?;
        Ok(Bound(std::marker::PhantomData))
    }
}

/// The context pushed by [`Context::bind`] on this thread (not `Send`: it must pop there).
struct Bound(std::marker::PhantomData<*const ()>);

impl Drop for Bound {
    fn drop(&mut self) {
        let mut ctx = std::ptr::null_mut();
        // SAFETY: pops the context `bind` pushed on this same thread (`Bound` is not `Send`).
        let _ = unsafe { sys::cuCtxPopCurrent_v2(&mut ctx) };
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: releases the retain taken in `CudaBackend::new`; errors (a driver shutting
        // down) are ignored, nothing can be done about them in drop.
        let _ = unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.dev) };
    }
}

/// Device memory from `cuMemAlloc`.
#[derive(Debug)]
struct DeviceMem {
    ptr: sys::CUdeviceptr,
    len: u64,
    ctx: Arc<Context>,
}

impl Memory for DeviceMem {
    fn addr(&self) -> u64 {
        self.ptr
    }
    fn len(&self) -> u64 {
        self.len
    }
}

impl Drop for DeviceMem {
    fn drop(&mut self) {
        if let Ok(_ctx) = self.ctx.bind() {
            // SAFETY: allocated by cuMemAlloc in this context and freed once; nothing uses it
            // after the engine dropped it. Errors at teardown are ignored.
            let _ = unsafe { sys::cuMemFree_v2(self.ptr) };
        }
    }
}

/// Page-locked host memory: allocated (`cuMemHostAlloc`) or registered in place.
#[derive(Debug)]
struct HostMem {
    ptr: *mut c_void,
    len: u64,
    registered: bool,
    counter: Arc<AtomicU64>,
    ctx: Arc<Context>,
}

// SAFETY: the pointer is a plain host allocation owned by this value; the engine synchronises
// every access to its bytes.
unsafe impl Send for HostMem {}
// SAFETY: as above.
unsafe impl Sync for HostMem {}

impl Memory for HostMem {
    fn addr(&self) -> u64 {
        self.ptr as u64
    }
    fn len(&self) -> u64 {
        self.len
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.len, Ordering::Relaxed);
        let Ok(_ctx) = self.ctx.bind() else {
            return;
        };
        // SAFETY: the pointer came from cuMemHostAlloc / cuMemHostRegister in this context and
        // is released once; errors at teardown are ignored.
        let _ = unsafe {
            if self.registered {
                sys::cuMemHostUnregister(self.ptr)
            } else {
                sys::cuMemFreeHost(self.ptr)
            }
        };
    }
}

#[derive(Debug, Default)]
struct Queue {
    /// Submitted copies not yet known complete: (ticket, event).
    pending: VecDeque<(u64, usize, Direction)>,
    next: u64,
    spare: Vec<usize>,
    /// A failure makes the stream unusable: every later wait reports it.
    failed: Option<String>,
}

/// The CUDA backend (one device).
#[derive(Debug)]
pub struct CudaBackend {
    ctx: Arc<Context>,
    ordinal: usize,
    name: String,
    /// Host-to-device copies.
    stream: usize,
    /// Device-to-host copies (write-backs), so they overlap loads on the other copy engine.
    wb_stream: usize,
    /// Synchronous copies (`copy_now`): issued and waited for here.
    sync_stream: usize,
    queue: Mutex<Queue>,
    pinned: Arc<AtomicU64>,
    registered: Arc<AtomicU64>,
}

impl CudaBackend {
    /// Opens device `ordinal`: retains its primary context and creates the copy stream.
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        let count = available().map_err(|why| Error::BackendUnavailable {
            name: "cuda".into(),
            reason: why,
        })?;
        if ordinal >= count {
            return Err(Error::BackendUnavailable {
                name: "cuda".into(),
                reason: format!("device {ordinal} does not exist ({count} present)"),
            });
        }
        let mut dev = 0;
        // SAFETY: the driver is initialised (`available`); valid out pointer.
        let r = unsafe { sys::cuDeviceGet(&mut dev, ordinal as i32) };
        check(r, "cuDeviceGet")?;
        let mut ctx = std::ptr::null_mut();
        // SAFETY: a valid device; valid out pointer.
        let r = unsafe { sys::cuDevicePrimaryCtxRetain(&mut ctx, dev) };
        check(r, "cuDevicePrimaryCtxRetain")?;
        let ctx = Arc::new(Context { ctx, dev });
        let _bound = ctx.bind()?;
        let mut name = [0 as std::ffi::c_char; 256];
        // SAFETY: a 256-byte buffer and its length.
        let r = unsafe { sys::cuDeviceGetName(name.as_mut_ptr(), 256, dev) };
        check(r, "cuDeviceGetName")?;
        // SAFETY: the driver NUL-terminates within the buffer.
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let mut stream = std::ptr::null_mut();
        // SAFETY: the context is current; valid out pointer. Non-blocking: the copy stream never
        // waits for the legacy default stream, so copies overlap the caller's kernels.
        let r = unsafe {
            sys::cuStreamCreate(
                &mut stream,
                sys::CUstream_flags_enum::CU_STREAM_NON_BLOCKING as u32,
            )
        };
        check(r, "cuStreamCreate")?;
        let mut wb_stream = std::ptr::null_mut();
        // SAFETY: as above.
        let r = unsafe {
            sys::cuStreamCreate(
                &mut wb_stream,
                sys::CUstream_flags_enum::CU_STREAM_NON_BLOCKING as u32,
            )
        };
        check(r, "cuStreamCreate")?;
        let mut sync_stream = std::ptr::null_mut();
        // SAFETY: as above.
        let r = unsafe {
            sys::cuStreamCreate(
                &mut sync_stream,
                sys::CUstream_flags_enum::CU_STREAM_NON_BLOCKING as u32,
            )
        };
        check(r, "cuStreamCreate")?;
        drop(_bound);
        Ok(CudaBackend {
            ctx,
            ordinal,
            name,
            stream: stream as usize,
            wb_stream: wb_stream as usize,
            sync_stream: sync_stream as usize,
            queue: Mutex::new(Queue {
                next: 1,
                ..Queue::default()
            }),
            pinned: Arc::new(AtomicU64::new(0)),
            registered: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The device's name.
    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// Free and total device memory in bytes.
    pub fn mem_info(&self) -> Result<(u64, u64)> {
        let _ctx = self.ctx.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: the context is current; valid out pointers.
        let r = unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) };
        check(r, "cuMemGetInfo")?;
        Ok((free as u64, total as u64))
    }

    /// Page-locked bytes this backend allocated (`alloc_host`) and has not freed.
    pub fn pinned_bytes(&self) -> u64 {
        self.pinned.load(Ordering::Relaxed)
    }

    /// Bytes of caller buffers registered in place and not yet unregistered.
    pub fn registered_bytes(&self) -> u64 {
        self.registered.load(Ordering::Relaxed)
    }

    /// Page-locks a caller's buffer in place (`cuMemHostRegister`), so copies from it run at DMA
    /// speed without a second copy in RAM; unregistered when the returned memory is dropped.
    /// `read_only` lets the driver register read-only mappings (a model file mapped from disk).
    ///
    /// # Safety
    /// `ptr..ptr+len` must be a live host allocation that outlives the returned value and is not
    /// registered already.
    unsafe fn register_in_place(
        &self,
        ptr: *mut u8,
        len: u64,
        read_only: bool,
    ) -> Result<Box<dyn Memory>> {
        let _ctx = self.ctx.bind()?;
        let mut flags = sys::CU_MEMHOSTREGISTER_PORTABLE;
        if read_only {
            flags |= sys::CU_MEMHOSTREGISTER_READ_ONLY;
        }
        // SAFETY: guaranteed by the caller.
        let r = unsafe { sys::cuMemHostRegister_v2(ptr.cast(), len as usize, flags) };
        if r == sys::CUresult::CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED {
            return Err(Error::AlreadyRegistered {
                addr: ptr as u64,
                len,
            });
        }
        check(r, "cuMemHostRegister")?;
        self.registered.fetch_add(len, Ordering::Relaxed);
        Ok(Box::new(HostMem {
            ptr: ptr.cast(),
            len,
            registered: true,
            counter: self.registered.clone(),
            ctx: self.ctx.clone(),
        }))
    }

    fn event(&self, q: &mut Queue) -> Result<usize> {
        if let Some(e) = q.spare.pop() {
            return Ok(e);
        }
        let mut e = std::ptr::null_mut();
        // SAFETY: the context is current (callers bind first); valid out pointer. Blocking
        // sync: the transfer thread sleeps in `cuEventSynchronize` instead of spinning a core.
        let r = unsafe {
            sys::cuEventCreate(
                &mut e,
                sys::CUevent_flags_enum::CU_EVENT_DISABLE_TIMING as u32
                    | sys::CUevent_flags_enum::CU_EVENT_BLOCKING_SYNC as u32,
            )
        };
        check(r, "cuEventCreate")?;
        Ok(e as usize)
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        let Ok(_ctx) = self.ctx.bind() else {
            return;
        };
        let q = std::mem::take(&mut *sync::lock(&self.queue));
        // SAFETY: our own stream and events, destroyed once; errors (a driver shutting down)
        // are ignored.
        unsafe {
            let _ = sys::cuStreamSynchronize(self.stream as sys::CUstream);
            let _ = sys::cuStreamSynchronize(self.wb_stream as sys::CUstream);
            for e in q.pending.iter().map(|p| p.1).chain(q.spare) {
                let _ = sys::cuEventDestroy_v2(e as sys::CUevent);
            }
            let _ = sys::cuStreamDestroy_v2(self.stream as sys::CUstream);
            let _ = sys::cuStreamDestroy_v2(self.wb_stream as sys::CUstream);
            let _ = sys::cuStreamDestroy_v2(self.sync_stream as sys::CUstream);
        }
    }
}

/// Queues an async copy of `len` bytes between `host` and `device` on `stream`.
///
/// # Safety
/// Both ranges must be valid for the copy (the host one readable or writable as `dir` needs),
/// and stay so, untouched by anyone else, until the stream has passed the copy; `stream` must be
/// a live stream of the current context.
unsafe fn copy_async(
    dir: Direction,
    host: *mut u8,
    device: DevicePtr,
    len: usize,
    stream: sys::CUstream,
) -> sys::CUresult {
    // SAFETY: this function's contract.
    unsafe {
        match dir {
            Direction::HostToDevice => {
                sys::cuMemcpyHtoDAsync_v2(device, host.cast_const().cast(), len, stream)
            }
            Direction::DeviceToHost => sys::cuMemcpyDtoHAsync_v2(host.cast(), device, len, stream),
        }
    }
}

impl Backend for CudaBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "cuda",
            description: format!(
                "{} (CUDA device {}, pinned host memory)",
                self.name, self.ordinal
            ),
            modelled_h2d_bytes_per_s: None,
        }
    }

    fn alloc_device(&self, bytes: u64) -> Result<Box<dyn Memory>> {
        let (free, total) = self.mem_info()?;
        fits_free_vram(bytes, free, total)?;
        let _ctx = self.ctx.bind()?;
        let mut ptr = 0;
        // SAFETY: the context is current; valid out pointer.
        let r = unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes.max(1) as usize) };
        if r == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            // Taken between the check and the allocation (another process, fragmentation).
            let (free, total) = self.mem_info().unwrap_or((0, 0));
            return Err(Error::DeviceMemory {
                needed: bytes,
                margin: vram_margin(total),
                free,
                total,
            });
        }
        check(r, "cuMemAlloc")?;
        Ok(Box::new(DeviceMem {
            ptr,
            len: bytes,
            ctx: self.ctx.clone(),
        }))
    }

    fn alloc_host(&self, bytes: u64) -> Result<Box<dyn Memory>> {
        let _ctx = self.ctx.bind()?;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: the context is current; valid out pointer. PORTABLE without WRITECOMBINED:
        // the CPU reads these bytes too.
        let r = unsafe {
            sys::cuMemHostAlloc(
                &mut ptr,
                bytes.max(1) as usize,
                sys::CU_MEMHOSTALLOC_PORTABLE,
            )
        };
        if r == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            return Err(Error::OutOfHostMemory(bytes));
        }
        check(r, "cuMemHostAlloc")?;
        // SAFETY: a fresh allocation of at least `bytes` bytes; host copies start zeroed.
        unsafe { std::ptr::write_bytes(ptr.cast::<u8>(), 0, bytes as usize) };
        self.pinned.fetch_add(bytes, Ordering::Relaxed);
        Ok(Box::new(HostMem {
            ptr,
            len: bytes,
            registered: false,
            counter: self.pinned.clone(),
            ctx: self.ctx.clone(),
        }))
    }

    fn host_addressable(&self) -> bool {
        false
    }

    /// Four: the DMA engine always has the next chunks queued while the transfer thread wakes.
    fn pipeline_depth(&self) -> usize {
        4
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

    /// One submission of many: every segment's async copy on the copy stream, then one event
    /// after the last (the transfer thread makes one call, and the driver records one event, per
    /// batch). Not `cuMemcpyBatchAsync`: it would also fold the per-copy launches into one, but
    /// no GPU has run it here yet (a next step to measure on one). If a copy fails to queue, the
    /// stream is synchronized before the error returns, so none of the batch is still running.
    unsafe fn submit_batch(&self, dir: Direction, segments: &[Segment]) -> Result<Ticket> {
        if segments.is_empty() {
            return Err(Error::Backend("an empty batch of copies".into()));
        }
        let _ctx = self.ctx.bind()?;
        let mut q = sync::lock(&self.queue);
        if let Some(e) = &q.failed {
            return Err(Error::DeviceLost(e.clone()));
        }
        let stream = match dir {
            Direction::HostToDevice => self.stream,
            Direction::DeviceToHost => self.wb_stream,
        } as sys::CUstream;
        for s in segments {
            let (host, device, len) = (s.host as usize as *mut u8, s.device, s.len as usize);
            // SAFETY: the caller guarantees every range stays valid and unshared until `wait`
            // returns for this ticket; the host range is page-locked (or pageable: still
            // correct, only slower).
            let r = unsafe { copy_async(dir, host, device, len, stream) };
            if let Err(e) = check(r, "cuMemcpyAsync") {
                // SAFETY: our stream, in the current context.
                let _ = unsafe { sys::cuStreamSynchronize(stream) };
                return Err(e);
            }
        }
        // Without an event nothing could wait for the copies: let them finish first.
        let drain = || {
            // SAFETY: our stream, in the current context (bound above, for this whole call).
            unsafe { sys::cuStreamSynchronize(stream) }
        };
        let event = match self.event(&mut q) {
            Ok(e) => e,
            Err(e) => {
                let _ = drain();
                return Err(e);
            }
        };
        // SAFETY: our event and stream, in the current context.
        let r = unsafe { sys::cuEventRecord(event as sys::CUevent, stream) };
        if let Err(e) = check(r, "cuEventRecord") {
            q.spare.push(event);
            let _ = drain();
            return Err(e);
        }
        let ticket = q.next;
        q.next += 1;
        q.pending.push_back((ticket, event, dir));
        Ok(Ticket(ticket))
    }

    fn wait(&self, ticket: Ticket) -> Result<()> {
        let event = {
            let q = sync::lock(&self.queue);
            if let Some(e) = &q.failed {
                return Err(Error::DeviceLost(e.clone()));
            }
            if ticket.0 >= q.next {
                return Err(Error::Backend(format!("unknown copy ticket {}", ticket.0)));
            }
            match q.pending.iter().find(|p| p.0 == ticket.0) {
                Some(&(_, e, dir)) => (e, dir),
                // Issued and no longer pending: it completed.
                None => return Ok(()),
            }
        };
        let (event, dir) = event;
        let _ctx = self.ctx.bind()?;
        // SAFETY: an event recorded on our stream; not destroyed while pending (only `wait`
        // recycles it, below, after the synchronisation).
        let r = unsafe { sys::cuEventSynchronize(event as sys::CUevent) };
        let mut q = sync::lock(&self.queue);
        if let Err(e) = check(r, "copy") {
            // A copy that failed on the stream leaves it (and the context) unusable.
            q.failed = Some(e.to_string());
            return Err(Error::DeviceLost(e.to_string()));
        }
        // Complete: this copy and every earlier one on its stream (each direction has its own
        // in-order stream; the other direction's copies finish in their own order).
        let mut kept = VecDeque::with_capacity(q.pending.len());
        for p in std::mem::take(&mut q.pending) {
            if p.2 == dir && p.0 <= ticket.0 {
                q.spare.push(p.1);
            } else {
                kept.push_back(p);
            }
        }
        q.pending = kept;
        Ok(())
    }

    unsafe fn copy_now(
        &self,
        dir: Direction,
        host: *mut u8,
        device: DevicePtr,
        len: usize,
    ) -> Result<()> {
        let _ctx = self.ctx.bind()?;
        // Not `cuMemcpyHtoD`: from pageable memory it returns once the bytes are staged, before
        // they land, and the DMA is ordered only with the legacy stream. An async copy on our
        // own stream and a synchronisation of that stream return once the bytes are there.
        let stream = self.sync_stream as sys::CUstream;
        // SAFETY: forwarded from the caller's contract; both ranges stay valid until the stream
        // synchronisation below returns.
        let r = unsafe { copy_async(dir, host, device, len, stream) };
        check(r, "cuMemcpyAsync (synchronous copy)")?;
        // SAFETY: our own stream.
        let r = unsafe { sys::cuStreamSynchronize(stream) };
        check(r, "cuMemcpy")
    }

    unsafe fn register_host(
        &self,
        ptr: *mut u8,
        len: u64,
        read_only: bool,
    ) -> Result<Box<dyn Memory>> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { self.register_in_place(ptr, len, read_only) }
    }

    fn stream_wait(&self, stream: u64, ticket: Ticket) -> Result<()> {
        let _ctx = self.ctx.bind()?;
        // Under the queue's lock, so `wait` cannot recycle the event meanwhile.
        let q = sync::lock(&self.queue);
        let Some(&(_, event, _)) = q.pending.iter().find(|p| p.0 == ticket.0) else {
            return Ok(());
        };
        // SAFETY: a pending event recorded on our copy stream; `stream` is the caller's CUstream
        // in this context (0: the legacy default stream).
        let r =
            unsafe { sys::cuStreamWaitEvent(stream as sys::CUstream, event as sys::CUevent, 0) };
        check(r, "cuStreamWaitEvent")
    }

    fn record_fence(&self, stream: u64) -> Result<Option<Fence>> {
        let _ctx = self.ctx.bind()?;
        let event = {
            let mut q = sync::lock(&self.queue);
            self.event(&mut q)?
        };
        // SAFETY: our event; `stream` is the caller's CUstream in this context (0: the legacy
        // default stream), as the API documents.
        let r = unsafe { sys::cuEventRecord(event as sys::CUevent, stream as sys::CUstream) };
        if let Err(e) = check(r, "cuEventRecord (release)") {
            sync::lock(&self.queue).spare.push(event);
            return Err(e);
        }
        Ok(Some(Fence(event as u64)))
    }

    fn fence_done(&self, fence: &Fence) -> Result<bool> {
        let _ctx = self.ctx.bind()?;
        // SAFETY: an event from `record_fence`, not yet returned.
        let r = unsafe { sys::cuEventQuery(fence.0 as sys::CUevent) };
        match r {
            sys::CUresult::CUDA_SUCCESS => Ok(true),
            sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            r => check(r, "cuEventQuery").map(|()| true),
        }
    }

    fn drop_fence(&self, fence: Fence) {
        sync::lock(&self.queue).spare.push(fence.0 as usize);
    }
}

/// A kernel that spins for a number of clock cycles: PTX the driver compiles for whatever GPU is
/// present (no nvrtc), used by the probe to see whether copies overlap compute.
const SPIN_PTX: &str = "
.version 7.0
.target sm_50
.address_size 64
.visible .entry spin(.param .u64 cycles)
{
    .reg .pred %p;
    .reg .u64 %rd<5>;
    ld.param.u64 %rd1, [cycles];
    mov.u64 %rd2, %clock64;
LOOP:
    mov.u64 %rd3, %clock64;
    sub.u64 %rd4, %rd3, %rd2;
    setp.lt.u64 %p, %rd4, %rd1;
    @%p bra LOOP;
    ret;
}
\0";

impl CudaBackend {
    /// `synapswap probe` on this device: the generic bandwidth rounds plus device memory and the
    /// copy-under-kernel overlap test.
    pub fn probe(&self, total: u64) -> Result<crate::probe::ProbeReport> {
        let mut r = crate::probe::probe(self, total)?;
        let (free, all) = self.mem_info()?;
        r.free_bytes = Some(free);
        r.total_bytes = Some(all);
        r.overlap = Some(self.overlap(total)?);
        Ok(r)
    }

    fn overlap(&self, total: u64) -> Result<crate::probe::Overlap> {
        let _ctx = self.ctx.bind()?;
        let mut module = std::ptr::null_mut();
        // SAFETY: a NUL-terminated PTX image; valid out pointer; the context is current.
        let r = unsafe { sys::cuModuleLoadData(&mut module, SPIN_PTX.as_ptr().cast()) };
        check(r, "cuModuleLoadData (spin kernel)")?;
        let result = self.overlap_with(module, total);
        // SAFETY: our module, unloaded once.
        let _ = unsafe { sys::cuModuleUnload(module) };
        result
    }

    fn overlap_with(&self, module: sys::CUmodule, total: u64) -> Result<crate::probe::Overlap> {
        let mut f = std::ptr::null_mut();
        // SAFETY: a loaded module and a NUL-terminated name.
        let r = unsafe { sys::cuModuleGetFunction(&mut f, module, c"spin".as_ptr()) };
        check(r, "cuModuleGetFunction")?;
        let mut compute = std::ptr::null_mut();
        // SAFETY: the context is current; valid out pointer.
        let r = unsafe {
            sys::cuStreamCreate(
                &mut compute,
                sys::CUstream_flags_enum::CU_STREAM_NON_BLOCKING as u32,
            )
        };
        check(r, "cuStreamCreate")?;
        let host = self.alloc_host(total)?;
        let device = self.alloc_device(total)?;
        let launch = |cycles: u64| -> Result<()> {
            let mut c = cycles;
            let mut params = [(&mut c as *mut u64).cast::<c_void>()];
            // SAFETY: one thread of a kernel taking one u64, its parameter array alive for the
            // call (the driver copies parameters at launch).
            let r = unsafe {
                sys::cuLaunchKernel(
                    f,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    0,
                    compute,
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            };
            check(r, "cuLaunchKernel")
        };
        let sync = || -> Result<()> {
            // SAFETY: our compute stream.
            let r = unsafe { sys::cuStreamSynchronize(compute) };
            check(r, "cuStreamSynchronize")
        };
        let copy = || -> Result<()> {
            let mut last = None;
            let mut off = 0;
            while off < total {
                let len = (16u64 << 20).min(total - off);
                // SAFETY: inside both buffers, owned by this function.
                last = Some(unsafe {
                    self.submit(
                        Direction::HostToDevice,
                        (host.addr() + off) as usize as *mut u8,
                        device.addr() + off,
                        len as usize,
                    )
                }?);
                off += len;
            }
            match last {
                Some(t) => self.wait(t),
                None => Ok(()),
            }
        };
        let timed = |f: &dyn Fn() -> Result<()>| -> Result<f64> {
            let t = std::time::Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64())
        };
        let outcome = (|| {
            let copy_s = timed(&copy)?;
            // Calibrate the kernel to last about twice the copy (at least 20 ms).
            let probe_cycles = 10_000_000u64;
            let t = timed(&|| {
                launch(probe_cycles)?;
                sync()
            })?;
            let cycles_per_s = probe_cycles as f64 / t.max(1e-6);
            let cycles = (cycles_per_s * (2.0 * copy_s).max(0.02)) as u64;
            let kernel_s = timed(&|| {
                launch(cycles)?;
                sync()
            })?;
            let both_s = timed(&|| {
                launch(cycles)?;
                copy()?;
                sync()
            })?;
            let shorter = kernel_s.min(copy_s).max(1e-9);
            Ok(crate::probe::Overlap {
                kernel_s,
                copy_s,
                both_s,
                hidden_fraction: ((kernel_s + copy_s - both_s) / shorter).clamp(0.0, 1.0),
            })
        })();
        drop(device);
        drop(host);
        // SAFETY: our stream, destroyed once after its work completed (or failed).
        let _ = unsafe {
            sys::cuStreamSynchronize(compute);
            sys::cuStreamDestroy_v2(compute)
        };
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn a_pool_leaves_a_margin_of_free_vram() {
        // 256 MiB on small devices, 1/64 of larger ones.
        assert_eq!(vram_margin(8 * GIB), 256 * MIB);
        assert_eq!(vram_margin(64 * GIB), GIB);
        fits_free_vram(7 * GIB, 7 * GIB + 256 * MIB, 8 * GIB).unwrap();
        let e = fits_free_vram(7 * GIB, 7 * GIB + 255 * MIB, 8 * GIB).unwrap_err();
        assert!(
            matches!(
                e,
                Error::DeviceMemory {
                    needed,
                    margin,
                    free,
                    total,
                } if needed == 7 * GIB && margin == 256 * MIB && free == 7 * GIB + 255 * MIB && total == 8 * GIB
            ),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("7.00 GiB") && msg.contains("256.00 MiB"),
            "{msg}"
        );
        // No overflow on absurd requests.
        assert!(fits_free_vram(u64::MAX, u64::MAX, u64::MAX).is_err());
    }

    #[test]
    fn the_driver_library_is_named_for_the_platform() {
        let want = if cfg!(windows) {
            "nvcuda.dll"
        } else {
            "libcuda.so"
        };
        assert_eq!(DRIVER_LIBRARY, want);
        if let Err(why) = available() {
            if why.contains("not installed") {
                assert!(why.contains(want), "{why}");
            }
        }
    }
}
