//! The host tier: where the host copies of the blocks the engine allocates ([`crate::Engine::alloc`])
//! live.
//!
//! Small blocks are sub-allocated from large slabs of backend host memory (pinned on CUDA) instead
//! of one backend allocation each: a page-locked allocation per block costs a driver call and at
//! least a page, a million 4 KiB blocks would be a million `cuMemHostAlloc` calls, and CUDA cannot
//! register overlapping ranges anyway. Blocks allocated one after another lie end to end in a slab,
//! so the copies of a step's small blocks (which the planner places end to end on the device)
//! merge into one (see `transfer.rs`, "Coalescing"). Large blocks take their own allocation: one
//! copy each already amortizes its per-copy cost.
//!
//! Caller-owned blocks ([`crate::Engine::alloc_external`]) keep their own memory.
//!
//! [`SlabPlacer`] is the placement rule, a pure data structure the engine's [`HostTier`] and the
//! simulator's model of it (`simulate.rs`) share: the newest slab first (so consecutive blocks are
//! adjacent), then holes in older ones, then a new slab. A slab whose blocks are all freed is given
//! back. Cost: O(slabs) per allocation in the worst case (O(log blocks) when the newest slab has
//! room), O(log blocks) per free.

use std::fmt;

use crate::backend::{Backend, Memory};
use crate::pool::{granules, Allocation, Pool, GRANULE};
use crate::Result;
// Plain std primitives: the host tier is not part of the engine's modelled (loom) hand-off.
use std::sync::{Arc, Mutex, MutexGuard};

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic under this lock leaves the placer consistent (each change is one call).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes of one slab (assumed: large enough that per-slab costs vanish, small enough that a
/// slab's rounding is no concern next to the model).
pub const SLAB_BYTES: u64 = 64 << 20;
/// Blocks up to this size are sub-allocated from slabs; larger ones get their own memory.
pub const SLAB_MAX_BLOCK: u64 = 4 << 20;

/// Which slab and where in it each small block goes. Plain data; no memory.
#[derive(Debug, Default)]
pub struct SlabPlacer {
    slabs: Vec<Option<Pool>>,
    newest: Option<usize>,
}

/// A block's place in the host tier: slab index and its allocation there.
pub type SlabPlace = (usize, Allocation);

impl SlabPlacer {
    /// Whether a block of `size` bytes goes in a slab.
    pub fn fits(size: u64) -> bool {
        size > 0 && size <= SLAB_MAX_BLOCK
    }

    /// Places a block of `size` bytes (see [`SlabPlacer::fits`]); `Some((slab, alloc))`, where
    /// `slab` may be a new index (the caller then allocates that slab's memory, or gives the place
    /// back with [`SlabPlacer::free`] if it cannot).
    pub fn place(&mut self, size: u64) -> Option<SlabPlace> {
        if !Self::fits(size) {
            return None;
        }
        if let Some(k) = self.newest {
            if let Some(a) = self.slabs[k].as_mut().and_then(|p| p.alloc_low(size, 0)) {
                return Some((k, a));
            }
        }
        for (k, slab) in self.slabs.iter_mut().enumerate() {
            if let Some(a) = slab.as_mut().and_then(|p| p.alloc_low(size, 0)) {
                return Some((k, a));
            }
        }
        let k = match self.slabs.iter().position(Option::is_none) {
            Some(k) => k,
            None => {
                self.slabs.push(None);
                self.slabs.len() - 1
            }
        };
        let mut pool = Pool::new(SLAB_BYTES);
        let a = pool.alloc_low(size, 0)?;
        self.slabs[k] = Some(pool);
        self.newest = Some(k);
        Some((k, a))
    }

    /// Gives a place back; returns whether its slab is now empty (and was dropped).
    pub fn free(&mut self, (k, a): SlabPlace) -> bool {
        let Some(pool) = self.slabs.get_mut(k).and_then(Option::as_mut) else {
            return false;
        };
        pool.free(a.region);
        if pool.used() > 0 {
            return false;
        }
        self.slabs[k] = None;
        if self.newest == Some(k) {
            self.newest = None;
        }
        true
    }
}

/// A model of the host tier's layout for the simulator: the host offset and mapping each block
/// would get if allocated in this order. Blocks in slabs get `slab * SLAB_BYTES + offset` in
/// mapping `slab`; a large block gets a mapping of its own (counted down from `u64::MAX`, so
/// never a slab's), which is all that keeps its copies from merging.
pub fn model_layout(sizes: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut placer = SlabPlacer::default();
    let mut own = 0u64;
    sizes
        .into_iter()
        .map(|size| match placer.place(size) {
            Some((k, a)) => (k as u64 * SLAB_BYTES + a.offset, k as u64),
            None => {
                own += 1;
                (0, u64::MAX - own)
            }
        })
        .collect()
}

/// The engine's host tier: backend slabs and the placer, behind their own lock (never the
/// engine's state lock; a new slab is allocated under it, which only other allocations wait for).
pub(crate) struct HostTier {
    inner: Mutex<Inner>,
}

struct Inner {
    placer: SlabPlacer,
    slabs: Vec<Option<Arc<Box<dyn Memory>>>>,
}

impl fmt::Debug for HostTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HostTier")
    }
}

