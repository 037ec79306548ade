//! The landing buffer: host memory of the RAM tier's own that file-backed blocks are read into
//! (`disk_reader.rs`) and copied to the device from. Two regions:
//! - the ring, `0..ring`: the next uncached blocks, each read a disk horizon ahead of its copy
//!   and gone after it; a block lands at the first free run that holds it ([`ALIGN`]ed), and a
//!   landed block no longer among the next ones gives way;
//! - the cached set, `ring..len`: each block the tier keeps in RAM at a place of its own (first
//!   fit, [`Landing::place_kept`]), read once and kept until it leaves the set (one copy a byte to the device,
//!   pinned on CUDA, where the page cache's pages would go through the staging ring: two).
//!
//! Pure bookkeeping: the reads and the copies are done by others, outside the engine's lock.
//!
//! A block's entry goes through [`Stage::Reading`] (its read on the disk), [`Stage::Read`] (its
//! bytes are here) and [`Stage::Copying`] (its load was queued from here; the load's end frees
//! it). A load queued while its read is still on the disk waits for the read
//! ([`Landing::start_copy`] says so). An entry whose block was freed while its read was on the
//! disk keeps its space until the read is reported ([`Stage::Orphan`]): the disk is still
//! writing it.

use super::disk_reader::ALIGN;

/// Where a landed block stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Reading,
    Read,
    /// Its load was queued; `read`: the read is done (else the load waits for it).
    Copying {
        read: bool,
    },
    /// Its block is gone, its read still on the disk.
    Orphan,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub block: u32,
    /// The read's token (`disk_reader::Read::token`).
    pub token: u64,
    /// Offset of its first page in the buffer, and its pages' bytes.
    pub start: u64,
    pub len: u64,
    /// The block's first byte is `start + skip` (the file offset's remainder by [`ALIGN`]).
    pub skip: u64,
    pub stage: Stage,
    /// In the cached set: stays after its copy.
    pub kept: bool,
}

/// The buffer's entries, by offset.
#[derive(Debug)]
pub(crate) struct Landing {
    /// The buffer's address and bytes, and the ring's bytes (its start).
    pub base: u64,
    pub len: u64,
    pub ring: u64,
    entries: Vec<Entry>,
    tokens: u64,
}

impl Landing {
    pub fn new(base: u64, len: u64, ring: u64) -> Landing {
        Landing {
            base,
            len,
            ring: ring.min(len),
            entries: Vec::new(),
            tokens: 0,
        }
    }

    /// Entries of the cached set.
    pub fn kept(&self) -> usize {
        self.entries.iter().filter(|e| e.kept).count()
    }

    /// The entry of `block`, if it has one (an orphan is no block's).
    pub fn get(&self, block: u32) -> Option<&Entry> {
        (self.entries.iter()).find(|e| e.block == block && e.stage != Stage::Orphan)
    }

    fn position(&self, block: u32) -> Option<usize> {
        (self.entries.iter()).position(|e| e.block == block && e.stage != Stage::Orphan)
    }

    /// The block and the cached-set flag of the entry whose read has `token` (an orphan's
    /// block is gone: `None`).
    pub fn read_of(&self, token: u64) -> Option<(u32, bool)> {
        (self.entries.iter())
            .find(|e| e.token == token && e.stage != Stage::Orphan)
            .map(|e| (e.block, e.kept))
    }

    /// Whether any entry is live.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Pages' bytes an entry for a block of `bytes` at file offset remainder `skip` takes.
    pub fn pages(skip: u64, bytes: u64) -> u64 {
        (skip + bytes).div_ceil(ALIGN) * ALIGN
    }

    /// Bytes free in one run of the ring, the largest.
    pub fn largest_free(&self) -> u64 {
        let mut at = 0;
        let mut best = 0;
        for e in self.entries.iter().take_while(|e| e.start < self.ring) {
            best = best.max(e.start - at);
            at = e.start + e.len;
        }
        best.max(self.ring.saturating_sub(at))
    }

