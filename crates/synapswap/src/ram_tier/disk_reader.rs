//! Direct reads of a model file's uncached blocks into host memory of the tier's own (the
//! landing buffer, `landing.rs`): the disk's side of the RAM tier when the engine knows the file
//! behind a mapping ([`crate::Engine::register_file_mapping`]).
//!
//! # Why not the page cache
//! Reading a block ahead with `MADV_WILLNEED` and dropping it after its copy with
//! `MADV_PAGEOUT` costs the kernel 0.3-0.5 s a GiB each (`scripts/measure-page-cache-costs.py`,
//! BENCHMARKS.md) to fill and empty the page cache with bytes that are used once, and the copy
//! then reads them through the mapping's page faults. A read with `O_DIRECT` goes from the disk
//! into the landing buffer by DMA, past the page cache: nothing to fill, nothing to drop, and
//! the cached set is never pushed out by it. On CUDA the landing buffer is pinned
//! ([`crate::backend::Backend::alloc_host`]), so the block's copy to the device goes straight
//! from it, without the staging ring.
//!
//! # How
//! [`READERS`] threads take the pieces of the reads sent to them ([`PIECE`] bytes each, in the
//! order sent), so that several requests are on the disk at once (one at a time left the build
//! machine's virtual disk well under its rate: BENCHMARKS.md, "Models larger than RAM", `dd`
//! with `iflag=direct`; the count and size are assumed good for others). Each piece is timed, from its start
//! or the previous piece's end, whichever is later, as the link's chunks are: that is the disk's
//! rate ([`super::PageCacheCounts::disk`]). The thread that finishes a read's last piece reports
//! it (`on_done`). A file that refuses `O_DIRECT` (tmpfs) is read through the page cache, its
//! pages dropped after each piece (`POSIX_FADV_DONTNEED`).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::PageCacheCounts;

/// Reader threads (reads on the disk at once).
pub(crate) const READERS: usize = 4;

/// Bytes of one read request.
pub(crate) const PIECE: u64 = 4 << 20;

/// Alignment of direct reads: offset, length and buffer (the logical block size is at most
/// this on the disks Linux supports for `O_DIRECT` with 4 KiB pages; assumed).
pub(crate) const ALIGN: u64 = 4096;

/// A model file opened for reading its blocks.
#[derive(Debug)]
pub(crate) struct DiskFile {
    file: File,
    /// Opened with `O_DIRECT`.
    direct: bool,
}

impl DiskFile {
    /// Opens `path` for direct reads, or buffered ones where the file system refuses them.
    pub fn open(path: &Path) -> io::Result<DiskFile> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt;
            if let Ok(file) = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
            {
                return Ok(DiskFile { file, direct: true });
            }
        }
        Ok(DiskFile {
            file: File::open(path)?,
            direct: false,
        })
    }

    /// The file's length, bytes.
    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Reads `buf.len()` bytes at `offset` (buffered: for checks, not for blocks).
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if !self.direct {
            return match read_fully(&self.file, buf, offset, false)? {
                n if n == buf.len() => Ok(()),
                _ => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            };
        }
        // A direct read needs aligned offsets, lengths and memory: read the aligned pages around
        // the range into an aligned buffer of our own.
        let start = offset / ALIGN * ALIGN;
        let end = (offset + buf.len() as u64).div_ceil(ALIGN) * ALIGN;
        let mut tmp = Aligned::new((end - start) as usize)?;
        let got = read_fully(&self.file, tmp.as_mut_slice(), start, true)?;
        let skip = (offset - start) as usize;
        if got < skip + buf.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.copy_from_slice(&tmp.as_mut_slice()[skip..skip + buf.len()]);
        Ok(())
    }
}

/// A page-aligned heap buffer (for [`DiskFile::read_exact_at`]'s direct reads).
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> io::Result<Aligned> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), ALIGN as usize)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(Aligned { ptr, layout })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is our live allocation of `layout.size()` bytes, initialised (zeroed).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// One positioned read (`pread`; on Windows `ReadFile` at an offset, which also moves the
/// file's cursor, unused here).
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        std::os::windows::fs::FileExt::seek_read(file, buf, offset)
    }
}

