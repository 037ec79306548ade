//! Python bindings: `synapswap.Engine` and the device views it hands out through DLPack.
//!
//! A view ([`DeviceView`]) holds its block on the device until `release()` (or garbage
//! collection). Each DLPack export (`torch.from_dlpack(view)`, `numpy.from_dlpack(view)` on the
//! sim backend) takes a hold of its own (sharing the view's use: a wait counts once however often
//! its view is exported), owned by the exported tensor: the block stays resident
//! while the tensor lives, and when the tensor dies the hold is released on the stream the
//! consumer named in `__dlpack__(stream=...)`, so on CUDA the memory is reused only after the
//! work queued there has finished.
#![allow(non_snake_case)]

use std::ffi::{c_void, CStr};
use std::sync::Arc;

use engine::backend::{BackendKind, SimConfig};
use engine::{BlockId, BlockSpec, Engine as RsEngine, Error, Policy};
use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

fn err(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::BlockTooLarge { .. }
        | Error::PinnedOverBudget { .. }
        | Error::OutOfDeviceMemory { .. }
        | Error::DeviceMemory { .. }
        | Error::BudgetTooSmall { .. }
        | Error::HostMemory { .. }
        | Error::OutOfHostMemory(_) => PyMemoryError::new_err(msg),
        Error::UnknownBlock(_)
        | Error::StaleBlock(_)
        | Error::NotHeld(_)
        | Error::ZeroSize
        | Error::InvalidPriority(_)
        | Error::InvalidProbability(_)
        | Error::NotACandidate { .. }
        | Error::InvalidBudget(_)
        | Error::OutOfBounds { .. }
        | Error::OutsideBuffer { .. }
        | Error::NotMutable(_)
        | Error::BlockInUse(_)
        | Error::Parse { .. }
        | Error::Model(_)
        | Error::Workload(_) => PyValueError::new_err(msg),
        Error::Transfer { .. }
        | Error::Backend(_)
        | Error::DeviceLost(_)
        | Error::AlreadyRegistered { .. }
        | Error::BackendUnavailable { .. }
        | Error::ShutDown => PyRuntimeError::new_err(msg),
    }
}

/// A size: an int, or a string such as "512MiB" or "2GiB".
fn size_arg(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    if let Ok(n) = obj.extract::<i64>() {
        return u64::try_from(n).map_err(|_| PyValueError::new_err(format!("negative size {n}")));
    }
    if let Ok(s) = obj.extract::<String>() {
        return engine::size::parse_size(&s).map_err(err);
    }
    Err(PyTypeError::new_err(
        "a size is an int (bytes) or a string such as '512MiB'",
    ))
}

fn policy_arg(policy: &str) -> PyResult<Policy> {
    policy.parse().map_err(err)
}

/// The spec `alloc` and `alloc_external` build from their keyword arguments.
fn spec_arg(
    size: &Bound<'_, PyAny>,
    name: Option<String>,
    priority: u8,
    policy: &str,
    mutable: bool,
) -> PyResult<BlockSpec> {
    let spec = BlockSpec::new(size_arg(size)?)
        .priority(priority)
        .policy(policy_arg(policy)?)
        .mutable(mutable);
    Ok(match name {
        Some(n) => spec.name(n),
        None => spec,
    })
}

fn block_arg(raw: u64) -> BlockId {
    BlockId::from_raw(raw)
}

const KDL_CPU: i32 = 1;
const KDL_CUDA: i32 = 2;

#[repr(C)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// What an exported tensor owns: a hold on its block, released on the consumer's stream; or,
/// for the whole arena ([`Arena`]), no hold (`block` None), only the engine, which keeps the
/// arena's memory alive.
struct Export {
    engine: Arc<RsEngine>,
    block: Option<BlockId>,
    stream: u64,
    shape: [i64; 1],
}

/// DLPack deleter: called by the consumer (any thread, maybe without the GIL) when the tensor
/// dies, or by the capsule destructor if it was never consumed.
unsafe extern "C" fn dl_deleter(t: *mut DLManagedTensor) {
    if t.is_null() {
        return;
    }
    // SAFETY: `t` is the box made in `__dlpack__`, handed to exactly one owner, deleted once;
    // its context is the boxed `Export` made with it.
    let t = unsafe { Box::from_raw(t) };
    // SAFETY: as above.
    let ctx = unsafe { Box::from_raw(t.manager_ctx.cast::<Export>()) };
    // The engine may be shut down already; the hold is then gone with it.
    if let Some(block) = ctx.block {
        let _ = ctx.engine.unacquire_on_stream(block, ctx.stream);
    }
}

const DLTENSOR: &CStr = c"dltensor";

