//! The RAM tier over memory-mapped model files: which file-backed blocks stay in RAM (the page
//! cache), which are read ahead before their copy, and which are dropped after it.
//!
//! # Why
//! A model file larger than RAM is cached by the kernel's page cache, which is LRU: a cyclic pass
//! over more bytes than it holds misses on every page, as LRU does in VRAM. The engine knows the
//! schedule, so it plans RAM as it plans VRAM:
//! - blocks the VRAM keep plan keeps resident need their host bytes once: after their load they
//!   are dropped from RAM;
//! - of the blocks that stream through VRAM every pass, a stable set up to the cap (less a ring's
//!   worth for the streamed blocks in flight) stays cached
//!   ([`plan`]: in block order, which for a model is file order; every streamed block is used once
//!   a pass, so any set of the same bytes saves as much, and a stable one is what LRU cannot keep);
//! - the others are read from the disk every pass: each is read ahead (`MADV_WILLNEED`) when its
//!   load is queued, which the planner does one prefetch horizon before its use, and dropped
//!   (`MADV_PAGEOUT`) once its copy completed, so the cached set is never pushed out by bytes that
//!   will not be needed again for a whole pass.
//!
//! The decisions are made here, under the engine's lock, and only recorded; a thread of its own
//! (`synapswap-ram`, started by the first [`crate::Engine::register_mapping`]) gives the advice,
//! outside the lock and off the transfer thread, because the kernel submits a `WILLNEED`'s reads
//! and a `PAGEOUT`'s reclaim before it returns (tens of milliseconds for a 256 MiB tensor, assumed
//! from the syscall's work, not measured alone): on the transfer thread that stalled the copies.
//!
//! Only blocks cut from a buffer registered as a file mapping ([`crate::Engine::register_mapping`])
//! are in this tier. Cost: O(blocks) per keep plan (a replan), O(1) per load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use crate::page_cache::{self, Advice};
use crate::planner::Planner;
use crate::BlockId;

/// One piece of advice on `addr..addr + len`; `advice` `None`: only count how much of the range
/// is in RAM (the tier is off). A read-ahead carries its load's `pending` flag, cleared when the
/// copy is done: given after that (the advisor fell behind), it would only read back what the
/// page-out after the copy drops (and pages still being read are locked, so that page-out
/// misses them), so it is skipped.
#[derive(Debug)]
pub(crate) struct Item {
    addr: u64,
    len: u64,
    advice: Option<Advice>,
    pending: Option<Arc<AtomicBool>>,
}

/// Pages of file-backed loads looked at when their load was queued, and those already in RAM.
#[derive(Debug, Default)]
pub(crate) struct PageCacheCounts {
    pub checked: AtomicU64,
    pub resident: AtomicU64,
}

/// Gives the kernel one piece of advice, counting first how much of a range about to be read
/// is already in RAM.
pub(crate) fn give(counts: &PageCacheCounts, item: Item) {
    // A read-ahead whose copy is done is skipped, and not counted: the copy has faulted its
    // pages in, so it would count as a hit.
    if item.pending.as_ref().is_some_and(|p| !p.load(Relaxed)) {
        return;
    }
    if item.advice != Some(Advice::PageOut) {
        if let Some((resident, pages)) = page_cache::residency(item.addr, item.len) {
            counts.checked.fetch_add(pages, Relaxed);
            counts.resident.fetch_add(resident, Relaxed);
        }
    }
    if let Some(a) = item.advice {
        page_cache::advise(item.addr, item.len, a);
    }
}

/// The advisor thread: its queue and its handle.
#[derive(Debug)]
pub(crate) struct Advisor {
    tx: Sender<Item>,
    thread: std::thread::JoinHandle<()>,
}

/// Starts the thread that gives advice sent to it, in order, until the sender is dropped.
pub(crate) fn start_advisor(counts: Arc<PageCacheCounts>) -> std::io::Result<Advisor> {
    let (tx, rx) = channel::<Item>();
    let thread = std::thread::Builder::new()
        .name("synapswap-ram".into())
        .spawn(move || {
            for item in rx {
                give(&counts, item);
            }
        })?;
    Ok(Advisor { tx, thread })
}

