//! Operating-system specific calls, kept in one place so that a port (Windows via MinGW) is a
//! matter of adding a `cfg` arm here: page size, anonymous mappings, precise sleep, and the host
//! memory this process can still take ([`available_memory`]; Linux only, unknown elsewhere).

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
/// default timer tick is ~15 ms, so the last stretch is yielded away instead of slept (both
/// assumed: typical figures, not measured here).
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
/// 4 KiB pages costs ~0.7 s per GiB on the build machines, 2 MiB pages ~0.15 s (assumed: a trial
/// there, not recorded in BENCHMARKS.md).
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

    /// Touches every page, so that no later access faults one in (and the OS has committed
    /// them now, not at the first copy).
    pub fn commit(&mut self) {
        let step = page_size().max(1);
        let mut off = 0;
        while off < self.len {
            // SAFETY: `off < len`: inside the mapping this value owns, which nothing else
            // accesses yet (it was just mapped); the byte written is the zero it already holds.
            unsafe { self.ptr.as_ptr().add(off).write_volatile(0) };
            off += step;
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

/// Host memory this process can still allocate, and the limit that sets the figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvailableMemory {
    /// Bytes.
    pub bytes: u64,
    /// Which limit: `MemAvailable`, `cgroup memory.max`, `cgroup memory.limit_in_bytes` or
    /// `RLIMIT_AS`.
    pub limit: &'static str,
}

/// How much more anonymous or page-locked memory this process can take before the kernel
/// refuses it or kills the process: the smallest of
/// - `MemAvailable` (`/proc/meminfo`): free memory plus what can be reclaimed without swapping;
/// - the headroom of the memory cgroup the process is in and of each of its ancestors: the limit
///   (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`) minus the usage that page-cache
///   reclaim cannot give back (`memory.current` less `memory.stat`'s `file` net of `shmem`; v1
///   `memory.usage_in_bytes` less `total_cache` net of `total_shmem`);
/// - `RLIMIT_AS` less the address space already mapped (`VmSize` of `/proc/self/status`).
///
/// `None` means unknown: on platforms other than Linux, and where none of these can be read.
/// Callers then go ahead as before (and an allocation that fails is still an error).
pub fn available_memory() -> Option<AvailableMemory> {
    #[cfg(target_os = "linux")]
    {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        available_from(&read, rlimit_as())
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// `needed` bytes fit in `available` ([`available_memory`]'s figure; unknown: they do), or the
/// up-front error with both figures and the limit that sets the second.
pub(crate) fn check_needed(needed: u64, available: Option<AvailableMemory>) -> crate::Result<()> {
    match available {
        Some(a) if needed > a.bytes => Err(crate::Error::HostMemory {
            needed,
            available: a.bytes,
            limit: a.limit,
        }),
        _ => Ok(()),
    }
}

/// The soft `RLIMIT_AS`, `None` when unlimited.
#[cfg(target_os = "linux")]
fn rlimit_as() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into the struct we own; it has no other effect.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut r) } == 0;
    #[allow(clippy::unnecessary_cast)] // `rlim_t` is 32 bits wide on some 32-bit targets
    let cur = r.rlim_cur as u64;
    (ok && r.rlim_cur != libc::RLIM_INFINITY).then_some(cur)
}

/// [`available_memory`] over a file reader (`/proc` and `/sys` paths to contents), so that the
/// parsing and the cgroup walk are tested on strings.
fn available_from(
    read: &dyn Fn(&str) -> Option<String>,
    rlimit_as: Option<u64>,
) -> Option<AvailableMemory> {
    let mut best: Option<AvailableMemory> = None;
    let mut offer = |bytes: u64, limit: &'static str| {
        if best.is_none_or(|b| bytes < b.bytes) {
            best = Some(AvailableMemory { bytes, limit });
        }
    };
    if let Some(b) = read("/proc/meminfo").and_then(|t| kib_field(&t, "MemAvailable:")) {
        offer(b, "MemAvailable");
    }
    if let (Some(cgroups), Some(mounts)) = (read("/proc/self/cgroup"), read("/proc/self/mountinfo"))
    {
        for (version, path) in memory_cgroups(&cgroups) {
            let Some((root, point)) = cgroup_mount(&mounts, version) else {
                continue;
            };
            if let Some((bytes, limit)) = cgroup_headroom(read, version, &root, &point, &path) {
                offer(bytes, limit);
            }
        }
    }
    if let Some(limit) = rlimit_as {
        let mapped = read("/proc/self/status")
            .and_then(|t| kib_field(&t, "VmSize:"))
            .unwrap_or(0);
        offer(limit.saturating_sub(mapped), "RLIMIT_AS");
    }
    best
}

/// A `Name:   123 kB` line of `/proc/meminfo` or `/proc/self/status`, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix(name))?;
    let mut words = line.split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// The memory cgroups of `/proc/self/cgroup`: `(2, path)` for the unified hierarchy (`0::/p`),
