//! The staging ring: pinned host buffers that pageable bytes are copied through.
//!
//! A block's host copy is pageable when the device refused to page-lock it (read-only
//! registration of a memory-mapped model file is unsupported by some drivers; the page-lock limit
//! was reached). CUDA copies from pageable memory through a staging buffer of its own, and
//! `cuMemcpyHtoDAsync` from pageable memory returns only once the bytes are staged, so the copy
//! no longer overlaps the host's next work. The transfer thread stages such a chunk itself
//! instead: it copies the chunk's bytes into a free slot of this ring (a `memcpy` on the transfer
//! thread, with the engine's lock not held) and puts the asynchronous copy of the slot on the
//! link. While the device copies one slot, the thread fills the next: the host copy and the link
//! overlap, as with pinned memory. A write-back of a pageable block goes the other way: device to
//! slot, then slot to host once the copy has completed, before its job is reported done.
//!
//! Slots are chunk-sized ([`crate::EngineBuilder::chunk_bytes`], 8 MiB by default) and allocated
//! on first use, one per chunk on the link, at most [`MAX_SLOTS`]: so the ring costs nothing
//! when every host copy is pinned, and at most `MAX_SLOTS` chunks of pinned host memory (64 MiB
//! at the default chunk) when it is not. A chunk that finds no slot (every slot on the link, or
//! the allocation refused) is copied from its pageable bytes directly: correct, only slower.

use crate::backend::{Backend, Direction, Memory, Segment, Ticket};
use crate::Error;

/// Most slots (chunks staged at once).
pub(crate) const MAX_SLOTS: usize = 8;

/// A slot on the link: its ticket, and for a write-back the host ranges to fill from it.
struct Busy {
    ticket: Ticket,
    slot: usize,
    /// (host address, offset in the slot, bytes) to copy out once the ticket completes.
    copy_out: Vec<(u64, u64, u64)>,
}

/// Pinned slots and the ones on the link.
#[derive(Default)]
pub(crate) struct StagingRing {
    slots: Vec<Box<dyn Memory>>,
    free: Vec<usize>,
    busy: Vec<Busy>,
    /// No further slot is allocated once the backend refused one.
    refused: bool,
}

impl StagingRing {
    /// A free slot of at least `len` bytes, allocating one while under [`MAX_SLOTS`].
    fn take(&mut self, backend: &dyn Backend, len: u64, slot_bytes: u64) -> Option<usize> {
        if len > slot_bytes {
            return None;
        }
        if let Some(i) = self.free.pop() {
            return Some(i);
        }
        if self.refused || self.slots.len() >= MAX_SLOTS {
            return None;
        }
        match backend.alloc_host(slot_bytes) {
            Ok(m) => {
                self.slots.push(m);
                Some(self.slots.len() - 1)
            }
            Err(_) => {
                self.refused = true;
                None
            }
        }
    }

    /// Puts the copy of `segments` (direction `dir`) on the link through a slot; `None` when no
    /// slot is free (the caller copies directly).
    ///
    /// # Safety
    /// As [`Backend::submit`] for every segment: its host and device ranges stay valid and
    /// untouched by others until [`StagingRing::completed`] has run for the ticket.
    pub unsafe fn submit(
        &mut self,
        backend: &dyn Backend,
        dir: Direction,
        segments: &[Segment],
        slot_bytes: u64,
    ) -> Option<Result<Ticket, Error>> {
        let len: u64 = segments.iter().map(|s| s.len).sum();
        let slot = self.take(backend, len, slot_bytes)?;
        let base = self.slots[slot].addr();
        let mut staged = Vec::with_capacity(segments.len());
        let mut copy_out = Vec::new();
        let mut at = 0;
        for s in segments {
            if dir == Direction::HostToDevice {
                // SAFETY: the source is the caller's live host range (this function's contract)
                // and the destination lies inside our slot (`at + s.len <= len <= slot_bytes`),
                // which nothing else uses while it is not free; the two do not overlap (the slot
                // is our own allocation).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        s.host as usize as *const u8,
                        (base + at) as usize as *mut u8,
                        s.len as usize,
                    );
                }
            } else {
                copy_out.push((s.host, at, s.len));
            }
            staged.push(Segment {
                host: base + at,
                device: s.device,
                len: s.len,
            });
            at += s.len;
        }
        // SAFETY: the slot's ranges stay ours until `completed` frees the slot, after the
        // ticket's wait; the device ranges are the caller's contract.
        let r = unsafe {
            match staged[..] {
                [s] => backend.submit(dir, s.host as usize as *mut u8, s.device, s.len as usize),
                _ => backend.submit_batch(dir, &staged),
            }
        };
        match r {
            Ok(ticket) => self.busy.push(Busy {
                ticket,
                slot,
                copy_out,
            }),
            Err(_) => self.free.push(slot),
        }
        Some(r)
    }

    /// The copy with `ticket` has completed (`ok`: successfully): a write-back's bytes go from
    /// its slot to the host, and the slot is free again. Not a staged ticket: nothing to do.
    pub fn completed(&mut self, ticket: Ticket, ok: bool) {
        let Some(k) = self.busy.iter().position(|b| b.ticket == ticket) else {
            return;
        };
        let b = self.busy.swap_remove(k);
        if ok {
            let base = self.slots[b.slot].addr();
            for (host, at, len) in b.copy_out {
                // SAFETY: the slot holds the device's bytes (the copy completed), and the host
                // range is the write-back's, still reserved for it until its job is reported
                // (the caller's contract at `submit`); they do not overlap.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        (base + at) as usize as *const u8,
                        host as usize as *mut u8,
                        len as usize,
                    );
                }
            }
        }
        self.free.push(b.slot);
    }
}