/// Capsule destructor: deletes the tensor unless a consumer took it (renamed the capsule).
unsafe extern "C" fn capsule_destructor(capsule: *mut pyo3::ffi::PyObject) {
    // SAFETY: called by Python with the GIL held on our capsule.
    unsafe {
        if pyo3::ffi::PyCapsule_IsValid(capsule, DLTENSOR.as_ptr()) == 1 {
            let p = pyo3::ffi::PyCapsule_GetPointer(capsule, DLTENSOR.as_ptr());
            dl_deleter(p.cast());
        }
    }
}

/// A block held on the device: its address, its size, and DLPack export.
#[pyclass(module = "synapswap")]
struct DeviceView {
    engine: Arc<RsEngine>,
    block: BlockId,
    ptr: u64,
    nbytes: u64,
    device_type: i32,
    held: bool,
}

#[pymethods]
impl DeviceView {
    /// Device address of the first byte (a host address on the sim backend).
    #[getter]
    fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Size in bytes.
    #[getter]
    fn nbytes(&self) -> u64 {
        self.nbytes
    }

    /// The block's handle.
    #[getter]
    fn block(&self) -> u64 {
        self.block.to_raw()
    }

    /// Drops this view's hold (exported tensors keep their own). Idempotent.
    fn release(&mut self) -> PyResult<()> {
        if std::mem::take(&mut self.held) {
            self.engine.unacquire(self.block).map_err(err)?;
        }
        Ok(())
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __exit__(
        &mut self,
        _t: Option<&Bound<'_, PyAny>>,
        _v: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.release()?;
        Ok(false)
    }

    fn __dlpack_device__(&self) -> (i32, i32) {
        (self.device_type, 0)
    }

    /// A DLPack capsule of the block's bytes (1-D uint8). It owns a hold of its own, released on
    /// `stream` when the consumer frees the tensor.
    #[pyo3(signature = (stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__(
        &self,
        py: Python<'_>,
        stream: Option<i64>,
        max_version: Option<&Bound<'_, PyAny>>,
        dl_device: Option<&Bound<'_, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<PyObject> {
        let _ = (max_version, dl_device);
        refuse_copy(copy)?;
        if !self.held {
            return Err(PyRuntimeError::new_err("the view was released"));
        }
        let engine = self.engine.clone();
        let block = self.block;
        // The view's hold is on the device already: the export shares its use (no second wait).
        let ptr = py
            .allow_threads(|| engine.acquire_held(block))
            .map_err(err)?;
        let stream = match stream {
            Some(s) if s > 0 => s as u64,
            _ => 0,
        };
        let ctx = Box::new(Export {
            engine: self.engine.clone(),
            block: Some(block),
            stream,
            shape: [self.nbytes as i64],
        });
        export(py, ctx, ptr, self.device_type)
    }
}

/// DLPack's `copy=True`: device memory is handed out in place, never copied.
fn refuse_copy(copy: Option<bool>) -> PyResult<()> {
    if copy == Some(true) {
        return Err(PyValueError::new_err(
            "synapswap device memory cannot be copied by DLPack",
        ));
    }
    Ok(())
}

/// A DLPack capsule of `ctx.shape[0]` bytes at `ptr` on `device_type`, owning `ctx`.
fn export(py: Python<'_>, mut ctx: Box<Export>, ptr: u64, device_type: i32) -> PyResult<PyObject> {
    {
        let shape = ctx.shape.as_mut_ptr();
        let managed = Box::new(DLManagedTensor {
            dl_tensor: DLTensor {
                data: ptr as usize as *mut c_void,
                device: DLDevice {
                    device_type,
                    device_id: 0,
                },
                ndim: 1,
                dtype: DLDataType {
                    code: 1, // kDLUInt
                    bits: 8,
                    lanes: 1,
                },
                shape,
                strides: std::ptr::null_mut(),
                byte_offset: 0,
            },
            manager_ctx: Box::into_raw(ctx).cast(),
            deleter: Some(dl_deleter),
        });
        let raw = Box::into_raw(managed);
        // SAFETY: the GIL is held; `raw` is a valid pointer owned by the capsule from now on;
        // the name is a static C string; the destructor deletes it unless consumed.
        let capsule = unsafe {
            pyo3::ffi::PyCapsule_New(raw.cast(), DLTENSOR.as_ptr(), Some(capsule_destructor))
        };
        if capsule.is_null() {
            // SAFETY: the capsule was not made, so `raw` is still ours to delete.
            unsafe { dl_deleter(raw) };
            return Err(PyErr::fetch(py));
        }
        // SAFETY: a new reference just returned by PyCapsule_New.
        Ok(unsafe { PyObject::from_owned_ptr(py, capsule) })
    }
}

impl Drop for DeviceView {
    fn drop(&mut self) {
        if self.held {
            let _ = self.engine.unacquire(self.block);
        }
    }
}