    /// Places `block` (`bytes` at a file offset whose remainder by [`ALIGN`] is `skip`) in the
    /// ring: its entry, [`Stage::Reading`], at the first free run that holds it. `None`: no
    /// room.
    pub fn place(&mut self, block: u32, skip: u64, bytes: u64) -> Option<&Entry> {
        self.first_fit(0, self.ring, block, skip, bytes, false)
    }

    /// Places a block of the cached set past the ring, at the first free run that holds it,
    /// [`Stage::Reading`]. `None`: no room (it is then copied from its mapping).
    pub fn place_kept(&mut self, block: u32, skip: u64, bytes: u64) -> Option<&Entry> {
        self.first_fit(self.ring, self.len, block, skip, bytes, true)
    }

    /// Places `block` at the first free run of `from..to` that holds its pages.
    fn first_fit(
        &mut self,
        from: u64,
        to: u64,
        block: u32,
        skip: u64,
        bytes: u64,
        kept: bool,
    ) -> Option<&Entry> {
        let len = Self::pages(skip, bytes);
        let mut at = from;
        let mut slot = None;
        for (i, e) in self.entries.iter().enumerate() {
            if e.start < from {
                continue;
            }
            if e.start >= to || e.start - at >= len {
                slot = Some(i);
                break;
            }
            at = e.start + e.len;
        }
        if at + len > to {
            return None;
        }
        let i = slot.unwrap_or(self.entries.len());
        Some(self.insert(i, block, at, len, skip, kept))
    }

    fn insert(
        &mut self,
        i: usize,
        block: u32,
        start: u64,
        len: u64,
        skip: u64,
        kept: bool,
    ) -> &Entry {
        self.tokens += 1;
        self.entries.insert(
            i,
            Entry {
                block,
                token: self.tokens,
                start,
                len,
                skip,
                stage: Stage::Reading,
                kept,
            },
        );
        &self.entries[i]
    }

    /// Frees the landed ([`Stage::Read`]) entries for which `keep` is false: blocks no longer
    /// among the next ones to read (the plan changed, or they were loaded another way).
    pub fn evict_idle(&mut self, mut keep: impl FnMut(u32) -> bool) {
        self.entries
            .retain(|e| e.kept || e.stage != Stage::Read || keep(e.block));
    }

    /// Whether some entry of the ring is [`Stage::Read`] (could give way).
    pub fn has_idle(&self) -> bool {
        (self.entries.iter()).any(|e| !e.kept && e.stage == Stage::Read)
    }

    /// The read with `token` was reported (`ok`: its bytes are here). Returns its block when a
    /// load of it waits for the read (the caller releases it: from here if `ok`, else from the
    /// file's mapping). A failed read frees its entry unless a load waits on it (which frees it
    /// at its end).
    pub fn read_done(&mut self, token: u64, ok: bool) -> Option<u32> {
        let i = self.entries.iter().position(|e| e.token == token)?;
        let e = &mut self.entries[i];
        match e.stage {
            Stage::Reading if ok => e.stage = Stage::Read,
            Stage::Copying { read: false } => {
                e.stage = Stage::Copying { read: true };
                // Failed: its load goes from the mapping, and the entry never serves another
                // (not kept: `copied` frees it).
                e.kept &= ok;
                return Some(e.block);
            }
            // Failed before its load, or an orphan: its space is free.
            _ => {
                self.entries.remove(i);
            }
        }
        None
    }

    /// A load of `block` is queued: its bytes' address, and whether the load must wait for the
    /// read. `None`: no entry (the load copies from the mapping).
    pub fn start_copy(&mut self, block: u32) -> Option<(u64, bool)> {
        let i = self.position(block)?;
        let e = &mut self.entries[i];
        let wait = match e.stage {
            Stage::Reading => true,
            Stage::Read => false,
            // Another load of it from here is on: not twice.
            Stage::Copying { .. } | Stage::Orphan => return None,
        };
        e.stage = Stage::Copying { read: !wait };
        Some((self.base + e.start + e.skip, wait))
    }