/// `(1, path)` for a v1 hierarchy whose controllers include `memory` (`4:memory:/p`).
fn memory_cgroups(text: &str) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(ctrl), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if id == "0" && ctrl.is_empty() {
            out.push((2, path.to_string()));
        } else if ctrl.split(',').any(|c| c == "memory") {
            out.push((1, path.to_string()));
        }
    }
    out
}

/// Where the hierarchy is mounted (`/proc/self/mountinfo`): `(root within the hierarchy, mount
/// point)` of the first `cgroup2` mount (version 2) or `cgroup` mount with the `memory`
/// option (version 1).
fn cgroup_mount(mountinfo: &str, version: u8) -> Option<(String, String)> {
    mountinfo.lines().find_map(|line| {
        let (head, tail) = line.split_once(" - ")?;
        let head: Vec<&str> = head.split_whitespace().collect();
        let tail: Vec<&str> = tail.split_whitespace().collect();
        let (root, point) = (head.get(3)?, head.get(4)?);
        let fstype = tail.first()?;
        let wanted = match version {
            2 => *fstype == "cgroup2",
            _ => *fstype == "cgroup" && tail.get(2)?.split(',').any(|o| o == "memory"),
        };
        wanted.then(|| (root.to_string(), point.to_string()))
    })
}

/// A cgroup limit file: `None` for no limit (`max` in v2; v1 writes a huge number).
fn cgroup_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    let n: u64 = t.parse().ok()?;
    (n < 1 << 60).then_some(n)
}