/// The whole device arena, for DLPack (`Engine.arena()`): one tensor made once and sliced at
/// the addresses `Engine.acquire_step` returns, instead of a capsule per use. It holds no block:
/// a slice is valid only while its block is held. The exported tensor keeps the engine, and so
/// the arena's memory, alive.
#[pyclass(module = "synapswap")]
struct Arena {
    engine: Arc<RsEngine>,
    ptr: u64,
    nbytes: u64,
    device_type: i32,
}

#[pymethods]
impl Arena {
    /// The arena's first address.
    #[getter]
    fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Its size in bytes.
    #[getter]
    fn nbytes(&self) -> u64 {
        self.nbytes
    }

    fn __dlpack_device__(&self) -> (i32, i32) {
        (self.device_type, 0)
    }

    #[pyo3(signature = (stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__(
        &self,
        py: Python<'_>,
        stream: Option<i64>,
        max_version: Option<&Bound<'_, PyAny>>,
        dl_device: Option<&Bound<'_, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<PyObject> {
        let _ = (stream, max_version, dl_device);
        refuse_copy(copy)?;
        let ctx = Box::new(Export {
            engine: self.engine.clone(),
            block: None,
            stream: 0,
            shape: [self.nbytes as i64],
        });
        export(py, ctx, self.ptr, self.device_type)
    }
}

/// A caller's buffer registered with the device once (`Engine.register_buffer`), for blocks cut
/// from it (`Engine.alloc_in`, and `alloc_external` of any range inside it).
#[pyclass(name = "HostBuffer", module = "synapswap")]
struct PyHostBuffer {
    inner: engine::HostBuffer,
}

#[pymethods]
impl PyHostBuffer {
    /// Start address.
    #[getter]
    fn addr(&self) -> u64 {
        self.inner.addr()
    }

    /// Length in bytes.
    #[getter]
    fn nbytes(&self) -> u64 {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "HostBuffer({:#x}, {} bytes)",
            self.inner.addr(),
            self.inner.len()
        )
    }
}

/// The SynapSwap engine: blocks in host memory, a bounded device pool, copies ahead of use.
#[pyclass(name = "Engine", module = "synapswap")]
struct PyEngine {
    inner: Arc<RsEngine>,
    backend: String,
}

/// The sim's link from `sim_h2d` (see `Engine.__init__`).
fn sim_link(v: &Bound<'_, PyAny>) -> PyResult<SimConfig> {
    let rate = if let Ok(s) = v.extract::<String>() {
        if s.trim().eq_ignore_ascii_case("max") {
            return Ok(SimConfig::unpaced());
        }
        engine::size::parse_bandwidth(&s).map_err(err)?
    } else if let Ok(x) = v.extract::<f64>() {
        x
    } else {
        return Err(PyTypeError::new_err(
            "sim_h2d is a bandwidth: a string such as \"25GB/s\", bytes/s as a number, or \"max\"",
        ));
    };
    if !(rate.is_finite() && rate > 0.0) {
        return Err(PyValueError::new_err(format!(
            "sim_h2d must be a positive bandwidth, not {rate}"
        )));
    }
    Ok(SimConfig {
        h2d_bytes_per_s: Some(rate),
        ..SimConfig::default()
    })
}

#[pymethods]
impl PyEngine {
    /// `Engine(vram_budget, backend="auto", chunk_bytes=None, sim_h2d=None, trace=False)`: sizes are ints or
    /// strings like "2GiB"; backend "auto" (CUDA when present, else sim), "sim" or "cuda".
    /// `sim_h2d`: the sim's host-to-device link, a bandwidth ("25GB/s", or bytes/s as a number;
    /// a copy also pays the sim's 10 us latency) or "max" (unpaced memcpy, no latency); None: the
    /// sim's default, 2 GB/s + 10 us. Only for the sim: with `backend="cuda"` it is a ValueError
    /// (a GPU's link is what it is). `trace`: record every copy on a timeline
    /// ([`PyEngine::take_trace`]); off by default.
    #[new]
    #[pyo3(signature = (vram_budget, backend="auto", chunk_bytes=None, sim_h2d=None, trace=false))]
    fn new(
        vram_budget: &Bound<'_, PyAny>,
        backend: &str,
        chunk_bytes: Option<&Bound<'_, PyAny>>,
        sim_h2d: Option<&Bound<'_, PyAny>>,
        trace: bool,
    ) -> PyResult<Self> {
        let budget = size_arg(vram_budget)?;
        let kind: BackendKind = backend.parse().map_err(err)?;
        let sim = match sim_h2d {
            None => SimConfig::default(),
            Some(_) if kind == BackendKind::Cuda => {
                return Err(PyValueError::new_err(
                    "sim_h2d paces the sim backend's link; backend=\"cuda\" has a real one",
                ))
            }
            Some(v) => sim_link(v)?,
        };
        let (b, _) = engine::backend::open(kind, sim).map_err(err)?;
        if sim_h2d.is_some() && b.info().name != "sim" {
            return Err(PyValueError::new_err(
                "sim_h2d paces the sim backend's link; backend=\"auto\" found a GPU",
            ));
        }
        let name = b.info().name.to_string();
        let mut builder = RsEngine::builder().budget(budget).backend(b).trace(trace);
        if let Some(c) = chunk_bytes {
            builder = builder.chunk_bytes(size_arg(c)?);
        }
        Ok(PyEngine {
            inner: Arc::new(builder.build().map_err(err)?),
            backend: name,
        })
    }