/// The RAM tier's state.
#[derive(Debug, Default)]
pub(crate) struct RamTier {
    /// Off: file mappings are ordinary buffers ([`crate::EngineBuilder::ram_tier`]).
    on: bool,
    /// Bytes of file-backed blocks it may keep cached.
    cap: u64,
    /// The most the staging ring can hold (`transfer/staging.rs`), left out of the cached set.
    staging_bytes: u64,
    /// By block index: file-backed (its host copy is a file mapping): its host address and size.
    file: Vec<Option<(u64, u64)>>,
    /// How many entries of `file` are `Some` (so an engine with none pays O(1) per refresh).
    files: usize,
    /// By block index: stays cached in RAM.
    cached: Vec<bool>,
    /// Bytes of the cached blocks.
    cached_bytes: u64,
    /// The planner's replan count the cached set was chosen at.
    planned_at: Option<u64>,
    /// Advice not yet given, while there is no advisor thread (the transfer thread gives it).
    advice: Vec<Item>,
    /// The advisor thread.
    advisor: Option<Advisor>,
    /// Bytes of file mappings page-locked so far ([`RamTier::reserve_lock`]).
    locked: u64,
    /// By block index: the pending flag of its queued load's read-ahead (see [`Item`]).
    pending: HashMap<u32, Arc<AtomicBool>>,
}

/// Which file-backed blocks stay cached: `blocks[i]` is `Some((bytes, streamed))` for a
/// file-backed block (`streamed`: the VRAM keep plan does not keep it). The streamed ones, in
/// block order, while they fit under `cap`; a block kept in VRAM is never cached (its bytes are
/// on the device). Returns the choice and its bytes.
pub(crate) fn plan(blocks: &[Option<(u64, bool)>], cap: u64) -> (Vec<bool>, u64) {
    let mut used = 0u64;
    let cached = blocks
        .iter()
        .map(|b| match b {
            Some((bytes, true)) if used + bytes <= cap => {
                used += bytes;
                true
            }
            _ => false,
        })
        .collect();
    (cached, used)
}

impl RamTier {
    /// A tier that may cache up to `cap` bytes (`on`), or none; copies are staged through up to
    /// `staging_bytes`.
    pub fn new(cap: u64, on: bool, staging_bytes: u64) -> RamTier {
        RamTier {
            on,
            cap,
            staging_bytes,
            ..RamTier::default()
        }
    }

    /// The cap, bytes.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Bytes of the blocks chosen to stay cached.
    pub fn cached_bytes(&self) -> u64 {
        self.cached_bytes
    }

    /// A block was added, its host copy at `addr..addr + bytes`: `file` when that is a file
    /// mapping.
    pub fn add(&mut self, index: u32, file: bool, addr: u64, bytes: u64) {
        let i = index as usize;
        if self.file.len() <= i {
            self.file.resize(i + 1, None);
            self.cached.resize(i + 1, false);
        }
        self.remove(index);
        self.file[i] = file.then_some((addr, bytes));
        self.files += usize::from(file);
        self.planned_at = None;
    }

    /// A block was freed.
    pub fn remove(&mut self, index: u32) {
        let i = index as usize;
        if let Some(flag) = self.pending.remove(&index) {
            flag.store(false, Relaxed);
        }
        if let Some((_, bytes)) = self.file.get_mut(i).and_then(Option::take) {
            self.files -= 1;
            if std::mem::take(&mut self.cached[i]) {
                self.cached_bytes -= bytes;
            }
        }
    }

    /// Chooses the cached set again if the keep plan changed since it was chosen.
    pub fn refresh(&mut self, planner: &Planner) {
        let replans = planner.replans();
        if !self.on || self.planned_at == Some(replans) || self.files == 0 {
            return;
        }
        self.planned_at = Some(replans);
        let blocks: Vec<Option<(u64, bool)>> = (0..self.file.len())
            .map(|i| {
                let (_, bytes) = self.file[i]?;
                let id = planner.id_at(i as u32)?;
                Some((bytes, !planner.is_kept(id).unwrap_or(false)))
            })
            .collect();
        // Streamed blocks in flight (read ahead, being copied, not yet dropped) are in RAM too,
        // at most a ring's worth, and so is the staging ring: the cached set leaves room for
        // them, so that what the tier holds in RAM stays under the cap.
        let room = self
            .cap
            .saturating_sub(planner.streaming_bytes())
            .saturating_sub(self.staging_bytes);
        let (cached, bytes) = plan(&blocks, room);
        // A block that leaves the cached set leaves RAM now (a kept block's next load is far
        // off; a streamed one's is dropped again after it anyway).
        for (i, &now) in cached.iter().enumerate() {
            // (One whose load is queued is dropped after its copy: not now, under the copy.)
            let loading = self.pending.contains_key(&(i as u32));
            if self.cached.get(i).copied().unwrap_or(false) && !now && !loading {
                if let Some((addr, bytes)) = self.file[i] {
                    self.push(Item {
                        addr,
                        len: bytes,
                        advice: Some(Advice::PageOut),
                        pending: None,
                    });
                }
            }
        }
        (self.cached, self.cached_bytes) = (cached, bytes);
    }

