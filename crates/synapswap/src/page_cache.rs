//! The kernel's page cache under memory-mapped model files: advice on ranges of a mapping
//! (read ahead, drop), how much of a range is in RAM, and the bytes this process read from
//! storage. The RAM tier (`ram_tier.rs`) decides what to advise; this only asks the kernel.
//!
//! On Linux: `madvise(MADV_WILLNEED)` starts reading a range in without waiting for it;
//! `madvise(MADV_PAGEOUT)` (Linux 5.4+) reclaims a range's pages, which for a clean, read-only
//! file mapping drops them from the page cache when no other process maps them (nothing happens
//! where `PAGEOUT` is refused); `mincore` says which
//! pages are resident; `/proc/self/io`'s `read_bytes` counts the bytes this process caused to be
//! read from storage. On Windows `WillNeed` is `PrefetchVirtualMemory` (Windows 8 and later; Wine
//! accepts it), and the rest is unknown or nothing: Windows has no user-mode call that drops a
//! file's pages from its standby list, nor one that reports standby residency. Elsewhere every
//! call does nothing and the counters are unknown.

/// Advice on a range of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    /// Read it in now, asynchronously (its copy is due soon).
    WillNeed,
    /// Drop its pages from RAM (it will not be used again soon).
    PageOut,
}

/// The whole pages inside `addr..addr + len` (a range may share its first and last pages with its
/// neighbours, which advice must not touch): `None` when there are none.
pub(crate) fn inner_pages(addr: u64, len: u64) -> Option<(u64, u64)> {
    let page = crate::os::page_size() as u64;
    let start = addr.checked_add(page - 1)? / page * page;
    let end = addr.checked_add(len)? / page * page;
    (end > start).then_some((start, end - start))
}

/// How much one `MADV_WILLNEED` asks for. The kernel reads at most the file's device read-ahead
/// window per call (`force_page_cache_ra`: the larger of `read_ahead_kb` and the device's largest
/// request) and silently drops the rest: one call for a 256 MiB tensor read 8 MiB of it here.
/// 128 KiB is the kernel's default window (`VM_READAHEAD_PAGES`), so each call is read whole on
/// any device left at its default or above; a range is advised in calls of this size.
#[cfg(target_os = "linux")]
const WILLNEED_CHUNK: u64 = 128 << 10;

/// Gives the kernel `advice` on the whole pages inside `addr..addr + len`. Best effort: the
/// kernel may refuse (an old kernel, a range that is no longer mapped) and nothing breaks.
/// Neither advice changes what memory holds, on any range: `WILLNEED` only starts reads, and
/// `PAGEOUT` only reclaims pages that are then read back (a file's, or swap's for anonymous
/// memory). `MADV_DONTNEED`, which would zero anonymous memory, is never used.
pub fn advise(addr: u64, len: u64, advice: Advice) {
    let Some((start, bytes)) = inner_pages(addr, len) else {
        return;
    };
    #[cfg(target_os = "linux")]
    {
        let (how, step) = match advice {
            Advice::WillNeed => (libc::MADV_WILLNEED, WILLNEED_CHUNK),
            Advice::PageOut => (libc::MADV_PAGEOUT, bytes),
        };
        let mut at = start;
        while at < start + bytes {
            let n = step.min(start + bytes - at);
            // SAFETY: madvise only reads the page-aligned range's mappings; with these two
            // advices it never changes memory contents (see above), and the kernel checks the
            // range.
            unsafe {
                libc::madvise(at as usize as *mut libc::c_void, n as usize, how);
            }
            at += n;
        }
    }
    #[cfg(windows)]
    if advice == Advice::WillNeed {
        use windows_sys::Win32::System::Memory::{PrefetchVirtualMemory, WIN32_MEMORY_RANGE_ENTRY};
        use windows_sys::Win32::System::Threading::GetCurrentProcess;
        let range = WIN32_MEMORY_RANGE_ENTRY {
            VirtualAddress: start as usize as *mut core::ffi::c_void,
            NumberOfBytes: bytes as usize,
        };
        // SAFETY: a hint on this process's own address space; the call only schedules reads of
        // mapped pages (it ignores what is not mapped) and never changes memory contents.
        unsafe { PrefetchVirtualMemory(GetCurrentProcess(), 1, &range, 0) };
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        let _ = (start, bytes, advice);
    }
}

/// The first page-aligned address of the pages `addr..addr + len` touches, and one `mincore`
/// byte per page (bit 0: in RAM); `None` where unknown (a range not mapped, another platform).
fn mincore(addr: u64, len: u64) -> Option<(u64, Vec<u8>)> {
    #[cfg(target_os = "linux")]
    {
        let page = crate::os::page_size() as u64;
        let start = addr / page * page;
        let end = addr.checked_add(len)?.div_ceil(page) * page;
        let mut vec = vec![0u8; ((end - start) / page) as usize];
        if vec.is_empty() {
            return Some((start, vec));
        }
        // SAFETY: the kernel checks that the page-aligned range is mapped (else ENOMEM) and
        // writes one byte per page into `vec`, which has that many; nothing else is touched.
        let r = unsafe {
            libc::mincore(
                start as usize as *mut libc::c_void,
                (end - start) as usize,
                vec.as_mut_ptr().cast(),
            )
        };
        (r == 0).then_some((start, vec))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (addr, len);
        None
    }
}

/// (resident pages, pages) of the pages `addr..addr + len` touches; `None` where unknown (a range
/// not mapped, another platform).
pub fn residency(addr: u64, len: u64) -> Option<(u64, u64)> {
    let (_, vec) = mincore(addr, len)?;
    let resident = vec.iter().filter(|&&b| b & 1 == 1).count() as u64;
    Some((resident, vec.len() as u64))
}

/// The first page of `addr..addr + len` that is not in RAM: `Some(None)` when every page is,
/// `None` where unknown (as [`residency`]).
pub fn first_missing(addr: u64, len: u64) -> Option<Option<u64>> {
    let (start, vec) = mincore(addr, len)?;
    let page = crate::os::page_size() as u64;
    Some((vec.iter().position(|&b| b & 1 == 0)).map(|i| start + i as u64 * page))
}

/// Bytes this process has caused to be read from storage (`/proc/self/io`, `read_bytes`).
pub fn storage_bytes_read() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("read_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_touches_only_whole_pages_inside_the_range() {
        let p = crate::os::page_size() as u64;
        assert_eq!(inner_pages(0, 3 * p), Some((0, 3 * p)));
        assert_eq!(inner_pages(1, 3 * p), Some((p, 2 * p)));
        assert_eq!(inner_pages(1, p), None);
        assert_eq!(inner_pages(u64::MAX - 1, 10), None);
    }
}