    /// "sim" or "cuda".
    #[getter]
    fn backend(&self) -> &str {
        &self.backend
    }

    /// The backend in words: the device's name, or the sim's link ("copies paced to 2.00 GB/s +
    /// 10 us", "unpaced memcpy").
    #[getter]
    fn backend_description(&self) -> String {
        self.inner.backend_info().description
    }

    /// The host-to-device bandwidth the sim models, bytes/s; None when unpaced or on a GPU.
    #[getter]
    fn sim_h2d_bytes_per_s(&self) -> Option<f64> {
        self.inner.backend_info().modelled_h2d_bytes_per_s
    }

    /// The device budget in bytes.
    #[getter]
    fn vram_budget(&self) -> u64 {
        self.inner.budget()
    }

    /// A new block with a zeroed host copy; returns its handle.
    #[pyo3(signature = (size, name=None, priority=5, policy="auto", mutable=false))]
    fn alloc(
        &self,
        size: &Bound<'_, PyAny>,
        name: Option<String>,
        priority: u8,
        policy: &str,
        mutable: bool,
    ) -> PyResult<u64> {
        let spec = spec_arg(size, name, priority, policy, mutable)?;
        Ok(self.inner.alloc(spec).map_err(err)?.to_raw())
    }

    /// A block whose host copy is the memory at `ptr` (`size` bytes), used in place (registered
    /// with CUDA, not copied). The caller keeps that memory alive, and does not write it while
    /// the block may be in transfer, until `free` or `shutdown`.
    #[pyo3(signature = (ptr, size, name=None, priority=5, policy="auto", mutable=false, read_only=false))]
    #[allow(clippy::too_many_arguments)]
    fn alloc_external(
        &self,
        ptr: usize,
        size: &Bound<'_, PyAny>,
        name: Option<String>,
        priority: u8,
        policy: &str,
        mutable: bool,
        read_only: bool,
    ) -> PyResult<u64> {
        let spec = spec_arg(size, name, priority, policy, mutable)?;
        // SAFETY: the caller's contract above, as documented for Python callers; the torch
        // integration keeps every tensor it registers alive until it frees the block.
        let id = unsafe { self.inner.alloc_external(spec, ptr as *mut u8, read_only) };
        Ok(id.map_err(err)?.to_raw())
    }

    /// Registers the memory at `ptr` (`size` bytes) with the device once (page-locked in place
    /// on CUDA), for blocks that are parts of it: `alloc_in`, and `alloc_external` of any range
    /// inside it (the tensors of one storage share pages, and CUDA registers a page only once).
    /// The caller keeps that memory alive until every block cut from it is freed and the
    /// returned buffer is gone, and does not write a block's bytes while it may be in transfer.
    #[pyo3(signature = (ptr, size, read_only=false))]
    fn register_buffer(
        &self,
        ptr: usize,
        size: &Bound<'_, PyAny>,
        read_only: bool,
    ) -> PyResult<PyHostBuffer> {
        let size = size_arg(size)?;
        // SAFETY: the caller's contract above, as documented for Python callers; the torch
        // integration keeps every storage it registers alive until it frees its blocks.
        let b = unsafe { self.inner.register_buffer(ptr as *mut u8, size, read_only) };
        Ok(PyHostBuffer {
            inner: b.map_err(err)?,
        })
    }

    /// Registers a read-only memory-mapped model file, `ptr..ptr + size`, as `register_buffer`
    /// does, and puts the blocks cut from it in the RAM tier (read ahead before their copy,
    /// dropped from RAM after it unless the plan keeps them cached: a file larger than RAM runs
    /// from the disk). With `path`, the mapping holds that file's bytes from `offset`: blocks
    /// the tier does not keep are read from the disk past the page cache, into memory of its
    /// own (`Engine::register_file_mapping`; refused if the file's first or last page differs).
    /// The caller keeps the mapping alive until every block cut from it is freed and the
    /// returned buffer is gone, and never writes it while the engine may read it.
    #[pyo3(signature = (ptr, size, path=None, offset=0))]
    fn register_mapping(
        &self,
        ptr: usize,
        size: &Bound<'_, PyAny>,
        path: Option<std::path::PathBuf>,
        offset: u64,
    ) -> PyResult<PyHostBuffer> {
        let size = size_arg(size)?;
        // SAFETY: the caller's contract above, as documented for Python callers;
        // `synapswap.torch.from_pretrained` keeps each file's mapping (a torch storage) alive
        // until it frees the blocks cut from it, and the model holds meta stand-ins meanwhile.
        let b = unsafe {
            match &path {
                Some(p) => self
                    .inner
                    .register_file_mapping(ptr as *mut u8, size, p, offset),
                None => self.inner.register_mapping(ptr as *mut u8, size),
            }
        };
        Ok(PyHostBuffer {
            inner: b.map_err(err)?,
        })
    }