/// A `key value` line of `memory.stat`.
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// The least headroom over the cgroup at `path` and its ancestors up to the mount's root.
fn cgroup_headroom(
    read: &dyn Fn(&str) -> Option<String>,
    version: u8,
    root: &str,
    point: &str,
    path: &str,
) -> Option<(u64, &'static str)> {
    let (limit_file, usage_file, file_key, shmem_key, name) = if version == 2 {
        (
            "memory.max",
            "memory.current",
            "file",
            "shmem",
            "cgroup memory.max",
        )
    } else {
        (
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
            "total_cache",
            "total_shmem",
            "cgroup memory.limit_in_bytes",
        )
    };
    // The process's cgroup relative to the mounted part of the hierarchy.
    let rel = match root {
        "/" => path,
        r => path
            .strip_prefix(r)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))?,
    };
    let mut parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let mut least: Option<u64> = None;
    loop {
        let dir = if parts.is_empty() {
            point.to_string()
        } else {
            format!("{}/{}", point.trim_end_matches('/'), parts.join("/"))
        };
        if let Some(limit) = read(&format!("{dir}/{limit_file}")).and_then(|t| cgroup_limit(&t)) {
            let usage = read(&format!("{dir}/{usage_file}"))
                .and_then(|t| t.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let stat = read(&format!("{dir}/memory.stat")).unwrap_or_default();
            let cache = stat_field(&stat, file_key).unwrap_or(0);
            let reclaimable = cache.saturating_sub(stat_field(&stat, shmem_key).unwrap_or(0));
            let headroom = limit.saturating_sub(usage.saturating_sub(reclaimable));
            least = Some(least.map_or(headroom, |l| l.min(headroom)));
        }
        if parts.pop().is_none() {
            break;
        }
    }
    least.map(|b| (b, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const GIB: u64 = 1 << 30;

    fn fs(files: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = files
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |p| m.get(p).cloned()
    }

    const MEMINFO: &str =
        "MemTotal:       24683584 kB\nMemFree:         1000000 kB\nMemAvailable:   20971520 kB\n";
    const V2_MOUNTS: &str = "25 30 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
    const V1_MOUNTS: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
        35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

    #[test]
    fn parses_proc_fields() {
        assert_eq!(kib_field(MEMINFO, "MemAvailable:"), Some(20 * GIB));
        assert_eq!(kib_field(MEMINFO, "SwapFree:"), None);
        assert_eq!(
            kib_field("VmSize:\t  123 kB\n", "VmSize:"),
            Some(123 * 1024)
        );
        assert_eq!(kib_field("MemAvailable: lots kB\n", "MemAvailable:"), None);
        assert_eq!(cgroup_limit("max\n"), None);
        assert_eq!(cgroup_limit("8589934592\n"), Some(8 * GIB));
        assert_eq!(
            cgroup_limit("9223372036854771712\n"),
            None,
            "v1's 'no limit'"
        );
        assert_eq!(cgroup_limit("garbage"), None);
        let stat = "anon 100\nfile 5000\nshmem 1000\nfile_mapped 7\n";
        assert_eq!(stat_field(stat, "file"), Some(5000));
        assert_eq!(stat_field(stat, "shmem"), Some(1000));
        assert_eq!(stat_field(stat, "fil"), None);
    }

    #[test]
    fn finds_memory_cgroups_and_their_mounts() {
        let v1 = "9:name=systemd:/\n4:memory:/process_api/abc\n3:cpu,cpuacct:/x\n0::/\n";
        assert_eq!(
            memory_cgroups(v1),
            vec![(1, "/process_api/abc".to_string()), (2, "/".to_string())]
        );
        assert_eq!(
            memory_cgroups("5:cpuset,memory:/a\n"),
            vec![(1, "/a".to_string())]
        );
        assert_eq!(
            cgroup_mount(V1_MOUNTS, 1),
            Some(("/".into(), "/sys/fs/cgroup/memory".into()))
        );
        assert_eq!(
            cgroup_mount(V1_MOUNTS, 2),
            Some(("/".into(), "/sys/fs/cgroup/unified".into()))
        );
        assert_eq!(
            cgroup_mount(V2_MOUNTS, 2),
            Some(("/".into(), "/sys/fs/cgroup".into()))
        );
        assert_eq!(cgroup_mount(V2_MOUNTS, 1), None);
    }

    #[test]
    fn a_cgroup_v2_limit_caps_what_is_available() {
        // 4 GiB limit on the parent, none on the leaf; 3 GiB used of which 2 GiB is page cache
        // (1.5 GiB of it reclaimable): 4 - (3 - 1.5) = 2.5 GiB left.
        let read = fs(&[
            ("/proc/meminfo", MEMINFO),
            ("/proc/self/cgroup", "0::/user.slice/job.scope\n"),
            ("/proc/self/mountinfo", V2_MOUNTS),
            ("/sys/fs/cgroup/user.slice/job.scope/memory.max", "max\n"),
            (
                "/sys/fs/cgroup/user.slice/job.scope/memory.current",
                "100\n",
            ),
            ("/sys/fs/cgroup/user.slice/memory.max", "4294967296\n"),
            ("/sys/fs/cgroup/user.slice/memory.current", "3221225472\n"),
            (
                "/sys/fs/cgroup/user.slice/memory.stat",
                "anon 1073741824\nfile 2147483648\nshmem 536870912\n",
            ),
        ]);
        let a = available_from(&read, None).unwrap();
        assert_eq!(a.bytes, 5 * GIB / 2);
        assert_eq!(a.limit, "cgroup memory.max");
        // Without a limit anywhere, MemAvailable decides.
        let read = fs(&[
            ("/proc/meminfo", MEMINFO),
            ("/proc/self/cgroup", "0::/a\n"),
            ("/proc/self/mountinfo", V2_MOUNTS),
            ("/sys/fs/cgroup/a/memory.max", "max\n"),
        ]);
        let a = available_from(&read, None).unwrap();
        assert_eq!((a.bytes, a.limit), (20 * GIB, "MemAvailable"));
    }

    #[test]
    fn a_cgroup_v1_limit_and_rlimit_as_count_too() {
        let read = fs(&[
            ("/proc/meminfo", MEMINFO),
            ("/proc/self/cgroup", "4:memory:/docker/c1\n0::/\n"),
            ("/proc/self/mountinfo", V1_MOUNTS),
            (
                "/sys/fs/cgroup/memory/docker/c1/memory.limit_in_bytes",
                "2147483648\n",
            ),
            (
                "/sys/fs/cgroup/memory/docker/c1/memory.usage_in_bytes",
                "1073741824\n",
            ),
            (
                "/sys/fs/cgroup/memory/docker/c1/memory.stat",
                "cache 5\ntotal_cache 536870912\ntotal_shmem 0\n",
            ),
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
            (
                "/proc/self/status",
                "Name:\tsynapswap\nVmSize:\t 1048576 kB\n",
            ),
        ]);
        // 2 GiB - (1 GiB - 0.5 GiB of cache) = 1.5 GiB.
        let a = available_from(&read, None).unwrap();
        assert_eq!(
            (a.bytes, a.limit),
            (3 * GIB / 2, "cgroup memory.limit_in_bytes")
        );
        // RLIMIT_AS of 2 GiB with 1 GiB mapped already: 1 GiB.
        let a = available_from(&read, Some(2 * GIB)).unwrap();
        assert_eq!((a.bytes, a.limit), (GIB, "RLIMIT_AS"));
        // A mount of part of the hierarchy (no cgroup namespace): the mount's root is cut off.
        let mounts = "35 31 0:32 /docker/c1 /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let read = fs(&[
            ("/proc/self/cgroup", "4:memory:/docker/c1\n"),
            ("/proc/self/mountinfo", mounts),
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "1073741824\n",
            ),
        ]);
        let a = available_from(&read, None).unwrap();
        assert_eq!((a.bytes, a.limit), (GIB, "cgroup memory.limit_in_bytes"));
    }

    #[test]
    fn nothing_readable_is_unknown() {
        assert_eq!(available_from(&|_| None, None), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_machine_reports_something() {
        let a = available_memory().expect("Linux has /proc/meminfo");
        assert!(a.bytes > 0, "{a:?}");
    }
}