    /// A load of `block` (host bytes `addr..addr + len`) was queued: read a file-backed block
    /// ahead.
    pub fn queued(&mut self, block: BlockId, addr: u64, len: u64) {
        if self.is_file(block) {
            let flag = Arc::new(AtomicBool::new(true));
            if let Some(old) = self.pending.insert(block.index, flag.clone()) {
                old.store(false, Relaxed);
            }
            self.push(Item {
                addr,
                len,
                advice: self.on.then_some(Advice::WillNeed),
                pending: Some(flag),
            });
        }
    }

    /// A load of `block` completed: a file-backed block not in the cached set leaves RAM.
    pub fn loaded(&mut self, block: BlockId, addr: u64, len: u64) {
        let i = block.index as usize;
        if let Some(flag) = self.pending.remove(&block.index) {
            flag.store(false, Relaxed);
        }
        if self.on && self.is_file(block) && !self.cached.get(i).copied().unwrap_or(false) {
            self.push(Item {
                addr,
                len,
                advice: Some(Advice::PageOut),
                pending: None,
            });
        }
    }

    fn is_file(&self, block: BlockId) -> bool {
        self.file
            .get(block.index as usize)
            .is_some_and(Option::is_some)
    }

    fn push(&mut self, item: Item) {
        match &self.advisor {
            // A send fails only once the thread is gone (it never exits while we hold the
            // sender): then the transfer thread gives it.
            Some(a) => {
                if let Err(e) = a.tx.send(item) {
                    self.advisor = None;
                    self.advice.push(e.0);
                }
            }
            None => self.advice.push(item),
        }
    }

    /// Whether advice goes to an advisor thread.
    pub fn has_advisor(&self) -> bool {
        self.advisor.is_some()
    }

    /// Sends further advice to `advisor` (the first one set stays; another one ends at once).
    pub fn set_advisor(&mut self, advisor: Advisor) {
        if self.advisor.is_none() {
            self.advisor = Some(advisor);
        }
    }

    /// Stops the advisor thread (at shutdown): it ends once the advice sent is given. Returns
    /// its handle, to join outside the engine's lock.
    pub fn close(&mut self) -> Option<std::thread::JoinHandle<()>> {
        self.advisor.take().map(|a| a.thread)
    }

    /// Whether a file mapping of `len` bytes may be page-locked: while every mapping locked so
    /// far and this one fit under the cap (pinned pages cannot be dropped from RAM). Counts it.
    pub fn reserve_lock(&mut self, len: u64) -> bool {
        match self.locked.checked_add(len) {
            Some(total) if total <= self.cap => {
                self.locked = total;
                true
            }
            _ => false,
        }
    }

    /// A mapping counted by [`RamTier::reserve_lock`] was not page-locked after all.
    pub fn unreserve_lock(&mut self, len: u64) {
        self.locked = self.locked.saturating_sub(len);
    }

    /// The advice recorded without an advisor thread, for the transfer thread to give.
    pub fn take_advice(&mut self) -> Vec<Item> {
        std::mem::take(&mut self.advice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cached_set_is_streamed_blocks_in_order_under_the_cap() {
        let blocks = [
            Some((10, true)),
            Some((50, false)), // kept in VRAM: its bytes are on the device
            None,              // not file-backed
            Some((30, true)),
            Some((30, true)), // over the cap
            Some((5, true)),
        ];
        let (cached, bytes) = plan(&blocks, 45);
        assert_eq!(cached, [true, false, false, true, false, true]);
        assert_eq!(bytes, 45);
        // The same inputs give the same set (stable from pass to pass).
        assert_eq!(plan(&blocks, 45).0, cached);
    }
}