    /// The RAM tier over file mappings, as a dict: cap_bytes, cached_bytes, pages_checked,
    /// pages_resident, disk_bytes_per_s, direct_bytes_read, direct_busy_s, and direct_reads_off
    /// (why direct reads from the disk ended, or None).
    fn ram_tier<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = self.inner.ram_tier();
        let d = PyDict::new(py);
        d.set_item("cap_bytes", r.cap_bytes)?;
        d.set_item("cached_bytes", r.cached_bytes)?;
        d.set_item("pages_checked", r.pages_checked)?;
        d.set_item("pages_resident", r.pages_resident)?;
        d.set_item("disk_bytes_per_s", r.disk_bytes_per_s)?;
        d.set_item("direct_bytes_read", r.direct_bytes_read)?;
        d.set_item("direct_busy_s", r.direct_busy_s)?;
        d.set_item("direct_reads_off", r.direct_reads_off)?;
        Ok(d)
    }

    /// A block whose host copy is `buffer`'s bytes `offset..offset + size`, used in place.
    #[pyo3(signature = (buffer, offset, size, name=None, priority=5, policy="auto", mutable=false))]
    #[allow(clippy::too_many_arguments)]
    fn alloc_in(
        &self,
        buffer: &PyHostBuffer,
        offset: u64,
        size: &Bound<'_, PyAny>,
        name: Option<String>,
        priority: u8,
        policy: &str,
        mutable: bool,
    ) -> PyResult<u64> {
        let spec = spec_arg(size, name, priority, policy, mutable)?;
        let id = self.inner.alloc_in(&buffer.inner, offset, spec);
        Ok(id.map_err(err)?.to_raw())
    }

    /// Frees a block.
    fn free(&self, py: Python<'_>, block: u64) -> PyResult<()> {
        let e = self.inner.clone();
        py.allow_threads(|| e.free(block_arg(block))).map_err(err)
    }

    /// Writes `data` into the block at `offset` (host copy and, if resident, device copy):
    /// `bytes`, or any object with the buffer protocol (`bytearray`, `memoryview`, a numpy
    /// array) or a torch tensor, taken as its raw bytes in C order (a tensor on another device
    /// is copied to the CPU first). Anything but `bytes` is copied once into a `bytes` on the
    /// way (the bindings use Python's stable ABI, which has no buffer access before 3.11).
    #[pyo3(signature = (block, data, offset=0))]
    fn write(
        &self,
        py: Python<'_>,
        block: u64,
        data: &Bound<'_, PyAny>,
        offset: u64,
    ) -> PyResult<()> {
        let owned;
        let bytes: &[u8] = if let Ok(b) = data.downcast::<PyBytes>() {
            b.as_bytes()
        } else {
            let mut obj = data.clone();
            // A torch tensor: its CPU, contiguous numpy view (no copy for a CPU tensor).
            if obj.hasattr("numpy")? && obj.hasattr("detach")? {
                obj = obj
                    .call_method0("detach")?
                    .call_method0("cpu")?
                    .call_method0("contiguous")?
                    .call_method0("numpy")?;
            }
            let builtins = py.import("builtins")?;
            let view = builtins.getattr("memoryview")?.call1((obj,)).map_err(|_| {
                PyTypeError::new_err(format!(
                    "write needs bytes, a buffer (bytearray, memoryview, numpy array) or a torch \
                     tensor, not {}",
                    data.get_type().name().map_or("?".into(), |n| n.to_string())
                ))
            })?;
            // Raw bytes in C order (a non-contiguous buffer is copied in order by tobytes).
            owned = view
                .call_method1("tobytes", ("C",))?
                .downcast_into::<PyBytes>()?;
            owned.as_bytes()
        };
        self.inner
            .write(block_arg(block), offset, bytes)
            .map_err(err)
    }

    /// Reads `size` bytes (default: to the end) from `offset`.
    #[pyo3(signature = (block, size=None, offset=0))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        block: u64,
        size: Option<u64>,
        offset: u64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let id = block_arg(block);
        let total = self.inner.spec(id).map_err(err)?.size;
        let n = size.unwrap_or(total.saturating_sub(offset));
        // The range is checked before anything is allocated: a huge `size` is an error, not a
        // MemoryError or an abort.
        if offset.checked_add(n).is_none_or(|end| end > total) {
            return Err(err(Error::OutOfBounds {
                offset,
                len: n,
                size: total,
            }));
        }
        let mut buf = Vec::new();
        buf.try_reserve_exact(n as usize)
            .map_err(|_| err(Error::OutOfHostMemory(n)))?;
        buf.resize(n as usize, 0);
        self.inner.read(id, offset, &mut buf).map_err(err)?;
        Ok(PyBytes::new(py, &buf))
    }

    /// Step `step` uses `block` (with `probability` per pass for a data-dependent use).
    #[pyo3(signature = (step, block, probability=1.0))]
    fn declare(&self, step: u64, block: u64, probability: f64) -> PyResult<()> {
        if probability >= 1.0 {
            self.inner.declare(step, block_arg(block)).map_err(err)
        } else {
            self.inner
                .declare_candidate(step, block_arg(block), probability)
                .map_err(err)
        }
    }

    /// Forgets the declared schedule.
    fn clear_schedule(&self) -> PyResult<()> {
        self.inner.clear_schedule().map_err(err)
    }

    /// Execution is at `step`.
    fn hint(&self, step: u64) -> PyResult<()> {
        self.inner.hint(step).map_err(err)
    }

    /// A routed step's choice before it runs: `choices` is a list of `(block, probability)`
    /// pairs, each a candidate declared at `step`, for the step's coming occurrence (the step
    /// being run, else its next one): probability 1 for a router's output, less for a guess.
    /// They load ahead in deadline order; the hint lapses once that occurrence is past; an empty
    /// list withdraws it. ValueError for an undeclared step or block, or a probability outside
    /// (0, 1].
    fn hint_choice(&self, step: u64, choices: Vec<(u64, f64)>) -> PyResult<()> {
        let ids: Vec<(BlockId, f64)> = choices
            .into_iter()
            .map(|(b, p)| (block_arg(b), p))
            .collect();
        self.inner.hint_choice(step, &ids).map_err(err)
    }

    /// Waits until the block is on the device; returns a view that holds it there.
    fn wait(&self, py: Python<'_>, block: u64) -> PyResult<DeviceView> {
        let id = block_arg(block);
        let nbytes = self.inner.spec(id).map_err(err)?.size;
        let ptr = self.hold(py, id, None)?;
        Ok(DeviceView {
            engine: self.inner.clone(),
            block: id,
            ptr,
            nbytes,
            device_type: self.device_type(),
            held: true,
        })
    }

    /// Holds the block for work on `stream` (a CUstream as an int; 0: default) and returns its
    /// device address; pair with `release`.
    #[pyo3(signature = (block, stream=0))]
    fn acquire(&self, py: Python<'_>, block: u64, stream: u64) -> PyResult<u64> {
        self.hold(py, block_arg(block), Some(stream))
    }

    /// The device arena (see `Arena`): every address `acquire` returns lies inside it.
    fn arena(&self) -> Arena {
        let (ptr, nbytes) = self.inner.arena();
        Arena {
            engine: self.inner.clone(),
            ptr,
            nbytes,
            device_type: self.device_type(),
        }
    }

    /// One operation's use of `blocks`: execution is at `step` (unless None), then each block
    /// is held; returns their device addresses, in order. With a `stream` (a CUstream as an
    /// int), for work queued there, as `acquire` does: the stream waits for a copy in flight.
    /// Without one (None), for work done by the caller's thread: this returns once every byte
    /// is on the device, as `wait` does (the sim backend's "device" is host memory that CPU
    /// operations read at once). On an error the holds already taken are released, so nothing
    /// is left held. One call instead of a `hint` and an `acquire` per block (the torch
    /// integration's hit path); pair with `release_many` and the same `stream`.
    #[pyo3(signature = (step, blocks, stream=None))]
    fn acquire_step(
        &self,
        py: Python<'_>,
        step: Option<u64>,
        blocks: Vec<u64>,
        stream: Option<u64>,
    ) -> PyResult<Vec<u64>> {
        // One release of the GIL for the hint and every hold (the hit path's cost per module).
        let e = self.inner.clone();
        py.allow_threads(move || {
            if let Some(step) = step {
                e.hint(step)?;
            }
            let mut ptrs = Vec::with_capacity(blocks.len());
            for &b in &blocks {
                match Self::hold_on(&e, block_arg(b), stream) {
                    Ok(p) => ptrs.push(p),
                    Err(x) => {
                        for &held in &blocks[..ptrs.len()] {
                            let _ = Self::unhold_on(&e, block_arg(held), stream);
                        }
                        return Err(x);
                    }
                }
            }
            Ok(ptrs)
        })
        .map_err(err)
    }

    /// Releases one hold of `acquire_step` on each of `blocks` (with its `stream`: once the work
    /// queued there has completed). Every block is released even if one fails; the first error
    /// is raised.
    #[pyo3(signature = (blocks, stream=None))]
    fn release_many(&self, blocks: Vec<u64>, stream: Option<u64>) -> PyResult<()> {
        let mut first = Ok(());
        for b in blocks {
            if let Err(e) = self.unhold(block_arg(b), stream) {
                if first.is_ok() {
                    first = Err(err(e));
                }
            }
        }
        first
    }

    /// Releases a hold of `acquire` once the work queued on `stream` has completed.
    #[pyo3(signature = (block, stream=0))]
    fn release(&self, block: u64, stream: u64) -> PyResult<()> {
        self.inner
            .unacquire_on_stream(block_arg(block), stream)
            .map_err(err)
    }

    /// Whether anything holds the block (a view, an `acquire`, a release waiting for its
    /// stream): `free` of a held block fails.
    fn is_held(&self, block: u64) -> PyResult<bool> {
        self.inner.is_held(block_arg(block)).map_err(err)
    }

    /// Where the block is: "host", "loading", "resident" or "writing-back".
    fn residency(&self, block: u64) -> PyResult<String> {
        let r = self.inner.residency(block_arg(block)).map_err(err)?;
        Ok(format!("{r:?}")
            .to_lowercase()
            .replace("writingback", "writing-back"))
    }

    /// Seconds since the engine started: the clock of `take_trace`'s spans.
    fn now_s(&self) -> f64 {
        self.inner.now_s()
    }

    /// The spans recorded since the last call (the engine must be built with `trace=True`; else
    /// an empty list), one dict each: `track` (`copy`, or `disk` for the RAM tier's direct
    /// reads), `name` (`load <block name>` or `write-back <block name>`, with ` +N more` when
    /// a copy carried N more blocks' bytes; `read <block name>` on the disk track), `cat`
    /// (`prefetch`, `demand`, `write-back`, `read`, `read-cached`), `start_s` and `dur_s`
    /// (`now_s()` seconds; a copy runs from when it could start on the link, its submission or
    /// when the engine saw the previous copy end, to when the engine saw it complete, which can
    /// be up to the transfer thread's 20 us poll late) and `bytes` (0 for reads). A copy still
    /// in flight is not in it yet: the next call returns it. The engine keeps every span until it
    /// is taken, so a long traced run should take them now and then.
    fn take_trace<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let spans = self.inner.take_trace().spans;
        let out = PyList::empty(py);
        for s in spans {
            let d = PyDict::new(py);
            let track = match s.track {
                engine::trace::Track::Compute => "compute",
                engine::trace::Track::Copy => "copy",
                engine::trace::Track::Disk => "disk",
            };
            d.set_item("track", track)?;
            d.set_item("name", s.name)?;
            d.set_item("cat", s.cat)?;
            d.set_item("start_s", s.start_s)?;
            d.set_item("dur_s", s.dur_s)?;
            d.set_item("bytes", s.value)?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// Every engine statistic, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("vram_budget_bytes", s.vram_budget_bytes)?;
        d.set_item("device_used_bytes", s.device_used_bytes)?;
        d.set_item("peak_device_bytes", s.peak_device_bytes)?;
        d.set_item("blocks", s.blocks)?;
        d.set_item("resident_blocks", s.resident_blocks)?;
        d.set_item("host_bytes", s.host_bytes)?;
        d.set_item("bytes_h2d", s.bytes_h2d)?;
        d.set_item("bytes_d2h", s.bytes_d2h)?;
        d.set_item("loads", s.loads)?;
        d.set_item("demand_loads", s.demand_loads)?;
        d.set_item("evictions", s.evictions)?;
        d.set_item("writebacks", s.writebacks)?;
        d.set_item("waits", s.waits)?;
        d.set_item("hits", s.hits)?;
        d.set_item("hit_rate", s.hit_rate())?;
        d.set_item("unpredicted", s.unpredicted)?;
        d.set_item("stall_s", s.stall_s)?;
        d.set_item("copy_idle_s", s.copy_idle_s)?;
        d.set_item("h2d_bytes_per_s", s.h2d_bytes_per_s)?;
        d.set_item("lookahead_s", s.lookahead_s)?;
        d.set_item("kept_blocks", s.kept_blocks)?;
        d.set_item("kept_bytes", s.kept_bytes)?;
        d.set_item("replans", s.replans)?;
        d.set_item("prefetch_issued", s.prefetch.issued)?;
        d.set_item("prefetch_used", s.prefetch.used)?;
        d.set_item("prefetch_wasted", s.prefetch.wasted)?;
        Ok(d)
    }

    /// Stops the engine (waking waiters) and frees its memory.
    fn shutdown(&self, py: Python<'_>) {
        let e = self.inner.clone();
        py.allow_threads(|| e.shutdown());
    }
}

