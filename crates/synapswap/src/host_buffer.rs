//! Caller buffers registered once ([`crate::Engine::register_buffer`]), and the blocks cut from
//! them.
//!
//! CUDA page-locks a caller's buffer in place (`cuMemHostRegister`) and refuses a range that
//! shares a page with one registered before. So registering each tensor of one allocation (the
//! weights packed in one storage, a memory-mapped model file) fails from the second tensor on,
//! and those blocks were copied from pageable memory, through the driver's staging buffer. Here a
//! buffer is registered once and its blocks are sub-ranges of it ([`SubRange`]): one mapping, so
//! the copies of blocks adjacent in it merge (see `transfer.rs`, "Coalescing"). The registration
//! lasts while its handle or any block cut from it lives.
//!
//! [`Buffers`] indexes the live registrations by address, so that
//! [`crate::Engine::alloc_external`] of a range inside one takes a sub-range of it too instead of
//! registering again. Cost: O(log buffers) per lookup; O(buffers) per registration (it prunes
//! the dead ones).

use std::collections::BTreeMap;
use std::fmt;
// Plain std primitives: registrations are not part of the engine's modelled (loom) hand-off.
use std::sync::{Arc, Mutex, Weak};

use crate::backend::Memory;
use crate::{Error, Result};

/// One registration: the backend's memory for the whole buffer.
struct Registration {
    mem: Box<dyn Memory>,
    read_only: bool,
    /// Page-locked with the device (else used pageable: the backend refused).
    pinned: bool,
    /// A file mapping (its blocks are in the RAM tier).
    file_backed: bool,
    /// The engine that registered it (its process-unique id).
    engine: usize,
}

/// A caller's buffer registered with the device once, for blocks that are sub-ranges of it
/// ([`crate::Engine::alloc_in`]). Cloning shares the registration; it ends when the last handle
/// and the last block cut from it are gone.
#[derive(Clone)]
pub struct HostBuffer {
    reg: Arc<Registration>,
}

impl fmt::Debug for HostBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostBuffer")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len())
            .field("read_only", &self.reg.read_only)
            .finish()
    }
}

impl HostBuffer {
    pub(crate) fn new(
        mem: Box<dyn Memory>,
        read_only: bool,
        pinned: bool,
        file_backed: bool,
        engine: usize,
    ) -> HostBuffer {
        HostBuffer {
            reg: Arc::new(Registration {
                mem,
                read_only,
                pinned,
                file_backed,
                engine,
            }),
        }
    }

    /// Start address of the buffer.
    pub fn addr(&self) -> u64 {
        self.reg.mem.addr()
    }

    /// Length of the buffer in bytes.
    pub fn len(&self) -> u64 {
        self.reg.mem.len()
    }

    /// Whether the buffer is empty (never: registration refuses an empty buffer).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the device page-locked it (false: the backend refused, and it is used pageable).
    pub fn pinned(&self) -> bool {
        self.reg.pinned
    }

    /// Whether it was registered read-only (no mutable block may be cut from it).
    pub fn read_only(&self) -> bool {
        self.reg.read_only
    }

    /// The block host copy at `offset..offset + len`, checked against the buffer, the engine
    /// (`engine`) and mutability.
    pub(crate) fn sub_range(
        &self,
        offset: u64,
        len: u64,
        mutable: bool,
        engine: usize,
    ) -> Result<SubRange> {
        if self.reg.engine != engine {
            return Err(Error::Backend(
                "the buffer was registered with another engine".into(),
            ));
        }
        if mutable && self.reg.read_only {
            return Err(Error::Backend(
                "a mutable block needs a writable host buffer (this one was registered read-only)"
                    .into(),
            ));
        }
        if offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(Error::OutsideBuffer {
                offset,
                len,
                size: self.len(),
            });
        }
        Ok(SubRange {
            reg: self.reg.clone(),
            addr: self.addr() + offset,
            len,
        })
    }
}

/// A block's host copy cut from a registered buffer.
pub(crate) struct SubRange {
    reg: Arc<Registration>,
    addr: u64,
    len: u64,
}

impl fmt::Debug for SubRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubRange({:#x}+{})", self.addr, self.len)
    }
}

impl Memory for SubRange {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn mapping(&self) -> u64 {
        self.reg.mem.addr()
    }
    fn pageable(&self) -> bool {
        !self.reg.pinned
    }
    fn file_backed(&self) -> bool {
        self.reg.file_backed
    }
}

/// The live registered buffers of one engine, by start address.
#[derive(Default)]
pub(crate) struct Buffers(Mutex<BTreeMap<u64, Weak<Registration>>>);

impl fmt::Debug for Buffers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Buffers")
    }
}

impl Buffers {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Weak<Registration>>> {
        // Each change is one map operation: a panic under the lock leaves it consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Indexes a new registration (registrations never overlap: the backend refuses).
    pub fn add(&self, b: &HostBuffer) {
        let mut map = self.map();
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(b.addr(), Arc::downgrade(&b.reg));
    }

    /// Whether `addr..addr + len` overlaps a live registered buffer.
    pub fn overlaps(&self, addr: u64, len: u64) -> bool {
        let end = addr.saturating_add(len);
        let map = self.map();
        // Live registrations are disjoint: the last live one starting before `end` is the only
        // one that can reach past `addr`. Dead entries (pruned at the next `add`) are skipped.
        map.range(..end)
            .rev()
            .find_map(|(_, w)| w.upgrade())
            .is_some_and(|r| r.mem.addr().saturating_add(r.mem.len()) > addr)
    }

    /// The live registered buffer holding all of `addr..addr + len`, if any.
    pub fn find(&self, addr: u64, len: u64) -> Option<HostBuffer> {
        let map = self.map();
        let reg = map.range(..=addr).rev().find_map(|(_, w)| w.upgrade())?;
        let end = addr.checked_add(len)?;
        (end <= reg.mem.addr() + reg.mem.len()).then_some(HostBuffer { reg })
    }
}