/// Reads into `buf` at `offset` until it is full or the file ends; the bytes read. `direct`: a
/// short read that is not whole [`ALIGN`]ed pages is the file's end (another read at that
/// unaligned offset may fail rather than return 0).
fn read_fully(file: &File, buf: &mut [u8], offset: u64, direct: bool) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match read_at(file, &mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if direct && n % ALIGN as usize != 0 {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// One read: the file's bytes `offset..offset + need` into `dst..` (host memory the tier owns,
/// which nothing else touches until `on_done` reported the read), read as whole [`ALIGN`]ed
/// pages (`offset` and `dst` aligned; the last page may run past the file's end).
#[derive(Debug)]
pub(crate) struct Read {
    /// Reported back with the result.
    pub token: u64,
    pub file: Arc<DiskFile>,
    pub offset: u64,
    pub need: u64,
    pub dst: u64,
}

/// A piece of a read on the work list.
struct Piece {
    read: Arc<ReadState>,
    /// Offset in the read.
    at: u64,
    len: u64,
}

struct ReadState {
    read: Read,
    pieces_left: AtomicUsize,
    failed: Mutex<Option<String>>,
    /// When its first piece went on the disk (for the trace's span of the read).
    started: Mutex<Option<Instant>>,
}

/// The reader threads' work list.
#[derive(Default)]
struct Work {
    pieces: VecDeque<Piece>,
    closed: bool,
}

/// Reports a read: its token, its result, and when its first piece started and its last ended.
pub(crate) type OnDone = dyn Fn(u64, Result<(), String>, (Instant, Instant)) + Send + Sync;

/// The reader threads (see the module docs).
pub(crate) struct DiskReader {
    work: Arc<(Mutex<Work>, Condvar)>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for DiskReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskReader")
            .field("threads", &self.threads.len())
            .finish()
    }
}

/// When the disk last finished a piece, for the next piece's busy time.
#[derive(Default)]
struct Clock {
    last_done: Option<Instant>,
}

impl DiskReader {
    /// Starts the reader threads; each read's result goes to `on_done`, the disk's rate and
    /// bytes to `counts`.
    pub fn start(counts: Arc<PageCacheCounts>, on_done: Arc<OnDone>) -> io::Result<DiskReader> {
        let work: Arc<(Mutex<Work>, Condvar)> = Arc::default();
        let clock = Arc::new(Mutex::new(Clock::default()));
        let mut threads = Vec::new();
        for i in 0..READERS {
            let (work, clock, counts, on_done) =
                (work.clone(), clock.clone(), counts.clone(), on_done.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("synapswap-disk-{i}"))
                .spawn(move || reader(&work, &clock, &counts, on_done.as_ref()));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) if threads.is_empty() => return Err(e),
                // Fewer readers: fewer reads at once, still correct.
                Err(_) => break,
            }
        }
        Ok(DiskReader { work, threads })
    }

    /// Queues `read`, cut into pieces read in order.
    pub fn send(&self, read: Read) {
        let len = (read.need.div_ceil(ALIGN) * ALIGN).max(ALIGN);
        let n = len.div_ceil(PIECE);
        let state = Arc::new(ReadState {
            read,
            pieces_left: AtomicUsize::new(n as usize),
            failed: Mutex::new(None),
            started: Mutex::new(None),
        });
        let (lock, cv) = &*self.work;
        let mut w = lock.lock().unwrap_or_else(|p| p.into_inner());
        for k in 0..n {
            let at = k * PIECE;
            w.pieces.push_back(Piece {
                read: state.clone(),
                at,
                len: PIECE.min(len - at),
            });
        }
        drop(w);
        cv.notify_all();
    }

    /// Stops the threads once the reads already sent are done; the handles to join (outside the
    /// engine's lock).
    pub fn close(self) -> Vec<std::thread::JoinHandle<()>> {
        let (lock, cv) = &*self.work;
        lock.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        cv.notify_all();
        self.threads
    }
}

fn reader(
    work: &(Mutex<Work>, Condvar),
    clock: &Mutex<Clock>,
    counts: &PageCacheCounts,
    on_done: &OnDone,
) {
    let (lock, cv) = work;
    loop {
        let piece = {
            let mut w = lock.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(p) = w.pieces.pop_front() {
                    break p;
                }
                if w.closed {
                    return;
                }
                w = cv.wait(w).unwrap_or_else(|p| p.into_inner());
            }
        };
        let r = &piece.read.read;
        let start = Instant::now();
        piece
            .read
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(start);
        let result = read_piece(r, piece.at, piece.len);
        let end = Instant::now();
        match &result {
            Ok(bytes) => {
                let mut c = clock.lock().unwrap_or_else(|p| p.into_inner());
                let from = c.last_done.map_or(start, |d| d.max(start));
                c.last_done = Some(end);
                drop(c);
                if let Ok(mut disk) = counts.disk.lock() {
                    disk.add(*bytes, (end - from).as_secs_f64());
                }
                counts.direct.fetch_add(*bytes, Ordering::Relaxed);
                let busy = (end - from).as_nanos().min(u64::MAX as u128) as u64;
                counts.direct_busy_ns.fetch_add(busy, Ordering::Relaxed);
            }
            Err(e) => {
                let mut f = piece.read.failed.lock().unwrap_or_else(|p| p.into_inner());
                f.get_or_insert_with(|| e.clone());
            }
        }
        if piece.read.pieces_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let failed = piece
                .read
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            let started = (piece.read.started.lock())
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or(start);
            on_done(r.token, failed.map_or(Ok(()), Err), (started, end));
        }
    }
}

/// Reads one piece of `r` (`at..at + len` of it); the bytes read from the file.
fn read_piece(r: &Read, at: u64, len: u64) -> Result<u64, String> {
    // SAFETY: `dst..dst + len` lies in the read's destination, host memory the tier owns and
    // nothing else touches until the read is reported (`Read`'s contract); the pieces of a read
    // are disjoint, so no two threads write the same bytes.
    let buf =
        unsafe { std::slice::from_raw_parts_mut((r.dst + at) as usize as *mut u8, len as usize) };
    let got =
        read_fully(&r.file.file, buf, r.offset + at, r.file.direct).map_err(|e| e.to_string())?;
    let need = r.need.saturating_sub(at).min(len) as usize;
    if got < need {
        return Err(format!(
            "the model file ended {} bytes into a {}-byte read at offset {}",
            at + got as u64,
            r.need,
            r.offset
        ));
    }
    if !r.file.direct {
        // Buffered: the pages just read are used once; they leave the page cache.
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: advice on a file we hold open; it changes no memory of ours.
            unsafe {
                libc::posix_fadvise(
                    r.file.file.as_raw_fd(),
                    (r.offset + at) as libc::off_t,
                    len as libc::off_t,
                    libc::POSIX_FADV_DONTNEED,
                );
            }
        }
    }
    Ok(got as u64)
}
