//! Operating-system specific calls, kept in one place: page size, anonymous mappings, precise
//! sleep, and the host memory this process can still take ([`available_memory`]). Each has a
//! Linux (Unix) arm and a Windows arm (`x86_64-pc-windows-gnu`, tested under Wine by
//! `scripts/windows-check.sh`); any other target gets a portable fallback.

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
    #[cfg(windows)]
    {
        use windows_sys::Win32::System::SystemInformation::{GetSystemInfo, SYSTEM_INFO};
        // SAFETY: SYSTEM_INFO is plain data, for which all-zero bytes are a valid value.
        let mut info: SYSTEM_INFO = unsafe { std::mem::zeroed() };
        // SAFETY: GetSystemInfo fills the struct we own; it cannot fail.
        unsafe { GetSystemInfo(&mut info) };
        if info.dwPageSize > 0 {
            return info.dwPageSize as usize;
        }
        4096
    }
    #[cfg(not(any(unix, windows)))]
    {
        4096
    }
}

/// Sleeps until `deadline`, never returning before it. On Unix `std::thread::sleep` (`nanosleep`)
/// is precise to tens of microseconds (assumed: a typical figure). On Windows std waits on a
/// high-resolution waitable timer (Windows 10 1803 and later; since Rust 1.75), which still
/// wakes late: by 0.15-1.1 ms on average under Wine (BENCHMARKS.md, "Timers under Wine"), and
/// on the order of 0.5 ms on Windows (assumed). The sim link paces each chunk (131 us for 256
/// KiB at 2 GB/s) with this call, so there the last [`WINDOWS_SPIN`] before the deadline is
/// yielded away instead of slept: a 256 KiB chunk of `probe` measured 0.84 GB/s against a
/// 2 GB/s pace under Wine when slept whole (a CI run of `scripts/windows-check.sh`).
pub fn sleep_until(deadline: Instant) {
    #[cfg(not(windows))]
    {
        let now = Instant::now();
        if deadline > now {
            std::thread::sleep(deadline - now);
        }
    }
    #[cfg(windows)]
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let left = deadline - now;
        if left > WINDOWS_SPIN {
            std::thread::sleep(left - WINDOWS_SPIN);
        } else {
            std::thread::yield_now();
        }
    }
}

/// How long before a deadline Windows stops sleeping and yields (assumed: about one timer
/// oversleep, see [`sleep_until`]).
#[cfg(windows)]
const WINDOWS_SPIN: std::time::Duration = std::time::Duration::from_millis(1);

/// Zero-filled, page-aligned memory straight from the OS, for host copies and the simulated
/// arena. On Linux it is an anonymous mapping advised to use transparent huge pages: faulting in
/// 4 KiB pages costs ~0.7 s per GiB on the build machines, 2 MiB pages ~0.15 s (assumed: a trial
/// there, not recorded in BENCHMARKS.md). On Windows it is `VirtualAlloc(MEM_RESERVE |
/// MEM_COMMIT)`: committed against the commit limit at once (so a refusal comes here, not at a
/// later touch), physical pages still faulted in at first touch. Large pages need the "Lock
/// pages in memory" privilege, which a user process rarely has, so they are not asked for.
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
        #[cfg(windows)]
        {
            use windows_sys::Win32::System::Memory::{
                VirtualAlloc, MEM_COMMIT, MEM_RESERVE, PAGE_READWRITE,
            };
            // SAFETY: a fresh allocation with no address hint has no preconditions; failure
            // returns null, handled. Committed pages read as zero.
            let p = unsafe {
                VirtualAlloc(
                    std::ptr::null(),
                    len,
                    MEM_RESERVE | MEM_COMMIT,
                    PAGE_READWRITE,
                )
            };
            std::ptr::NonNull::new(p.cast::<u8>()).map(|ptr| Pages { ptr, len })
        }
        #[cfg(not(any(unix, windows)))]
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
        #[cfg(windows)]
        // SAFETY: releasing exactly the region `new` allocated (size 0 with MEM_RELEASE means
        // the whole region), once.
        unsafe {
            windows_sys::Win32::System::Memory::VirtualFree(
                self.ptr.as_ptr().cast(),
                0,
                windows_sys::Win32::System::Memory::MEM_RELEASE,
            );
        }
        #[cfg(not(any(unix, windows)))]
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
    /// Which limit: on Linux `MemAvailable`, `cgroup memory.max`, `cgroup memory.limit_in_bytes`
    /// or `RLIMIT_AS`; on Windows `ullAvailPhys`, `ullAvailPageFile` (the commit limit),
    /// `ullAvailVirtual`, `job ProcessMemoryLimit` or `job JobMemoryLimit`.
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
/// On Windows, the smallest of `GlobalMemoryStatusEx`'s available physical memory (free, zeroed
/// and standby pages: the analogue of `MemAvailable`), the commit charge still allowed
/// (`ullAvailPageFile`: past it `VirtualAlloc` fails), the process's free address space, and,
/// where the process runs in a job object with a memory limit (the analogue of a cgroup), that
/// limit less the process's private commit ([`windows_headroom`]). `QueryInformationJobObject`
/// reports the innermost job only: a tighter limit on an enclosing job is not seen.
///
/// `None` means unknown: on other platforms, and where none of these can be read. Callers then go
/// ahead as before (and an allocation that fails is still an error).
pub fn available_memory() -> Option<AvailableMemory> {
    #[cfg(target_os = "linux")]
    {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        available_from(&read, rlimit_as())
    }
    #[cfg(windows)]
    {
        windows_memory::available()
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        None
    }
}