impl PyEngine {
    /// Takes a hold on `id` and returns its device address: with a `stream`, for work queued
    /// there (the stream waits for a copy in flight); without one, once the bytes are on the
    /// device. The holder may write a mutable block through the address (a DLPack view hands
    /// out raw memory any torch op may write), so a held mutable block counts as written and
    /// is written back before eviction; if that cannot be recorded, the hold is released.
    fn hold(&self, py: Python<'_>, id: BlockId, stream: Option<u64>) -> PyResult<u64> {
        let e = self.inner.clone();
        py.allow_threads(move || Self::hold_on(&e, id, stream))
            .map_err(err)
    }

    /// [`PyEngine::hold`] without the GIL: acquires `id` (for work on `stream`, if any) and
    /// marks a mutable block dirty (the consumer may write it), releasing it if that fails.
    fn hold_on(e: &RsEngine, id: BlockId, stream: Option<u64>) -> engine::Result<u64> {
        let mutable = e.spec(id)?.mutable;
        let ptr = match stream {
            Some(s) => e.acquire_on_stream(id, s),
            None => e.acquire(id),
        }?;
        if mutable {
            if let Err(x) = e.mark_dirty(id) {
                let _ = Self::unhold_on(e, id, stream);
                return Err(x);
            }
        }
        Ok(ptr)
    }

