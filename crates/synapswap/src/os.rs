//! Operating-system specific calls, kept in one place so that a port (Windows via MinGW) is a
//! matter of adding a `cfg` arm here.

use std::time::Instant;

/// The virtual-memory page size, used to align host buffers and the simulated device arena.
pub fn page_size() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions; it returns -1 on error, handled below.
        let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if v > 0 {
            return v as usize;
        }
        4096
    }
    #[cfg(not(unix))]
    {
        4096
    }
}

/// Sleeps until `deadline`. On Unix `nanosleep` is precise to tens of microseconds; on Windows the
/// default timer tick is ~15 ms, so the last stretch is yielded away instead of slept.
pub fn sleep_until(deadline: Instant) {
    #[cfg(not(windows))]
    {
        let now = Instant::now();
        if deadline > now {
            std::thread::sleep(deadline - now);
        }
    }
    #[cfg(windows)]
    {
        const COARSE: std::time::Duration = std::time::Duration::from_millis(16);
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let left = deadline - now;
            if left > COARSE {
                std::thread::sleep(left - COARSE);
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Zero-filled, page-aligned memory straight from the OS, for host copies and the simulated
/// arena. On Linux it is an anonymous mapping advised to use transparent huge pages: faulting in
/// 4 KiB pages costs ~0.7 s per GiB on the build machines, 2 MiB pages ~0.15 s.
#[derive(Debug)]
pub struct Pages {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: `Pages` owns its mapping exclusively; it hands out only its address.
unsafe impl Send for Pages {}
// SAFETY: as above; shared references expose only the address and length.
unsafe impl Sync for Pages {}

impl Pages {
    /// Maps `len` (> 0) zeroed bytes; `None` if the OS refuses.
    pub fn new(len: usize) -> Option<Pages> {
        if len == 0 {
            return None;
        }
        #[cfg(unix)]
        {
            // SAFETY: an anonymous private mapping with no address hint has no preconditions;
            // failure is reported as MAP_FAILED and handled.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return None;
            }
            #[cfg(target_os = "linux")]
            // SAFETY: advising on a mapping we own; the advice is a hint and its failure is
            // harmless.
            unsafe {
                libc::madvise(p, len, libc::MADV_HUGEPAGE);
            }
            std::ptr::NonNull::new(p.cast::<u8>()).map(|ptr| Pages { ptr, len })
        }
        #[cfg(not(unix))]
        {
            let layout = std::alloc::Layout::from_size_align(len, page_size()).ok()?;
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { std::alloc::alloc_zeroed(layout) };
            std::ptr::NonNull::new(p).map(|ptr| Pages { ptr, len })
        }
    }

    /// Start address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: empty mappings are refused.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        #[cfg(unix)]
        // SAFETY: unmapping exactly the mapping created in `new`, once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
        #[cfg(not(unix))]
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe {
            let layout = std::alloc::Layout::from_size_align_unchecked(self.len, page_size());
            std::alloc::dealloc(self.ptr.as_ptr(), layout);
        }
    }
}