/// The tightest of the limits offered: the fewest bytes, the first offered among equals. Both
/// platforms' [`available_memory`] take it.
#[derive(Default)]
struct Tightest(Option<AvailableMemory>);

impl Tightest {
    fn offer(&mut self, bytes: u64, limit: &'static str) {
        if self.0.is_none_or(|b| bytes < b.bytes) {
            self.0 = Some(AvailableMemory { bytes, limit });
        }
    }
}

/// What Windows reports, for [`windows_headroom`].
#[derive(Debug, Clone, Copy, Default)]
#[cfg_attr(not(windows), allow(dead_code))]
struct WindowsMemory {
    /// `MEMORYSTATUSEX` fields, `None` where `GlobalMemoryStatusEx` failed.
    status: Option<(u64, u64, u64)>,
    /// The job object's per-process memory limit, if set.
    process_limit: Option<u64>,
    /// The job object's whole-job memory limit, if set.
    job_limit: Option<u64>,
    /// The process's private commit (`PrivateUsage`), 0 if unknown.
    private_usage: u64,
}

/// [`available_memory`] on Windows from the figures read there, so that the choice is tested on
/// every platform.
#[cfg_attr(not(windows), allow(dead_code))]
fn windows_headroom(m: WindowsMemory) -> Option<AvailableMemory> {
    let mut best = Tightest::default();
    if let Some((phys, commit, virt)) = m.status {
        best.offer(phys, "ullAvailPhys");
        best.offer(commit, "ullAvailPageFile");
        best.offer(virt, "ullAvailVirtual");
    }
    // The job's limit counts every process in it; this one's own commit is the part known here,
    // so the headroom is an upper bound there (the driver's refusal still comes as an error).
    if let Some(l) = m.process_limit {
        best.offer(l.saturating_sub(m.private_usage), "job ProcessMemoryLimit");
    }
    if let Some(l) = m.job_limit {
        best.offer(l.saturating_sub(m.private_usage), "job JobMemoryLimit");
    }
    best.0
}

#[cfg(windows)]
mod windows_memory {
    use super::{windows_headroom, AvailableMemory, WindowsMemory};
    use windows_sys::Win32::System::JobObjects::{
        JobObjectExtendedLimitInformation, QueryInformationJobObject,
        JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JOB_OBJECT_LIMIT_JOB_MEMORY,
        JOB_OBJECT_LIMIT_PROCESS_MEMORY,
    };
    use windows_sys::Win32::System::ProcessStatus::{
        K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS, PROCESS_MEMORY_COUNTERS_EX,
    };
    use windows_sys::Win32::System::SystemInformation::{GlobalMemoryStatusEx, MEMORYSTATUSEX};
    use windows_sys::Win32::System::Threading::GetCurrentProcess;