impl HostTier {
    pub fn new() -> Arc<HostTier> {
        Arc::new(HostTier {
            inner: Mutex::new(Inner {
                placer: SlabPlacer::default(),
                slabs: Vec::new(),
            }),
        })
    }

    /// A zeroed host copy of `size` bytes: a slab's sub-range for a small block, else the
    /// backend's own allocation.
    pub fn alloc(self: &Arc<Self>, backend: &dyn Backend, size: u64) -> Result<Box<dyn Memory>> {
        let mut inner = lock(&self.inner);
        let Some(place) = inner.placer.place(size) else {
            drop(inner);
            return backend.alloc_host(size);
        };
        let (k, a) = place;
        if inner.slabs.len() <= k {
            inner.slabs.resize_with(k + 1, || None);
        }
        if inner.slabs[k].is_none() {
            match backend.alloc_host(SLAB_BYTES) {
                Ok(m) => inner.slabs[k] = Some(Arc::new(m)),
                Err(e) => {
                    inner.placer.free(place);
                    return Err(e);
                }
            }
        }
        let slab = inner.slabs[k].clone().expect("allocated above");
        drop(inner);
        let addr = slab.addr() + a.offset;
        debug_assert!(a.offset + granules(size) * GRANULE <= slab.len());
        // SAFETY: `[addr, addr + size)` lies inside the slab (the placer's pool spans exactly
        // SLAB_BYTES, the slab's length) and the placer gave it to this block alone; the slab
        // stays allocated while this block holds its `Arc`. A reused range may hold a freed
        // block's bytes, so it is zeroed, as a fresh allocation is.
        unsafe { std::ptr::write_bytes(addr as usize as *mut u8, 0, size as usize) };
        Ok(Box::new(SlabBlock {
            tier: self.clone(),
            slab,
            place,
            addr,
            len: size,
        }))
    }
}

/// A block's host copy in a slab.
struct SlabBlock {
    tier: Arc<HostTier>,
    slab: Arc<Box<dyn Memory>>,
    place: SlabPlace,
    addr: u64,
    len: u64,
}

impl fmt::Debug for SlabBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SlabBlock({} bytes in slab {})", self.len, self.place.0)
    }
}

impl Memory for SlabBlock {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn mapping(&self) -> u64 {
        self.slab.addr()
    }
}

impl Drop for SlabBlock {
    fn drop(&mut self) {
        let mut inner = lock(&self.tier.inner);
        if inner.placer.free(self.place) {
            // Empty: the tier's reference goes; the memory is freed with the last block's
            // (this one's) reference, after the lock.
            let k = self.place.0;
            let slab = inner.slabs.get_mut(k).and_then(Option::take);
            drop(inner);
            drop(slab);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_small_blocks_are_adjacent_and_large_ones_are_not_in_slabs() {
        let layout = model_layout([64 << 10, 64 << 10, 8 << 20, 64 << 10]);
        assert_eq!(layout[0], (0, 0));
        assert_eq!(layout[1], (64 << 10, 0));
        assert_eq!(layout[3], (128 << 10, 0));
        assert_ne!(layout[2].1, 0);
    }

    #[test]
    fn a_full_slab_opens_the_next_and_an_empty_one_is_dropped() {
        let mut p = SlabPlacer::default();
        let per = SLAB_BYTES / SLAB_MAX_BLOCK;
        let places: Vec<_> = (0..=per)
            .map(|_| p.place(SLAB_MAX_BLOCK).unwrap())
            .collect();
        assert_eq!(places[per as usize].0, 1);
        assert!(places[..per as usize].iter().all(|pl| pl.0 == 0));
        for &pl in &places[..per as usize - 1] {
            assert!(!p.free(pl));
        }
        assert!(
            p.free(places[per as usize - 1]),
            "the last block out drops its slab"
        );
        // The hole is reused before a new slab is opened, after the newest one.
        assert_eq!(p.place(SLAB_MAX_BLOCK).unwrap().0, 1);
        assert!(p.place(SLAB_MAX_BLOCK + 1).is_none());
    }
}
