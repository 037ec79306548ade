//! The RAM tier over memory-mapped model files: which file-backed blocks stay in RAM (the page
//! cache), which are read ahead before their copy, and which are dropped after it.
//!
//! # Why
//! A model file larger than RAM is cached by the kernel's page cache, which is LRU: a cyclic pass
//! over more bytes than it holds misses on every page, as LRU does in VRAM. The engine knows the
//! schedule, so it plans RAM as it plans VRAM:
//! - blocks the VRAM keep plan keeps resident need their host bytes once: after their load they
//!   are dropped from RAM;
//! - of the blocks that stream through VRAM every pass, a stable set up to the cap (less room for
//!   the streamed blocks in flight and read ahead) stays cached ([`plan`]: spread evenly over
//!   block order, which for a model is file order; every streamed block is used once a pass, so
//!   any set of the same bytes saves as much, and a stable one is what LRU cannot keep);
//! - the others are read from the disk every pass, a disk horizon ahead of their copy
//!   ([`RamTier::look_ahead`]): the next ones the schedule uses are read ahead (`MADV_WILLNEED`)
//!   while up to [`RamTier::horizon_bytes`] of them are in RAM and not yet copied, so the disk
//!   reads the next uncached block while the blocks before it are copied (a read-ahead only when
//!   the load is queued left the disk idle through the cached blocks and each uncached copy
//!   waiting on the disk: the two took turns); each
//!   is dropped (`MADV_PAGEOUT`) once its copy completed, so the cached set is never pushed out
//!   by bytes that will not be needed again for a whole pass.
//!
//! # With the file known: direct reads
//! A mapping registered with [`crate::Engine::register_file_mapping`] names its file. Then the
//! page cache is not used at all (`ram_tier/disk_reader.rs` says why): the cached set and the
//! uncached blocks read ahead live in a landing buffer of the tier's own (`ram_tier/landing.rs`;
//! pinned on CUDA, so copies from it need no staging), allocated by the transfer thread once the
//! set is chosen, if the memory available then holds it. Each block of the set is read into its
//! place once, just ahead of its first use; the uncached ones are read into the landing's ring
//! (three of the largest, [`RamTier::landing_bytes`]) in the schedule's order, by reader
//! threads, with `O_DIRECT`; a load queued while its block's read is on the disk waits for it
//! (`TransferQueue::await_read`) while the loads behind it go on. A read that fails, or a
//! landing that cannot be had, ends direct reads: the kernel is advised instead, as below.
//!
//! # Without: advice to the kernel
//! The decisions are made here, under the engine's lock, and only recorded; a thread of its own
//! (`synapswap-ram`, started by the first [`crate::Engine::register_mapping`]) gives the advice,
//! outside the lock and off the transfer thread, because the kernel submits a `WILLNEED`'s reads
//! and a `PAGEOUT`'s reclaim before it returns (0.3-0.5 s of kernel time a GiB each, measured by
//! `scripts/measure-page-cache-costs.py`, BENCHMARKS.md): on the transfer thread that stalled the
//! copies. It also watches each read-ahead until its range is in RAM, which measures the disk
//! (`PageCacheCounts::disk`).
//!
//! Only blocks cut from a buffer registered as a file mapping ([`crate::Engine::register_mapping`])
//! are in this tier. Cost: O(blocks) per keep plan (a replan), O(1) per load, and per planner call
//! the look-ahead ([`RamTier::look_ahead`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod disk_reader;
mod landing;

pub(crate) use disk_reader::{DiskFile, DiskReader, OnDone};
use landing::Landing;

use crate::backend::Memory;
use crate::page_cache::{self, Advice};
use crate::planner::Planner;
use crate::rate::Rate;
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

/// Pages of file-backed loads looked at when their load was queued, and those already in RAM;
/// the disk's measured read rate.
#[derive(Debug, Default)]
pub(crate) struct PageCacheCounts {
    pub checked: AtomicU64,
    pub resident: AtomicU64,
    /// The disk's read rate, measured by the advisor thread on its read-aheads (the bytes a
    /// read-ahead brought into RAM over the seconds from its advice until the whole range was
    /// resident) or by the reader threads on their direct reads (`disk_reader.rs`), as the
    /// link's rate is measured.
    pub disk: Mutex<Rate>,
    /// Bytes of direct reads done (`disk_reader.rs`), and the nanoseconds a read was on the disk.
    pub direct: AtomicU64,
    pub direct_busy_ns: AtomicU64,
}

/// How long a read-ahead is watched before it is given up on (no sample): a range the kernel
/// never brings in whole (pages reclaimed under pressure as they arrive) must not stall the
/// advice behind it.
const READ_AHEAD_WATCH: Duration = Duration::from_secs(10);

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