    /// `block`'s load from here is over (done or failed): a block of the cached set stays (its
    /// bytes are read), any other's space is free (once its read is reported, if that is still
    /// on the disk).
    pub fn copied(&mut self, block: u32) {
        let Some(i) = self.position(block) else {
            return;
        };
        let e = &mut self.entries[i];
        match e.stage {
            Stage::Copying { read: true } if e.kept => e.stage = Stage::Read,
            // Failed while it waited for its read: the disk still writes there.
            Stage::Copying { read: false } | Stage::Reading => {
                e.stage = Stage::Orphan;
                e.kept = false;
            }
            _ => {
                self.entries.remove(i);
            }
        }
    }

    /// `block` is gone (or leaves the cached set): its space is free (once its read is
    /// reported, if that is still on the disk).
    pub fn release(&mut self, block: u32) {
        let Some(i) = self.position(block) else {
            return;
        };
        match self.entries[i].stage {
            Stage::Reading => {
                self.entries[i].stage = Stage::Orphan;
                self.entries[i].kept = false;
            }
            // A load from here is queued (and may wait for the read): its end frees it
            // (`copied`), as the ring's are; freed now, the read's report would find no load
            // to release.
            Stage::Copying { .. } => self.entries[i].kept = false,
            _ => {
                self.entries.remove(i);
            }
        }
    }

