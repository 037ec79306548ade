//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use synapswap::backend::{
    Backend, BackendInfo, DevicePtr, Direction, Fence, Memory, Segment, SimBackend, SimConfig,
    Ticket,
};
use synapswap::{pattern, BlockId, BlockSpec, Engine, Result};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// An engine on an unpaced sim backend, plus the backend to inspect its allocations.
pub fn engine(budget: u64) -> (Engine, Arc<SimBackend>) {
    let backend = Arc::new(SimBackend::new(SimConfig::unpaced()).unwrap());
    let engine = Engine::builder()
        .budget(budget)
        .backend(backend.clone())
        .chunk_bytes(64 * KIB)
        .build()
        .unwrap();
    (engine, backend)
}

/// Allocates a block filled with the pattern of `seed`.
pub fn filled(engine: &Engine, spec: BlockSpec, seed: u64) -> BlockId {
    let size = spec.size;
    let id = engine.alloc(spec).unwrap();
    let mut buf = vec![0u8; size as usize];
    pattern::fill(pattern::seed(seed), 0, &mut buf);
    engine.write(id, 0, &buf).unwrap();
    id
}

/// Waits for the block and checks every device byte against the pattern of `seed`.
pub fn check(engine: &Engine, id: BlockId, seed: u64) {
    let g = engine.wait(id).unwrap();
    let bytes = g.as_slice().expect("sim is host-addressable");
    assert!(
        pattern::verify(pattern::seed(seed), 0, bytes),
        "block {id} has wrong bytes"
    );
}

/// What a test backend changes about the sim: each hook runs before the sim's call (after it,
/// for `wait`) and may fail it; the fence hooks may replace the sim's fences. The defaults change
/// nothing.
pub trait Hooks: Send + Sync + std::fmt::Debug {
    fn alloc_device(&self) -> Result<()> {
        Ok(())
    }
    fn alloc_host(&self) -> Result<()> {
        Ok(())
    }
    fn register_host(&self) -> Result<()> {
        Ok(())
    }
    fn submit(&self) -> Result<()> {
        Ok(())
    }
    /// Before a batched submission of `segments` copies.
    fn batch(&self, segments: usize) -> Result<()> {
        let _ = segments;
        Ok(())
    }
    /// Sees the host range of every copy submitted (each segment of a batch).
    fn host_range(&self, dir: Direction, host: u64, len: u64) {
        let _ = (dir, host, len);
    }
    /// After the sim's wait succeeded.
    fn wait(&self) -> Result<()> {
        Ok(())
    }
    fn record_fence(&self, sim: &SimBackend, stream: u64) -> Result<Option<Fence>> {
        sim.record_fence(stream)
    }
    fn fence_done(&self, sim: &SimBackend, fence: &Fence) -> Result<bool> {
        sim.fence_done(fence)
    }
    fn drop_fence(&self, sim: &SimBackend, fence: Fence) {
        sim.drop_fence(fence)
    }
}

/// A sim backend with [`Hooks`]: the fault-injection and fence-control test backends.
#[derive(Debug)]
pub struct Hooked<H> {
    pub inner: SimBackend,
    pub hooks: H,
}

impl<H> Hooked<H> {
    /// Hooks on an unpaced sim.
    pub fn unpaced(hooks: H) -> Hooked<H> {
        Hooked {
            inner: SimBackend::new(SimConfig::unpaced()).unwrap(),
            hooks,
        }
    }
}

impl<H: Hooks> Backend for Hooked<H> {
    fn info(&self) -> BackendInfo {
        self.inner.info()
    }
    fn alloc_device(&self, bytes: u64) -> Result<Box<dyn Memory>> {
        self.hooks.alloc_device()?;
        self.inner.alloc_device(bytes)
    }
    fn alloc_host(&self, bytes: u64) -> Result<Box<dyn Memory>> {
        self.hooks.alloc_host()?;
        self.inner.alloc_host(bytes)
    }
    fn host_addressable(&self) -> bool {
        self.inner.host_addressable()
    }
    fn pipeline_depth(&self) -> usize {
        self.inner.pipeline_depth()
    }
    unsafe fn submit(
        &self,
        dir: Direction,
        host: *mut u8,
        device: DevicePtr,
        len: usize,
    ) -> Result<Ticket> {
        self.hooks.submit()?;
        self.hooks.host_range(dir, host as u64, len as u64);
        // SAFETY: forwarded from the caller's contract.
        unsafe { self.inner.submit(dir, host, device, len) }
    }
    unsafe fn submit_batch(&self, dir: Direction, segments: &[Segment]) -> Result<Ticket> {
        self.hooks.batch(segments.len())?;
        for s in segments {
            self.hooks.host_range(dir, s.host, s.len);
        }
        // SAFETY: forwarded from the caller's contract.
        unsafe { self.inner.submit_batch(dir, segments) }
    }
    fn wait(&self, ticket: Ticket) -> Result<()> {
        self.inner.wait(ticket)?;
        self.hooks.wait()
    }
    unsafe fn copy_now(
        &self,
        dir: Direction,
        host: *mut u8,
        device: DevicePtr,
        len: usize,
    ) -> Result<()> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { self.inner.copy_now(dir, host, device, len) }
    }
    unsafe fn register_host(
        &self,
        ptr: *mut u8,
        len: u64,
        read_only: bool,
    ) -> Result<Box<dyn Memory>> {
        self.hooks.register_host()?;
        // SAFETY: forwarded from the caller's contract.
        unsafe { self.inner.register_host(ptr, len, read_only) }
    }
    fn stream_wait(&self, stream: u64, ticket: Ticket) -> Result<()> {
        self.inner.stream_wait(stream, ticket)
    }
    fn record_fence(&self, stream: u64) -> Result<Option<Fence>> {
        self.hooks.record_fence(&self.inner, stream)
    }
    fn fence_done(&self, fence: &Fence) -> Result<bool> {
        self.hooks.fence_done(&self.inner, fence)
    }
    fn drop_fence(&self, fence: Fence) {
        self.hooks.drop_fence(&self.inner, fence)
    }
}