/// Starts the thread that gives advice sent to it until the sender is dropped: read-aheads in
/// order, each watched until its range is in RAM to measure the disk (`PageCacheCounts::disk`); page-outs
/// that arrive meanwhile are given at once (they keep the tier under its cap), read-aheads wait
/// their turn (one at a time keeps each measurement to its own bytes; the kernel still has a
/// whole tensor's reads queued).
pub(crate) fn start_advisor(counts: Arc<PageCacheCounts>) -> std::io::Result<Advisor> {
    let (tx, rx) = channel::<Item>();
    let thread = std::thread::Builder::new()
        .name("synapswap-ram".into())
        .spawn(move || {
            let mut waiting = VecDeque::new();
            loop {
                let item = match waiting.pop_front() {
                    Some(item) => item,
                    None => match rx.recv() {
                        Ok(item) => item,
                        Err(_) => break,
                    },
                };
                if item.advice == Some(Advice::WillNeed) {
                    read_ahead(&counts, item, &rx, &mut waiting);
                } else {
                    give(&counts, item);
                }
            }
        })?;
    Ok(Advisor { tx, thread })
}

/// Gives a read-ahead and watches its range until it is in RAM, adding the time it took to the
/// disk's rate; gives up (no sample) when its copy is done first (the copy faulted pages in
/// itself, or the page-out after it raced the watch) or after [`READ_AHEAD_WATCH`]. Advice that
/// arrives meanwhile: page-outs given at once, the rest queued on `waiting`.
fn read_ahead(
    counts: &PageCacheCounts,
    item: Item,
    rx: &Receiver<Item>,
    waiting: &mut VecDeque<Item>,
) {
    let pending = item.pending.clone();
    let is_pending = || pending.as_ref().is_none_or(|p| p.load(Relaxed));
    // The whole pages advised: the first and last may be a neighbour's too, and are not read.
    let inner = page_cache::inner_pages(item.addr, item.len);
    let missing = inner
        .and_then(|(a, l)| page_cache::residency(a, l))
        .map_or(0, |(resident, pages)| pages - resident);
    if !is_pending() {
        return;
    }
    give(counts, item);
    let Some((addr, len)) = inner.filter(|_| missing > 0) else {
        return;
    };
    let start = Instant::now();
    let mut open = true;
    let page = crate::os::page_size() as u64;
    let mut watch = addr + len - page;
    // The kernel may skip part of a read-ahead (its page allocations do not retry under memory
    // pressure, and no error says so): what is still missing is advised again, at growing
    // intervals (harmless for pages whose read is only slow: in flight, they are skipped).
    let mut readvise = Duration::from_millis(100);
    let mut advised_at = start;
    loop {
        let elapsed = start.elapsed();
        // Polls at 1/32 of the time so far: the measurement is off by at most ~3%, at a
        // bounded number of `mincore` calls per read-ahead.
        let wait = (elapsed / 32).clamp(Duration::from_micros(200), Duration::from_millis(20));
        if open {
            match rx.recv_timeout(wait) {
                Ok(next) if next.advice == Some(Advice::PageOut) => give(counts, next),
                Ok(next) => waiting.push_back(next),
                Err(RecvTimeoutError::Timeout) => {}
                // The engine is shutting down (its blocks' frees end the watch).
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        } else {
            std::thread::sleep(wait);
        }
        if !is_pending() || start.elapsed() > READ_AHEAD_WATCH {
            return;
        }
        // The reads were submitted in order and complete about in order: the watched page
        // (at first the last) is checked alone, and the whole range once it is in (a `mincore`
        // of a 256 MiB range looks up 65,536 pages: polled in full, it cost the advisor more
        // than the reads it watched).
        match page_cache::residency(watch, 1) {
            Some((1, _)) => {}
            Some(_) if advised_at.elapsed() < readvise => continue,
            Some(_) => {
                if let Some(Some(from)) = page_cache::first_missing(addr, len) {
                    page_cache::advise(from, addr + len - from, Advice::WillNeed);
                }
                advised_at = Instant::now();
                readvise *= 2;
                continue;
            }
            None => return,
        }
        match page_cache::first_missing(addr, len) {
            Some(None) => {
                let bytes = missing * crate::os::page_size() as u64;
                let secs = start.elapsed().as_secs_f64();
                if let Ok(mut disk) = counts.disk.lock() {
                    disk.add(bytes, secs);
                }
                return;
            }
            Some(Some(page)) => watch = page,
            None => return,
        }
    }
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
    /// By block index: the pending flag of its read-ahead, until its copy is done (see [`Item`]).
    pending: HashMap<u32, Arc<AtomicBool>>,
    /// Bytes of the largest streamed, uncached file-backed block (0: none; nothing to read
    /// ahead).
    largest_uncached: u64,
    /// The file mappings whose file is known ([`crate::Engine::register_file_mapping`]): the
    /// mapping's address and bytes, the file offset of its first byte, the file.
    disk_files: Vec<(u64, u64, u64, Arc<DiskFile>)>,
    /// The reader threads, once a file is known: uncached blocks are read into `landing`.
    reader: Option<DiskReader>,
    /// Where the next uncached blocks are read to (`landing.rs`), and its memory.
    landing: Option<Landing>,
    landing_mem: Option<Box<dyn Memory>>,
    /// The landing buffer asked of the transfer thread ([`RamTier::take_landing_request`]):
    /// its bytes and its ring's.
    landing_asked: Option<(u64, u64)>,
    /// The transfer thread took the request (it is allocating it): it no longer changes.
    landing_taken: bool,
    /// A file-backed block's load was queued: the blocks are declared and the keep plan has
    /// settled, so the landing (sized from it) may be asked for.
    loading: bool,
    /// The most the cached set may hold at the last choice of it, bytes: the landing holds
    /// that past its ring.
    room: u64,
    /// A landing just arrived: blocks of the cached set loaded from their mapping meanwhile
    /// are read into their places ([`RamTier::land_ahead`]).
    refill: bool,
    /// A landing buffer given up (too small), for the transfer thread to free outside the lock.
    landing_old: Option<Box<dyn Memory>>,
    /// Why direct reads ended (a read or the landing's allocation failed): the kernel is
    /// advised instead.
    direct_off: Option<String>,
}

/// How many steps [`RamTier::look_ahead`] walks at most, looking for the next uncached blocks
/// (a bound on its cost per call where few blocks are uncached).
const LOOK_AHEAD_STEPS: usize = 4096;

/// Which file-backed blocks stay cached: `blocks[i]` is `Some((bytes, streamed))` for a
/// file-backed block (`streamed`: the VRAM keep plan does not keep it); a block kept in VRAM is
/// never cached (its bytes are on the device). Of the streamed ones, up to `cap` bytes, spread
/// evenly over block order (error diffusion: after each block, the cached bytes so far are
/// within half a block of `cap / streamed bytes` of the bytes so far). Any set of the same
/// bytes saves the disk as much; spread out, the disk reads each uncached block while the cached
/// ones before it are copied, where a cached run followed by an uncached one leaves the disk
/// idle through the first and the copies waiting through the second. Deterministic, so the set
/// is stable from pass to pass. Returns the choice and its bytes.
pub(crate) fn plan(blocks: &[Option<(u64, bool)>], cap: u64) -> (Vec<bool>, u64) {
    let streamed: u64 = blocks
        .iter()
        .map(|b| match b {
            Some((bytes, true)) => *bytes,
            _ => 0,
        })
        .sum();
    let share = if streamed == 0 {
        0.0
    } else {
        (cap as f64 / streamed as f64).min(1.0)
    };
    let (mut used, mut seen) = (0u64, 0u64);
    let cached = blocks
        .iter()
        .map(|b| match b {
            Some((bytes, true)) => {
                seen += bytes;
                let on_track = (used + bytes) as f64 <= share * seen as f64 + *bytes as f64 / 2.0;
                if on_track && used + bytes <= cap {
                    used += bytes;
                    true
                } else {
                    false
                }
            }
            _ => false,
        })
        .collect();
    (cached, used)
}

/// [`plan`], keeping what `was` cached: a block of the previous set that still streams stays
/// (in block order, while under `cap`), and [`plan`] spreads what room is left over the others.
/// The VRAM keep plan moves a few blocks at a replan, and the whole set chosen afresh would move
/// with them (the error diffusion shifts): each block that leaves it and each that joins is read
/// again, a stable set only those that must.
pub(crate) fn plan_keeping(
    blocks: &[Option<(u64, bool)>],
    cap: u64,
    was: &[bool],
) -> (Vec<bool>, u64) {
    let mut used = 0u64;
    let mut cached: Vec<bool> = (blocks.iter().enumerate())
        .map(|(i, b)| match b {
            Some((bytes, true)) if was.get(i).copied().unwrap_or(false) && used + bytes <= cap => {
                used += bytes;
                true
            }
            _ => false,
        })
        .collect();
    if used == 0 {
        return plan(blocks, cap);
    }
    let rest: Vec<Option<(u64, bool)>> = (blocks.iter().zip(&cached))
        .map(|(b, &c)| b.filter(|_| !c))
        .collect();
    let (more, bytes) = plan(&rest, cap - used);
    for (c, m) in cached.iter_mut().zip(more) {
        *c |= m;
    }
    (cached, used + bytes)
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

    /// Whether block `index` is in the cached set.
    pub fn is_cached(&self, index: u32) -> bool {
        self.cached.get(index as usize).copied().unwrap_or(false)
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
        if let Some(l) = self.landing.as_mut() {
            l.release(index);
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
        // So are the read-aheads beyond the ring ([`RamTier::look_ahead`]): two of the largest
        // blocks that could be uncached.
        let largest = blocks
            .iter()
            .filter_map(|b| b.filter(|&(_, streamed)| streamed).map(|(bytes, _)| bytes))
            .max()
            .unwrap_or(0);
        // With direct reads, the landing's ring instead of both ([`RamTier::landing_bytes`]):
        // the streamed blocks are read into it, not into the page cache, so the cached set
        // does not depend on the streaming zone (which the planner resizes as it replans: a set
        // chosen from it changed between replans, and each change read its blocks again).
        let in_flight = if self.can_read_directly() {
            Self::landing_for(largest)
        } else {
            planner.streaming_bytes() + 2 * largest
        };
        let room = self
            .cap
            .saturating_sub(self.staging_bytes)
            .saturating_sub(in_flight);
        let (cached, bytes) = plan_keeping(&blocks, room, &self.cached);
        self.largest_uncached = (blocks.iter().zip(&cached))
            .filter_map(|(b, &c)| b.filter(|&(_, streamed)| streamed && !c).map(|(n, _)| n))
            .max()
            .unwrap_or(0);
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
        // Each block of the set takes whole pages in the landing: up to two more than its bytes.
        let pages = 2 * disk_reader::ALIGN * cached.iter().filter(|&&c| c).count() as u64;
        (self.cached, self.cached_bytes, self.room) = (cached, bytes, room + pages);
        // Blocks that left the set leave the landing; the others keep their places.
        if let Some(l) = self.landing.as_mut() {
            let cached = &self.cached;
            l.release_kept(|b| cached.get(b as usize).copied().unwrap_or(false));
        }
        self.size_landing();
    }

    /// Block `index`'s offset in its file, its bytes and the file, when the file is known.
    fn file_offset(&self, index: u32) -> Option<(u64, u64, &Arc<DiskFile>)> {
        let (addr, bytes) = (*self.file.get(index as usize)?)?;
        let (map, _, offset, file) = (self.disk_files.iter())
            .find(|(a, len, _, _)| addr >= *a && addr + bytes <= a + len)?;
        Some((offset + (addr - map), bytes, file))
    }

    /// Whether blocks can be read directly into a landing buffer (`disk_reader.rs`): a file is
    /// known and no direct read failed.
    fn can_read_directly(&self) -> bool {
        self.on && self.reader.is_some() && self.direct_off.is_none()
    }

    /// Whether they are: only when some streamed block is not cached (the files exceed the
    /// cap). When every one is, the page cache holds them, which costs no anonymous memory and
    /// gives it back under pressure, and each is read from the disk once either way.
    fn direct(&self) -> bool {
        self.can_read_directly() && self.largest_uncached > 0
    }

    /// Bytes of landing buffer for uncached blocks of at most `largest` bytes: three of them
    /// (one being copied, one read and waiting for its copy, one being read: the disk never
    /// waits for the copies), each with a page of alignment either side.
    fn landing_for(largest: u64) -> u64 {
        // Whole pages: the cached set's places start where the ring ends, aligned for O_DIRECT.
        (3 * (largest + 2 * disk_reader::ALIGN)).div_ceil(disk_reader::ALIGN) * disk_reader::ALIGN
    }

    /// The landing buffer the cached set leaves room for, bytes (0: no direct reads).
    pub fn landing_bytes(&self) -> u64 {
        if self.direct() {
            Self::landing_for(self.largest_uncached)
        } else {
            0
        }
    }

    /// Asks for a landing buffer (of the transfer thread, which allocates it outside the lock)
    /// when there is none or it is too small for the largest uncached block and empty.
    fn size_landing(&mut self) {
        let ring = self.landing_bytes();
        if ring == 0 || self.landing_taken || !self.loading {
            return;
        }
        // Not taken yet: the request follows the latest choice of the set (the first ones are
        // made while the blocks are declared, before the keep plan settles).
        if self.landing_asked.is_some() {
            self.landing_asked = Some((ring + self.room, ring));
            return;
        }
        // A ring too small is replaced once empty (the largest uncached block grew); a cached
        // set grown past the landing is not (what does not fit is copied from its mapping).
        match &self.landing {
            Some(l) if l.ring >= ring || !l.is_empty() => {}
            _ => {
                self.landing = None;
                self.landing_old = self.landing_mem.take();
                self.landing_asked = Some((ring + self.room, ring));
            }
        }
    }

    /// Whether a landing buffer is asked for ([`RamTier::take_landing_request`]).
    pub fn landing_requested(&self) -> bool {
        self.landing_asked.is_some() && !self.landing_taken
    }

    /// A landing buffer to allocate (bytes), and one to free first: for the transfer thread,
    /// which gives the new one back with [`RamTier::set_landing`].
    pub fn take_landing_request(&mut self) -> Option<(u64, Option<Box<dyn Memory>>)> {
        let (bytes, _) = self.landing_asked.filter(|_| !self.landing_taken)?;
        self.landing_taken = true;
        Some((bytes, self.landing_old.take()))
    }

    /// The landing buffer asked for, or why there is none: then no more direct reads.
    pub fn set_landing(&mut self, mem: Result<Box<dyn Memory>, crate::Error>) {
        self.landing_taken = false;
        let Some((_, ring)) = self.landing_asked.take() else {
            return;
        };
        match mem {
            Ok(m) => {
                self.landing = Some(Landing::new(m.addr(), m.len(), ring));
                self.landing_mem = Some(m);
                self.refill = true;
            }
            Err(e) => {
                self.direct_off = Some(format!("no landing buffer: {e}"));
            }
        }
    }

    /// A file mapping whose file is known: `addr..addr + len` holds the file's bytes from
    /// `offset`.
    pub fn add_disk_file(&mut self, addr: u64, len: u64, offset: u64, file: Arc<DiskFile>) {
        self.forget_disk_files(addr, len);
        self.disk_files.push((addr, len, offset, file));
        self.planned_at = None;
    }

    /// A mapping was registered at `addr..addr + len`: a file known for an earlier mapping there
    /// (unmapped since, its address reused) is not this one's.
    pub fn forget_disk_files(&mut self, addr: u64, len: u64) {
        (self.disk_files).retain(|(a, l, _, _)| *a + *l <= addr || addr + len <= *a);
    }

    /// Whether the reader threads are started.
    pub fn has_reader(&self) -> bool {
        self.reader.is_some()
    }

    /// Sends uncached blocks' reads to `reader` (the first one set stays; another is given
    /// back, to close).
    pub fn set_reader(&mut self, reader: DiskReader) -> Option<DiskReader> {
        if self.reader.is_some() {
            return Some(reader);
        }
        self.reader = Some(reader);
        self.planned_at = None;
        None
    }

    /// A direct read (by its token) was reported: the block whose load waits for it, if one does
    /// (release it: from the landing buffer if `ok`, else from its mapping). A failed read ends
    /// direct reads (the kernel is advised instead).
    pub fn read_done(&mut self, token: u64, result: Result<(), String>) -> Option<u32> {
        let ok = result.is_ok();
        if let Err(e) = result {
            self.direct_off
                .get_or_insert(format!("a direct read failed: {e}"));
        }
        self.landing.as_mut()?.read_done(token, ok)
    }

    /// The block a direct read (by its token) is for, and whether it is of the cached set.
    pub fn read_of(&self, token: u64) -> Option<(u32, bool)> {
        self.landing.as_ref()?.read_of(token)
    }

    /// Why direct reads ended, if they did.
    pub fn direct_off(&self) -> Option<&str> {
        self.direct_off.as_deref()
    }

    /// Reads the next file-backed blocks whose file is known into the landing buffer, in the
    /// schedule's order: the uncached ones into its ring, as many as it holds (a landed one no
    /// longer among them gives way), and those of the cached set not read yet into their place.
    fn land_ahead(&mut self, planner: &Planner) {
        if self.landing.is_none() {
            return;
        }
        // The blocks of the cached set loaded before the landing existed (the first steps'
        // prefetches) went from their mapping: read now, not from the disk again next pass.
        // (The others are read in the schedule's order, below and at their load.)
        if std::mem::take(&mut self.refill) {
            for i in 0..self.cached.len() as u32 {
                let host = (planner.id_at(i)).and_then(|id| planner.residency(id).ok());
                if host != Some(crate::Residency::Host) {
                    self.land_kept(i);
                }
            }
        }
        let Some(landing) = &self.landing else {
            return;
        };
        // Nothing to do while the ring has no room, nothing in it gives way and every block of
        // the set has its place (counted last: the cheap tests decide most calls).
        if landing.largest_free() < self.largest_uncached + 2 * disk_reader::ALIGN
            && !landing.has_idle()
            && landing.kept() >= self.cached.iter().filter(|&&c| c).count()
        {
            return;
        }
        let ring = landing.ring;
        // (block, its offset in the file, bytes, the file, in the cached set)
        let mut want: Vec<(u32, u64, u64, Arc<DiskFile>, bool)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut pages = 0;
        planner.upcoming_host_blocks(LOOK_AHEAD_STEPS, |i, _| {
            if !seen.insert(i) {
                return true;
            }
            let Some((at, bytes, file)) = self.file_offset(i) else {
                return true;
            };
            let kept = self.is_cached(i);
            // A block of the set already landed needs nothing (and never gives way).
            if kept && landing.get(i).is_some() {
                return true;
            }
            if !kept {
                let need = Landing::pages(at % disk_reader::ALIGN, bytes);
                if pages + need > ring {
                    return false;
                }
                pages += need;
            }
            want.push((i, at, bytes, file.clone(), kept));
            true
        });
        if let Some(l) = self.landing.as_mut() {
            let wanted: std::collections::HashSet<u32> = want.iter().map(|w| w.0).collect();
            l.evict_idle(|b| wanted.contains(&b));
        }
        for (i, at, bytes, file, kept) in want {
            if self.landing.as_ref().is_none_or(|l| l.get(i).is_some()) {
                continue;
            }
            // A block of the set with no room is copied from its mapping; the ring's next one
            // waits for room.
            if !self.land(i, at, bytes, file, kept) && !kept {
                break;
            }
        }
    }

    /// Reads block `index` (`bytes` at `at` in `file`) into the landing: into a place of its
    /// own past the ring if `kept` (of the cached set), else into the ring. False when there is
    /// no room for it.
    fn land(&mut self, index: u32, at: u64, bytes: u64, file: Arc<DiskFile>, kept: bool) -> bool {
        let (Some(landing), Some(reader)) = (self.landing.as_mut(), &self.reader) else {
            return false;
        };
        let skip = at % disk_reader::ALIGN;
        let base = landing.base;
        let placed = if kept {
            landing.place_kept(index, skip, bytes)
        } else {
            landing.place(index, skip, bytes)
        };
        let Some(e) = placed else {
            return false;
        };
        reader.send(disk_reader::Read {
            token: e.token,
            file,
            offset: at - skip,
            need: skip + bytes,
            dst: base + e.start,
        });
        true
    }

    /// [`RamTier::land`]s block `index` of the cached set, if it is of the set and its file is
    /// known.
    fn land_kept(&mut self, index: u32) {
        if !self.is_cached(index) {
            return;
        }
        if let Some((at, bytes, file)) = self.file_offset(index).map(|(a, b, f)| (a, b, f.clone()))
        {
            self.land(index, at, bytes, file, true);
        }
    }

    /// How far ahead the disk reads ([`RamTier::look_ahead`]): uncached blocks read ahead and
    /// not yet copied, in bytes, beyond the ring's (`ring`): two of the largest uncached
    /// blocks, one being copied and the next being read, so the disk never waits for the copies
    /// to reach an uncached block (it is the bottleneck whenever it is slower than the link).
    pub fn horizon_bytes(&self, ring: u64) -> u64 {
        ring + 2 * self.largest_uncached
    }

    /// Reads the coming uncached file-backed blocks ahead, in the schedule's order, while the
    /// read-aheads not yet copied stay under [`RamTier::horizon_bytes`]. Called with the
    /// commands of each planner call; O(read-aheads in flight) when the horizon is full, else
    /// O(steps walked), at most [`LOOK_AHEAD_STEPS`].
    pub fn look_ahead(&mut self, planner: &Planner) {
        if !self.on || self.largest_uncached == 0 {
            return;
        }
        if self.direct() {
            self.size_landing();
            self.land_ahead(planner);
            return;
        }
        let horizon = self.horizon_bytes(planner.streaming_bytes());
        let uncached_bytes = |i: u32| match self.file.get(i as usize) {
            Some(Some((_, bytes))) if !self.cached.get(i as usize).copied().unwrap_or(false) => {
                *bytes
            }
            _ => 0,
        };
        let mut ahead: u64 = self.pending.keys().map(|&i| uncached_bytes(i)).sum();
        if ahead + self.largest_uncached > horizon {
            return;
        }
        let mut new = Vec::new();
        planner.upcoming_host_blocks(LOOK_AHEAD_STEPS, |i, _| {
            let bytes = uncached_bytes(i);
            if bytes == 0 || self.pending.contains_key(&i) || new.iter().any(|&(j, _, _)| j == i) {
                return true;
            }
            if ahead + bytes > horizon {
                return false;
            }
            ahead += bytes;
            if let Some(Some((addr, _))) = self.file.get(i as usize) {
                new.push((i, *addr, bytes));
            }
            true
        });
        for (i, addr, len) in new {
            let flag = Arc::new(AtomicBool::new(true));
            self.pending.insert(i, flag.clone());
            self.push(Item {
                addr,
                len,
                advice: Some(Advice::WillNeed),
                pending: Some(flag),
            });
        }
    }

    /// A load of `block` (host bytes `addr..addr + len`) was queued: read a file-backed block
    /// ahead, unless [`RamTier::look_ahead`] did. Returns where to copy it from instead when
    /// it was read into the landing buffer: the address, the buffer's (the copy's mapping), whether
    /// it is pageable (staged), and whether the load must wait for the read ([`RamTier::read_done`]).
    pub fn queued(
        &mut self,
        block: BlockId,
        addr: u64,
        len: u64,
    ) -> Option<(u64, u64, bool, bool)> {
        if !self.loading && self.is_file(block) {
            self.loading = true;
            self.size_landing();
        }
        // A block of the cached set not read yet (its first use: the look-ahead reads only as
        // far as the ring holds) is read into its place now, and its load waits for that: from
        // the mapping it would be read from the disk again next pass.
        if self.direct()
            && self
                .landing
                .as_ref()
                .is_some_and(|l| l.get(block.index).is_none())
        {
            self.land_kept(block.index);
        }
        if let Some(l) = self.landing.as_mut() {
            if let Some((at, wait)) = l.start_copy(block.index) {
                let pageable = self.landing_mem.as_ref().is_some_and(|m| m.pageable());
                return Some((at, l.base, pageable, wait));
            }
        }
        if self.is_file(block) && !self.pending.contains_key(&block.index) {
            let flag = Arc::new(AtomicBool::new(true));
            self.pending.insert(block.index, flag.clone());
            self.push(Item {
                addr,
                len,
                advice: self.on.then_some(Advice::WillNeed),
                pending: Some(flag),
            });
        }
        None
    }

    /// A load of `block` failed: its landing space is free.
    pub fn load_failed(&mut self, block: BlockId) {
        if let Some(flag) = self.pending.remove(&block.index) {
            flag.store(false, Relaxed);
        }
        if let Some(l) = self.landing.as_mut() {
            l.copied(block.index);
        }
    }

    /// A load of `block` completed: a file-backed block not in the cached set leaves RAM.
    pub fn loaded(&mut self, block: BlockId, addr: u64, len: u64) {
        // Copied from the landing buffer: its page cache was never used.
        if let Some(l) = self.landing.as_mut() {
            if l.get(block.index)
                .is_some_and(|e| e.stage == landing::Stage::Copying { read: true })
            {
                l.copied(block.index);
                return;
            }
        }
        if let Some(flag) = self.pending.remove(&block.index) {
            flag.store(false, Relaxed);
        }
        // Copied from its mapping: unless it stays cached there (with direct reads the cached
        // set is the landing's, not the page cache's), it leaves RAM.
        let cached = self.is_cached(block.index) && !self.direct();
        if self.on && self.is_file(block) && !cached {
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
    pub fn close(&mut self) -> Vec<std::thread::JoinHandle<()>> {
        let mut threads: Vec<_> = self.advisor.take().map(|a| a.thread).into_iter().collect();
        if let Some(r) = self.reader.take() {
            threads.extend(r.close());
        }
        threads
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

    /// Runs `passes` passes of one block a step on `p`, every copy completing at once.
    fn run_passes(p: &mut Planner, ids: &[BlockId], passes: usize) {
        use crate::planner::{Acquire, Command};
        let complete = |p: &mut Planner| {
            while let Some(c) = p.poll_command() {
                if let Command::Load { block, .. } = c {
                    p.transfer_done(block, true, "", 1e-4);
                }
            }
        };
        let mut now = 0.0;
        for _ in 0..passes {
            for (s, &id) in ids.iter().enumerate() {
                p.hint(s as u64, now);
                now += 1e-3;
                complete(p);
                if p.acquire(id).unwrap() == Acquire::Pending {
                    complete(p);
                    p.poll_waiter(id).unwrap().unwrap();
                }
                p.unhold(id);
                complete(p);
            }
        }
    }

    /// The look-ahead reads the next uncached blocks in the schedule's order, up to its horizon,
    /// each once, and one more as one is copied.
    #[test]
    fn look_ahead_reads_the_next_uncached_blocks_in_schedule_order() {
        use crate::planner::PlannerConfig;
        use crate::BlockSpec;
        const MIB: u64 = 1 << 20;
        let mut p = Planner::new(PlannerConfig::new(4 * MIB)).unwrap();
        let ids: Vec<BlockId> = (0..16u64)
            .map(|s| {
                let id = p.add_block(BlockSpec::new(MIB)).unwrap();
                p.declare(s, id).unwrap();
                id
            })
            .collect();
        run_passes(&mut p, &ids, 2);
        p.hint(0, 1.0);
        // A cap that caches about half of what streams; no advisor, so advice is kept.
        let mut ram = RamTier::new(8 * MIB + p.streaming_bytes() + 2 * MIB, true, 0);
        let base = 1u64 << 40;
        for id in &ids {
            ram.add(id.index, true, base + id.index as u64 * MIB, MIB);
        }
        ram.refresh(&p);
        let order = |items: Vec<Item>| -> Vec<u32> {
            (items.iter())
                .filter(|i| i.advice == Some(Advice::WillNeed))
                .map(|i| ((i.addr - base) / MIB) as u32)
                .collect()
        };
        let _ = ram.take_advice();
        ram.look_ahead(&p);
        let first = order(ram.take_advice());
        let uncached: Vec<u32> = (ids.iter())
            .map(|id| id.index)
            .filter(|&i| !ram.cached[i as usize] && !p.is_kept(ids[i as usize]).unwrap())
            .collect();
        assert!(ram.cached_bytes > 0 && uncached.len() >= 4, "{uncached:?}");
        // From the step after the current one (0), in order, as many as the horizon holds, of
        // those not loading already (their loads read them ahead when queued).
        let horizon = ram.horizon_bytes(p.streaming_bytes()) / MIB;
        let host = |i: &u32| p.residency(ids[*i as usize]).unwrap() == crate::Residency::Host;
        let want: Vec<u32> = (uncached.iter().copied())
            .filter(|&i| i > 0 && host(&i))
            .take(horizon as usize)
            .collect();
        assert_eq!(first, want, "uncached {uncached:?}, horizon {horizon} MiB");
        // Again: nothing new (each is pending until its copy).
        ram.look_ahead(&p);
        assert!(order(ram.take_advice()).is_empty());
        // The first one's copy is done: that frees one block of the horizon, and the walk takes
        // the first host block again, which (this planner was not told of the copy) is still
        // that one.
        let done = ids[first[0] as usize];
        ram.loaded(done, base + done.index as u64 * MIB, MIB);
        let _ = ram.take_advice();
        ram.look_ahead(&p);
        assert_eq!(order(ram.take_advice()), [first[0]]);
    }

    /// A read-ahead of a file not in RAM is watched until it is, and measures the disk.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_advisor_measures_the_disk_on_a_cold_read_ahead() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join(format!("synapswap-disk-{}", std::process::id()));
        let len = 32usize << 20;
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&vec![7u8; len]).unwrap();
        f.sync_all().unwrap();
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: the file is this test's own and is not changed while mapped.
        let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        // SAFETY: advice on a file this test opened; it changes no memory.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let addr = map.as_ptr() as u64;
        let cold = page_cache::residency(addr, len as u64).is_some_and(|(r, _)| r == 0);
        std::fs::remove_file(&path).unwrap();
        if !cold {
            eprintln!("skipped: the kernel kept the test file's pages in RAM (tmpfs?)");
            return;
        }
        let counts = Arc::new(PageCacheCounts::default());
        let advisor = start_advisor(counts.clone()).unwrap();
        let flag = Arc::new(AtomicBool::new(true));
        advisor
            .tx
            .send(Item {
                addr,
                len: len as u64,
                advice: Some(Advice::WillNeed),
                pending: Some(flag),
            })
            .unwrap();
        drop(advisor.tx);
        advisor.thread.join().unwrap();
        let rate = counts.disk.lock().unwrap().bytes_per_s();
        assert!(rate > 0.0 && rate.is_finite(), "disk rate {rate}");
        assert_eq!(
            counts.checked.load(Relaxed),
            (len / crate::os::page_size()) as u64
        );
        assert_eq!(counts.resident.load(Relaxed), 0);
        let (resident, pages) = page_cache::residency(addr, len as u64).unwrap();
        assert_eq!(resident, pages, "the read-ahead brought the whole file in");
    }

    #[test]
    fn the_cached_set_is_streamed_blocks_under_the_cap() {
        let blocks = [
            Some((10, true)),
            Some((50, false)), // kept in VRAM: its bytes are on the device
            None,              // not file-backed
            Some((30, true)),  // ahead of its share (40 of 75 bytes by its end, 60% cached)
            Some((30, true)),
            Some((5, true)),
        ];
        let (cached, bytes) = plan(&blocks, 45);
        assert_eq!(cached, [true, false, false, false, true, true]);
        assert_eq!(bytes, 45);
        // The same inputs give the same set (stable from pass to pass).
        assert_eq!(plan(&blocks, 45).0, cached);
        // Everything fits: everything streamed is cached.
        assert_eq!(plan(&blocks, 1000).1, 75);
    }

    #[test]
    fn a_keep_plan_that_moves_one_block_moves_only_that_one_in_the_cached_set() {
        let mut blocks = vec![Some((256u64, true)); 12];
        let (was, _) = plan(&blocks, 8 * 256);
        // The VRAM keep plan now keeps block 0 (a cached one): it leaves the set, and the room
        // it leaves goes to one block that was not cached; the other seven stay.
        blocks[0] = Some((256, false));
        let (now, bytes) = plan_keeping(&blocks, 8 * 256, &was);
        assert_eq!(bytes, 8 * 256);
        let moved = was.iter().zip(&now).filter(|(a, b)| a != b).count();
        assert_eq!(moved, 2, "{was:?} -> {now:?}");
        assert!(!now[0]);
        // Chosen afresh, the set would shift by more.
        let fresh = plan(&blocks, 8 * 256).0;
        assert!(was.iter().zip(&fresh).filter(|(a, b)| a != b).count() > moved);
        // Less room: the later ones of the old set go first.
        let (small, bytes) = plan_keeping(&blocks, 4 * 256, &now);
        assert_eq!(bytes, 4 * 256);
        let kept: Vec<usize> = (0..12).filter(|&i| small[i]).collect();
        let first: Vec<usize> = (0..12).filter(|&i| now[i]).take(4).collect();
        assert_eq!(kept, first);
    }

    #[test]
    fn the_cached_set_is_spread_over_the_pass() {
        let blocks = vec![Some((256u64, true)); 12];
        // Two thirds cached: never more than two cached blocks in a row, one uncached between.
        let (cached, bytes) = plan(&blocks, 8 * 256);
        assert_eq!(bytes, 8 * 256);
        let pattern: String = cached.iter().map(|&c| if c { 'C' } else { '.' }).collect();
        assert_eq!(pattern, "C.CC.CC.CC.C");
        // A third: one in three.
        let pattern: String = (plan(&blocks, 4 * 256).0.iter())
            .map(|&c| if c { 'C' } else { '.' })
            .collect();
        assert_eq!(pattern, ".C..C..C..C.");
    }
}