    /// The cached set changed: its blocks for which `stays` is false leave (see
    /// [`Landing::release`]).
    pub fn release_kept(&mut self, mut stays: impl FnMut(u32) -> bool) {
        let kept: Vec<u32> = (self.entries.iter())
            .filter(|e| e.kept && e.stage != Stage::Orphan && !stays(e.block))
            .map(|e| e.block)
            .collect();
        for b in kept {
            self.release(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = ALIGN;

    #[test]
    fn blocks_land_first_fit_aligned_and_free_their_space_after_their_copy() {
        let mut l = Landing::new(1 << 30, 10 * P, 10 * P);
        // 3 pages: a block of 2 pages + 100 bytes at remainder 0, and one at remainder 4000.
        let a = l.place(1, 0, 2 * P + 100).unwrap().clone();
        assert_eq!((a.start, a.len, a.stage), (0, 3 * P, Stage::Reading));
        let b = l.place(2, 4000, 2 * P).unwrap().clone();
        assert_eq!((b.start, b.len), (3 * P, 3 * P));
        let c = l.place(3, 0, 4 * P).unwrap().clone();
        assert_eq!(c.start, 6 * P);
        assert!(l.place(4, 0, P).is_none(), "full");
        assert_eq!(l.largest_free(), 0);
        // A load of 2 queued before its read is done waits; its address skips the remainder.
        assert_eq!(l.start_copy(2), Some(((1 << 30) + 3 * P + 4000, true)));
        assert_eq!(l.start_copy(2), None, "one load from here at a time");
        assert_eq!(
            l.read_done(b.token, true),
            Some(2),
            "its waiting load is released"
        );
        assert_eq!(l.read_done(a.token, true), None);
        assert_eq!(l.start_copy(1), Some(((1 << 30), false)));
        l.copied(1);
        // Block 1's space is the first free run again.
        assert_eq!(l.place(5, 0, 3 * P).unwrap().start, 0);
    }

    #[test]
    fn a_block_freed_while_its_read_is_on_the_disk_keeps_its_space_until_the_read_ends() {
        let mut l = Landing::new(0, 4 * P, 4 * P);
        let a = l.place(1, 0, 4 * P).unwrap().clone();
        l.release(1);
        assert!(l.get(1).is_none());
        assert!(l.place(2, 0, P).is_none(), "the disk still writes there");
        assert_eq!(l.read_done(a.token, true), None);
        assert!(l.is_empty());
        assert!(l.place(2, 0, P).is_some());
    }

    #[test]
    fn a_failed_read_frees_its_entry_or_releases_its_waiting_load() {
        let mut l = Landing::new(0, 8 * P, 8 * P);
        let a = l.place(1, 0, P).unwrap().clone();
        assert_eq!(l.read_done(a.token, false), None);
        assert!(l.get(1).is_none(), "its load will copy from the mapping");
        let b = l.place(2, 0, P).unwrap().clone();
        assert_eq!(l.start_copy(2).map(|(_, w)| w), Some(true));
        assert_eq!(l.read_done(b.token, false), Some(2));
        l.copied(2);
        assert!(l.is_empty());
    }

    #[test]
    fn the_cached_set_keeps_its_places_past_the_ring_after_each_copy() {
        let mut l = Landing::new(0, 10 * P, 4 * P);
        let k = l.place_kept(7, 10, 2 * P).unwrap().clone();
        assert_eq!((k.start, k.len), (4 * P, 3 * P), "past the ring");
        l.place_kept(8, 0, 3 * P).unwrap();
        assert!(l.place_kept(9, 0, P).is_none(), "the set's region is full");
        // The ring is still the ring's: 4 pages, no more.
        assert!(l.place(1, 0, 5 * P).is_none());
        l.place(1, 0, 4 * P).unwrap();
        l.read_done(k.token, true);
        assert_eq!(l.start_copy(7), Some((4 * P + 10, false)));
        l.copied(7);
        assert_eq!(l.get(7).unwrap().stage, Stage::Read, "kept after its copy");
        l.evict_idle(|_| false);
        assert!(l.get(7).is_some(), "never gives way");
        // The set changes: 8 stays; 7, landed, leaves at once, and its place is free again.
        l.release_kept(|b| b == 8);
        assert!(l.get(7).is_none() && l.get(8).is_some());
        assert_eq!(l.place_kept(9, 0, 3 * P).unwrap().start, 4 * P);
        // Block 8's read is still on the disk: leaving, it keeps its place until the read ends.
        l.release_kept(|_| false);
        assert!(l.get(8).is_none());
        assert!(l.place_kept(10, 0, 3 * P).is_none());
    }

    #[test]
    fn a_block_leaving_the_cached_set_while_its_load_waits_for_its_read_is_still_released() {
        let mut l = Landing::new(0, 8 * P, 4 * P);
        let k = l.place_kept(7, 0, P).unwrap().clone();
        assert_eq!(l.start_copy(7).map(|(_, w)| w), Some(true));
        l.release_kept(|_| false);
        assert_eq!(l.read_done(k.token, true), Some(7), "its waiting load goes");
        l.copied(7);
        assert!(
            l.get(7).is_none() && l.is_empty(),
            "and its place is free after it"
        );
        // A failed read of a kept block releases its load (from the mapping) and never
        // serves another.
        let k = l.place_kept(8, 0, P).unwrap().clone();
        l.start_copy(8);
        assert_eq!(l.read_done(k.token, false), Some(8));
        l.copied(8);
        assert!(l.get(8).is_none());
    }

    #[test]
    fn only_landed_blocks_no_longer_wanted_give_way() {
        let mut l = Landing::new(0, 8 * P, 8 * P);
        let a = l.place(1, 0, P).unwrap().clone();
        let b = l.place(2, 0, P).unwrap().clone();
        l.place(3, 0, P).unwrap();
        l.read_done(a.token, true);
        l.read_done(b.token, true);
        l.start_copy(2);
        assert!(l.has_idle());
        // Nothing wanted: 1 (landed) goes; 2 (copying) and 3 (reading) stay.
        l.evict_idle(|_| false);
        assert!(l.get(1).is_none());
        assert!(l.get(2).is_some() && l.get(3).is_some());
        assert!(!l.has_idle());
    }
}