    pub(super) fn available() -> Option<AvailableMemory> {
        let mut m = WindowsMemory::default();
        // SAFETY: MEMORYSTATUSEX is plain data; all-zero bytes are a valid value.
        let mut st: MEMORYSTATUSEX = unsafe { std::mem::zeroed() };
        st.dwLength = std::mem::size_of::<MEMORYSTATUSEX>() as u32;
        // SAFETY: a struct we own with its length set, as the call requires.
        if unsafe { GlobalMemoryStatusEx(&mut st) } != 0 {
            m.status = Some((st.ullAvailPhys, st.ullAvailPageFile, st.ullAvailVirtual));
        }
        // SAFETY: as above, plain data.
        let mut job: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: a null job handle asks about the job the calling process is in; the buffer is
        // ours and its size is passed. It fails harmlessly when the process is in no job.
        let in_job = unsafe {
            QueryInformationJobObject(
                std::ptr::null_mut(),
                JobObjectExtendedLimitInformation,
                (&mut job as *mut JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
                std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
                std::ptr::null_mut(),
            )
        } != 0;
        if in_job {
            let flags = job.BasicLimitInformation.LimitFlags;
            if flags & JOB_OBJECT_LIMIT_PROCESS_MEMORY != 0 {
                m.process_limit = Some(job.ProcessMemoryLimit as u64);
            }
            if flags & JOB_OBJECT_LIMIT_JOB_MEMORY != 0 {
                m.job_limit = Some(job.JobMemoryLimit as u64);
            }
        }
        if m.process_limit.is_some() || m.job_limit.is_some() {
            // SAFETY: as above, plain data.
            let mut pmc: PROCESS_MEMORY_COUNTERS_EX = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<PROCESS_MEMORY_COUNTERS_EX>() as u32;
            pmc.cb = size;
            // SAFETY: the pseudo-handle of this process; the EX struct with its size, which the
            // call accepts in place of the basic one.
            let ok = unsafe {
                K32GetProcessMemoryInfo(
                    GetCurrentProcess(),
                    (&mut pmc as *mut PROCESS_MEMORY_COUNTERS_EX).cast::<PROCESS_MEMORY_COUNTERS>(),
                    size,
                )
            };
            if ok != 0 {
                m.private_usage = pmc.PrivateUsage as u64;
            }
        }
        windows_headroom(m)
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
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // parsed on Linux, tested everywhere
fn available_from(
    read: &dyn Fn(&str) -> Option<String>,
    rlimit_as: Option<u64>,
) -> Option<AvailableMemory> {
    let mut best = Tightest::default();
    if let Some(b) = read("/proc/meminfo").and_then(|t| kib_field(&t, "MemAvailable:")) {
        best.offer(b, "MemAvailable");
    }
    if let (Some(cgroups), Some(mounts)) = (read("/proc/self/cgroup"), read("/proc/self/mountinfo"))
    {
        for (version, path) in memory_cgroups(&cgroups) {
            let Some((root, point)) = cgroup_mount(&mounts, version) else {
                continue;
            };
            if let Some((bytes, limit)) = cgroup_headroom(read, version, &root, &point, &path) {
                best.offer(bytes, limit);
            }
        }
    }
    if let Some(limit) = rlimit_as {
        let mapped = read("/proc/self/status")
            .and_then(|t| kib_field(&t, "VmSize:"))
            .unwrap_or(0);
        best.offer(limit.saturating_sub(mapped), "RLIMIT_AS");
    }
    best.0
}

/// A `Name:   123 kB` line of `/proc/meminfo` or `/proc/self/status`, in bytes.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // parsed on Linux, tested everywhere
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
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // parsed on Linux, tested everywhere
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
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // parsed on Linux, tested everywhere
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
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // parsed on Linux, tested everywhere
fn cgroup_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    let n: u64 = t.parse().ok()?;
    (n < 1 << 60).then_some(n)
}

/// A `key value` line of `memory.stat`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // parsed on Linux, tested everywhere
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// The least headroom over the cgroup at `path` and its ancestors up to the mount's root.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // parsed on Linux, tested everywhere
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
        assert_eq!(windows_headroom(WindowsMemory::default()), None);
    }

    #[test]
    fn windows_takes_the_smallest_of_memory_commit_space_and_job() {
        let status = Some((8 * GIB, 3 * GIB, 100 * GIB));
        let m = WindowsMemory {
            status,
            ..WindowsMemory::default()
        };
        let a = windows_headroom(m).unwrap();
        assert_eq!((a.bytes, a.limit), (3 * GIB, "ullAvailPageFile"));
        let m = WindowsMemory {
            status,
            process_limit: Some(4 * GIB),
            job_limit: Some(5 * GIB),
            private_usage: 2 * GIB,
        };
        let a = windows_headroom(m).unwrap();
        assert_eq!((a.bytes, a.limit), (2 * GIB, "job ProcessMemoryLimit"));
        let m = WindowsMemory {
            job_limit: Some(GIB),
            private_usage: 2 * GIB,
            ..m
        };
        let a = windows_headroom(m).unwrap();
        assert_eq!((a.bytes, a.limit), (0, "job JobMemoryLimit"));
    }

    #[cfg(any(target_os = "linux", windows))]
    #[test]
    fn this_machine_reports_something() {
        let a = available_memory().expect("Linux has /proc/meminfo, Windows GlobalMemoryStatusEx");
        assert!(a.bytes > 0, "{a:?}");
    }

    #[test]
    fn pages_are_zeroed_page_aligned_and_writable() {
        let page = page_size();
        assert!(page.is_power_of_two() && page >= 4096, "{page}");
        let mut p = Pages::new(3 * page + 1).unwrap();
        assert_eq!(p.as_ptr() as usize % page, 0);
        p.commit();
        // SAFETY: inside the mapping `p` owns, which nothing else touches.
        let bytes = unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), p.len()) };
        assert!(bytes.iter().all(|&b| b == 0));
        bytes[3 * page] = 7;
        assert_eq!(bytes[3 * page], 7);
        assert!(Pages::new(0).is_none());
    }

    #[test]
    fn sleep_until_never_wakes_early() {
        for us in [0u64, 30, 200, 2_000] {
            let deadline = Instant::now() + std::time::Duration::from_micros(us);
            sleep_until(deadline);
            assert!(Instant::now() >= deadline, "{us} us");
        }
    }
}