    /// Releases a hold of [`PyEngine::hold`] taken with `stream`.
    fn unhold(&self, id: BlockId, stream: Option<u64>) -> engine::Result<()> {
        Self::unhold_on(&self.inner, id, stream)
    }

    fn unhold_on(e: &RsEngine, id: BlockId, stream: Option<u64>) -> engine::Result<()> {
        match stream {
            Some(s) => e.unacquire_on_stream(id, s),
            None => e.unacquire(id),
        }
    }

    /// The DLPack device type of the arena's memory.
    fn device_type(&self) -> i32 {
        if self.backend == "cuda" {
            KDL_CUDA
        } else {
            KDL_CPU
        }
    }
}

/// Parses a size string ("512MiB", "2GiB", "1.5GB") into bytes.
#[pyfunction]
fn parse_size(s: &str) -> PyResult<u64> {
    engine::size::parse_size(s).map_err(err)
}

/// The tensors of a model file (a `.safetensors` file, a Hugging Face directory of shards, or a
/// GGUF file), read by the engine's model reader with its checks: a list of dicts with `name`,
/// `dtype` (as the file spells it: `BF16`, `F32`, ...), `shape`, `file` (the path of the file
/// that holds it), `offset` (its first byte in that file) and `nbytes`. Nothing is read beyond
/// the headers.
#[pyfunction]
fn model_tensors<'py>(py: Python<'py>, path: &str) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let model = py
        .allow_threads(|| engine::model::Model::open(std::path::Path::new(path)))
        .map_err(err)?;
    let files: Vec<String> = model
        .files()
        .map(|(p, _)| p.display().to_string())
        .collect();
    model
        .tensors
        .iter()
        .map(|t| {
            let d = PyDict::new(py);
            d.set_item("name", &t.name)?;
            d.set_item("dtype", &t.dtype)?;
            d.set_item("shape", &t.shape)?;
            d.set_item("file", &files[t.file])?;
            d.set_item("offset", t.offset)?;
            d.set_item("nbytes", t.bytes)?;
            Ok(d)
        })
        .collect()
}

/// The device memory a CUDA pool leaves free on a device of `total` bytes (the engine refuses a
/// pool larger than free memory less this, so `vram_budget="auto"` reserves at least this).
#[pyfunction]
fn vram_margin(total: u64) -> u64 {
    engine::backend::cuda::vram_margin(total)
}

/// The host memory this process can still take, as the engine's up-front checks see it (Linux:
/// `MemAvailable`, cgroups, `RLIMIT_AS`; Windows: `GlobalMemoryStatusEx`, job limits): `(bytes,
/// the limit that sets it)`, or `None` where unknown.
#[pyfunction]
fn available_memory() -> Option<(u64, &'static str)> {
    engine::os::available_memory().map(|a| (a.bytes, a.limit))
}

/// Whether the CUDA backend can run here, and why not.
#[pyfunction]
fn cuda_available() -> (bool, String) {
    match engine::backend::cuda::available() {
        Ok(n) => (true, format!("{n} device(s)")),
        Err(why) => (false, why),
    }
}

#[pymodule]
fn _synapswap(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_class::<DeviceView>()?;
    m.add_class::<PyHostBuffer>()?;
    m.add_class::<Arena>()?;
    m.add_function(wrap_pyfunction!(parse_size, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_available, m)?)?;
    m.add_function(wrap_pyfunction!(vram_margin, m)?)?;
    m.add_function(wrap_pyfunction!(available_memory, m)?)?;
    m.add_function(wrap_pyfunction!(model_tensors, m)?)?;
    Ok(())
}
