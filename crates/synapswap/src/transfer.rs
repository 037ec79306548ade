//! The runtime's transfer side: a deadline-ordered queue of copy jobs and the dedicated thread that
//! feeds them, chunk by chunk, to the backend's copy queue. The chunk pipeline itself (fill to
//! depth, complete the oldest, busy and idle time, trace spans, commands to jobs, completions to
//! the planner) is [`copy_loop`], behind a link-and-clock seam: the transfer thread runs it on the
//! backend with the state lock dropped around driver calls, and the simulator (`simulate.rs`) runs
//! the same code on its modelled link and virtual clock.
//!
//! Order: demand loads (a caller is blocked) first, then write-backs (they free space someone is
//! waiting for), then prefetches in the order the planner issued them, which is deadline order.
//! Jobs are cut into chunks (default 8 MiB) and the next chunk is chosen afresh each time, so a
//! demand load that arrives during a long prefetch waits behind at most the chunks already queued
//! on the backend (one on `sim`).
//!
//! # Coalescing
//! Every copy pays a fixed cost on top of its bytes (a driver call and the DMA setup: 2-10 us,
//! assumed; the simulator's `--latency`), which dominates small blocks. So a chunk does not end at
//! a job's end: while it is under the chunk size, it goes on with the next job in the same order
//! when that job's bytes follow on in the same host mapping (`mapping`: one registered
//! allocation, such as a host slab) and on the device, in the same direction. The planner places a
//! step's streamed blocks end to end in its ring and the engine allocates blocks end to end in its
//! host slabs, so a step's small blocks usually go as one copy. Merging never reorders: the chunk
//! takes only the job that would have been next anyway.
//!
//! Where the next job's bytes do not follow on (separate tensors of a framework, caller-owned
//! buffers), the chunk goes on as a batch: the job becomes a new segment, and the chunk's
//! segments go to the backend in one submission ([`Backend::submit_batch`]: one operation and
//! one event), while it holds under [`MAX_SEGMENTS`] segments and [`BATCH_BYTES`]. A new segment
//! is never started for a job of the other kind than the chunk's first (a demand load or a
//! prefetch: a blocked caller's copy completes with its chunk, so that stays small); a job whose
//! bytes follow on still merges, whatever its kind, as before batching. Each segment is its own
//! copy: no byte outside a job's ranges is read or written.
//!
//! Cost: O(log jobs) per push, chunk, completion and lookup by block.

pub(crate) mod copy_loop;
mod staging;

use std::collections::{BTreeSet, HashMap};

pub(crate) use copy_loop::{queue_commands, report, CopyLoop, Link};
use staging::StagingRing;
pub(crate) use staging::MAX_SLOTS as STAGING_SLOTS;

use crate::backend::{Backend, Direction, Segment, Ticket};
use crate::engine::{poll_fences, Shared, State};
use crate::sync::{self, Arc, Instant};
use crate::{BlockId, Error};

#[derive(Debug)]
pub(crate) struct Job {
    pub block: BlockId,
    pub dir: Direction,
    pub host: u64,
    pub device: u64,
    pub len: u64,
    pub demand: bool,
    /// The host allocation the bytes live in: only jobs of one mapping are merged.
    mapping: u64,
    /// Its host bytes are pageable: copied through the staging ring (`staging.rs`).
    staged: bool,
    seq: u64,
    submitted: u64,
    completed: u64,
    in_flight: u32,
    busy_s: f64,
    failed: Option<String>,
    /// Bytes whose copy is on the backend's queue (tickets known), and the last such ticket:
    /// chunks of a job go to one copy stream in order, so it completes after all of them.
    queued: u64,
    last_ticket: Option<Ticket>,
    /// A consumer's stream will wait on this load: submit all of it at once, past the
    /// pipeline's depth, so its last ticket is known soon.
    eager: bool,
    /// Its host bytes are still being read from the disk (`ram_tier/disk_reader.rs`): not
    /// ready until [`TransferQueue::read_released`].
    awaiting_read: bool,
}

/// Which jobs [`TransferQueue::next_chunk`] may take a chunk from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    /// The most urgent job.
    Any,
    /// Write-backs only (at shutdown: device bytes that exist nowhere else).
    WriteBacks,
    /// Loads a consumer's stream will wait on.
    Eager,
}

/// Where a block's load stands, for a stream-ordered acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoadTicket {
    /// Every chunk is on the copy queue; the load completes with this ticket.
    Queued(Ticket),
    /// Some chunk is still to be submitted.
    Submitting,
    /// The load failed.
    Failed,
    /// No load of the block is queued (it completed, or never was).
    Gone,
}

/// Pending copy jobs.
#[derive(Debug, Default)]
pub(crate) struct TransferQueue {
    jobs: HashMap<u64, Job>,
    /// (rank class, seq) of the jobs with bytes left to submit and no failure.
    ready: BTreeSet<(u8, u64)>,
    /// Seqs of the eager jobs with bytes left to submit.
    eager: BTreeSet<u64>,
    /// The load job of each block being loaded (one at a time).
    loads: HashMap<BlockId, u64>,
    seq: u64,
}

/// Rank class of write-backs in [`TransferQueue::ready`].
const WRITE_BACK: u8 = 1;

/// One submission to the backend: one or more contiguous host and device ranges (`segments`,
/// one per run of jobs whose bytes follow on) covering `parts` (the bytes of one or more jobs,
/// in order).
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    pub dir: Direction,
    pub segments: Vec<Segment>,
    pub len: u64,
    /// Its host bytes are pageable: the link copies them through its staging ring.
    pub staged: bool,
    /// (job seq, bytes) in queue order.
    parts: Vec<(u64, u64)>,
}

#[cfg(test)]
impl Chunk {
    /// The first segment's host address.
    pub fn host(&self) -> u64 {
        self.segments.first().map_or(0, |s| s.host)
    }

    /// The first segment's device address.
    pub fn device(&self) -> u64 {
        self.segments.first().map_or(0, |s| s.device)
    }
}

/// Most segments in one batched submission (a bound on its host-side cost).
pub(crate) const MAX_SEGMENTS: usize = 64;
/// A chunk takes a new segment only while it holds fewer bytes than this. Batching saves a
/// submission's fixed cost per copy, which is small next to a megabyte's transfer (10 us against
/// 0.5 ms at 2 GB/s on the sim; assumed for PCIe), while a job is reported done only with the
/// whole chunk its last bytes went in: batching past this delays the first job for nothing
/// (measured: batching up to the 8 MiB chunk cost the default `synapswap run` 0.868-0.874 ->
/// 0.853-0.859 and `small-tensors` one run of three below 0.9).
pub(crate) const BATCH_BYTES: u64 = 1 << 20;

impl TransferQueue {
    #[allow(clippy::too_many_arguments)] // a job's fields
    pub fn push(
        &mut self,
        block: BlockId,
        dir: Direction,
        host: u64,
        device: u64,
        len: u64,
        demand: bool,
        (mapping, staged): (u64, bool),
    ) {
        self.seq += 1;
        let job = Job {
            block,
            dir,
            host,
            device,
            len,
            demand,
            mapping,
            staged,
            seq: self.seq,
            submitted: 0,
            completed: 0,
            in_flight: 0,
            busy_s: 0.0,
            failed: None,
            queued: 0,
            last_ticket: None,
            eager: false,
            awaiting_read: false,
        };
        if len > 0 {
            self.ready.insert(Self::rank(&job));
        }
        if dir == Direction::HostToDevice {
            self.loads.insert(block, job.seq);
        }
        self.jobs.insert(job.seq, job);
    }

    fn rank(j: &Job) -> (u8, u64) {
        let class = match (j.dir, j.demand) {
            (Direction::HostToDevice, true) => 0,
            (Direction::DeviceToHost, _) => WRITE_BACK,
            (Direction::HostToDevice, false) => 2,
        };
        (class, j.seq)
    }

    /// Makes `block`'s load a demand load (and `eager` if asked), re-ranking it.
    fn promote(&mut self, block: BlockId, eager: bool) {
        let Some(&seq) = self.loads.get(&block) else {
            return;
        };
        let Some(j) = self.jobs.get_mut(&seq) else {
            return;
        };
        let was = Self::rank(j);
        j.demand = true;
        j.eager |= eager;
        let open = j.submitted < j.len && j.failed.is_none() && !j.awaiting_read;
        if open && self.ready.remove(&was) {
            self.ready.insert(Self::rank(j));
        }
        if open && j.eager {
            self.eager.insert(seq);
        }
    }

    /// `block`'s load (just queued) copies bytes still being read from the disk: it waits for
    /// [`TransferQueue::read_released`].
    pub fn await_read(&mut self, block: BlockId) {
        let Some(j) = self.loads.get(&block).and_then(|s| self.jobs.get_mut(s)) else {
            return;
        };
        if j.submitted == 0 {
            j.awaiting_read = true;
            self.ready.remove(&Self::rank(j));
            self.eager.remove(&j.seq);
        }
    }

    /// The read `block`'s load waited for is over: it may go, from where it was queued, or,
    /// when the read failed, from `fallback` (host address, mapping, staged: its own host copy).
    pub fn read_released(&mut self, block: BlockId, fallback: Option<(u64, u64, bool)>) {
        let Some(j) = self.loads.get(&block).and_then(|s| self.jobs.get_mut(s)) else {
            return;
        };
        if !std::mem::take(&mut j.awaiting_read) {
            return;
        }
        if let Some((host, mapping, staged)) = fallback {
            (j.host, j.mapping, j.staged) = (host, mapping, staged);
        }
        if j.submitted < j.len && j.failed.is_none() {
            self.ready.insert(Self::rank(j));
            if j.eager {
                self.eager.insert(j.seq);
            }
        }
    }

    /// A queued prefetch of `block` is now waited for.
    pub fn expedite(&mut self, block: BlockId) {
        self.promote(block, false);
    }

    /// The job `pick` would take next.
    fn first(&self, pick: Pick) -> Option<u64> {
        match pick {
            Pick::Any => self.ready.first().map(|r| r.1),
            Pick::WriteBacks => self
                .ready
                .range((WRITE_BACK, 0)..(WRITE_BACK + 1, 0))
                .next()
                .map(|r| r.1),
            Pick::Eager => self.eager.first().copied(),
        }
    }

    /// Takes up to `max` bytes of job `seq` into `c`.
    fn take(&mut self, seq: u64, max: u64, c: &mut Chunk) {
        let j = self.jobs.get_mut(&seq).expect("a ranked job is queued");
        let len = (j.len - j.submitted).min(max);
        j.submitted += len;
        j.in_flight += 1;
        c.len += len;
        if let Some(s) = c.segments.last_mut() {
            s.len += len;
        }
        c.parts.push((seq, len));
        if j.submitted == j.len {
            let rank = Self::rank(j);
            self.ready.remove(&rank);
            self.eager.remove(&seq);
        }
    }

    /// Carves the next chunk to copy from the most urgent job with bytes left to submit, and
    /// goes on into the jobs after it (see the module docs, "Coalescing"): in the same segment
    /// while their bytes follow on, else in a new one while the chunk is a batch of under
    /// [`MAX_SEGMENTS`] segments and [`BATCH_BYTES`], and the next job is as urgent a kind (a
    /// demand load or not) as the first.
    pub fn next_chunk(&mut self, chunk_bytes: u64, pick: Pick) -> Option<Chunk> {
        let seq = self.first(pick)?;
        let j = &self.jobs[&seq];
        let (demand, mut mapping) = (j.demand, j.mapping);
        let mut c = Chunk {
            dir: j.dir,
            segments: vec![Segment {
                host: j.host + j.submitted,
                device: j.device + j.submitted,
                len: 0,
            }],
            len: 0,
            staged: j.staged,
            parts: Vec::new(),
        };
        self.take(seq, chunk_bytes, &mut c);
        while c.len < chunk_bytes {
            let Some(next) = self.first(pick) else { break };
            let j = &self.jobs[&next];
            if j.dir != c.dir || j.staged != c.staged {
                break;
            }
            let last = c.segments[c.segments.len() - 1];
            let follows = j.mapping == mapping
                && j.host + j.submitted == last.host + last.len
                && j.device + j.submitted == last.device + last.len;
            if !follows {
                if c.segments.len() >= MAX_SEGMENTS || c.len >= BATCH_BYTES || j.demand != demand {
                    break;
                }
                c.segments.push(Segment {
                    host: j.host + j.submitted,
                    device: j.device + j.submitted,
                    len: 0,
                });
                mapping = j.mapping;
            }
            self.take(next, chunk_bytes - c.len, &mut c);
        }
        Some(c)
    }

    /// A label and category for a chunk, for traces.
    pub fn describe(&self, c: &Chunk, planner: &crate::planner::Planner) -> (String, &'static str) {
        let Some(j) = c.parts.first().and_then(|p| self.jobs.get(&p.0)) else {
            return ("copy".into(), "copy");
        };
        let mut name = planner
            .spec(j.block)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        if c.parts.len() > 1 {
            name = format!("{name} +{} more", c.parts.len() - 1);
        }
        match (j.dir, j.demand) {
            (Direction::DeviceToHost, _) => (format!("write-back {name}"), "write-back"),
            (Direction::HostToDevice, true) => (format!("load {name}"), "demand"),
            (Direction::HostToDevice, false) => (format!("load {name}"), "prefetch"),
        }
    }

    /// A chunk is on the backend's queue with `ticket`.
    pub fn record_ticket(&mut self, c: &Chunk, ticket: Ticket) {
        for &(seq, len) in &c.parts {
            if let Some(j) = self.jobs.get_mut(&seq) {
                j.queued += len;
                j.last_ticket = Some(ticket);
            }
        }
    }

    /// Where `block`'s load stands.
    pub fn load_ticket(&self, block: BlockId) -> LoadTicket {
        let Some(j) = self.loads.get(&block).and_then(|s| self.jobs.get(s)) else {
            return LoadTicket::Gone;
        };
        match (&j.failed, j.last_ticket) {
            (Some(_), _) => LoadTicket::Failed,
            (None, Some(t)) if j.queued == j.len => LoadTicket::Queued(t),
            _ => LoadTicket::Submitting,
        }
    }

    /// A consumer's stream will wait on `block`'s load: copy it first, and all of it at once.
    pub fn make_eager(&mut self, block: BlockId) {
        self.promote(block, true);
    }

    /// Whether a write-back still has bytes to submit.
    pub fn has_writebacks(&self) -> bool {
        self.first(Pick::WriteBacks).is_some()
    }

    /// Removes a job that is over.
    fn remove(&mut self, seq: u64) -> Option<Job> {
        let j = self.jobs.remove(&seq)?;
        self.ready.remove(&Self::rank(&j));
        self.eager.remove(&seq);
        if self.loads.get(&j.block) == Some(&seq) {
            self.loads.remove(&j.block);
        }
        Some(j)
    }

    /// Fails every job (the device is lost): no chunk of them is submitted again. Returns the
    /// jobs that are now over (nothing of them in flight); the rest end with their last chunk.
    pub fn fail_all(&mut self, reason: &str) -> Vec<Job> {
        self.ready.clear();
        self.eager.clear();
        let mut over: Vec<u64> = Vec::new();
        for j in self.jobs.values_mut() {
            j.failed.get_or_insert_with(|| reason.to_string());
            if j.in_flight == 0 {
                over.push(j.seq);
            }
        }
        over.sort_unstable();
        over.into_iter().filter_map(|s| self.remove(s)).collect()
    }

    /// Records a finished chunk; returns the jobs it carried that are now over (completed or
    /// failed), in order. A failure fails every job in the chunk. The chunk's busy time is
    /// shared among its jobs by bytes.
    pub fn chunk_done(&mut self, c: &Chunk, result: Result<(), String>, busy_s: f64) -> Vec<Job> {
        let mut over = Vec::new();
        for &(seq, len) in &c.parts {
            let Some(j) = self.jobs.get_mut(&seq) else {
                continue;
            };
            j.in_flight -= 1;
            j.busy_s += busy_s * len as f64 / c.len.max(1) as f64;
            match &result {
                Ok(()) => j.completed += len,
                Err(e) => {
                    if j.failed.is_none() {
                        j.failed = Some(e.clone());
                        let rank = Self::rank(j);
                        self.ready.remove(&rank);
                        self.eager.remove(&seq);
                    }
                }
            }
            let j = &self.jobs[&seq];
            if j.in_flight == 0 && (j.completed == j.len || j.failed.is_some()) {
                over.extend(self.remove(seq));
            }
        }
        over
    }
}

impl Job {
    pub fn outcome(&self) -> (bool, &str, f64) {
        match &self.failed {
            None => (true, "", self.busy_s),
            Some(e) => (false, e.as_str(), self.busy_s),
        }
    }
}

/// The runtime's [`Link`]: the backend's copy queue, on the real clock, with the staging ring
/// for chunks of pageable host bytes (`staging.rs`).
struct BackendLink<'a> {
    backend: &'a dyn Backend,
    staging: StagingRing,
    /// Bytes of a staging slot: the chunk size.
    slot_bytes: u64,
}

impl Link for BackendLink<'_> {
    type Time = Instant;

    fn now(&self) -> Instant {
        Instant::now()
    }

    unsafe fn submit(&mut self, c: &Chunk) -> Result<Ticket, Error> {
        if c.staged {
            // SAFETY: the caller's contract ([`Link::submit`]) is the ring's: the ranges stay
            // valid and untouched until `wait` returned for the ticket (which frees the slot).
            let staged = unsafe {
                self.staging
                    .submit(self.backend, c.dir, &c.segments, self.slot_bytes)
            };
            if let Some(r) = staged {
                return r;
            }
        }
        // SAFETY: the caller's contract ([`Link::submit`]) is the backend's: the ranges stay
        // valid and untouched until `wait` returned for the ticket.
        unsafe {
            match c.segments[..] {
                [s] => {
                    self.backend
                        .submit(c.dir, s.host as usize as *mut u8, s.device, s.len as usize)
                }
                _ => self.backend.submit_batch(c.dir, &c.segments),
            }
        }
    }

    fn wait(&mut self, ticket: Ticket) -> (Result<(), Error>, Instant) {
        let r = self.backend.wait(ticket);
        self.staging.completed(ticket, r.is_ok());
        (r, Instant::now())
    }
}

/// The transfer thread: keeps up to `pipeline_depth` chunks on the backend's copy queue and reports
/// completions to the planner (the [`CopyLoop`] does the pipeline; this adds fences, device loss,
/// shutdown, eager loads and wake-ups). Exits on shutdown once every submitted copy has
/// completed, so no copy outlives the memory it touches.
///
/// Every driver call (submit, wait, fence query) runs with the state lock dropped: chunks are
/// carved under the lock (their job keeps the block `Loading` or `WritingBack`, so the planner
/// moves nothing they touch), submitted after it, and their tickets recorded under it again.
/// How often the transfer thread looks at a running copy while it also waits for new work.
const POLL: std::time::Duration = std::time::Duration::from_micros(20);

pub(crate) fn transfer_thread(shared: Arc<Shared>) {
    let backend = shared.backend.clone();
    let mut link = BackendLink {
        backend: backend.as_ref(),
        staging: StagingRing::default(),
        slot_bytes: shared.chunk_bytes,
    };
    let mut copies = CopyLoop::new(
        shared.pipeline_depth,
        shared.chunk_bytes,
        shared.epoch,
        Instant::now(),
    );
    let mut st = sync::lock(&shared.state);
    loop {
        let advice = st.ram.take_advice();
        if !advice.is_empty() {
            drop(st);
            // No advisor thread (it could not be started): given here.
            for item in advice {
                crate::ram_tier::give(&shared.page_cache, item);
            }
            st = sync::lock(&shared.state);
        }
        // The RAM tier's landing buffer (`ram_tier/landing.rs`): allocated here, outside the
        // lock, as every driver call is (pinned on CUDA).
        if let Some((bytes, old)) = st.ram.take_landing_request() {
            drop(st);
            drop(old);
            // Checked first: unlike the page cache, this memory is not given back under
            // pressure. Refused, the tier advises the kernel instead (`RamTier::set_landing`).
            let mem = crate::os::check_needed(bytes, crate::os::available_memory())
                .and_then(|()| backend.alloc_host(bytes));
            st = sync::lock(&shared.state);
            let State { ram, planner, .. } = &mut *st;
            ram.set_landing(mem);
            ram.look_ahead(planner);
        }
        // Completed stream fences first: the holds they drop can let queued placements through,
        // whose copies the fill below then submits.
        st = poll_fences(&shared, st, false);
        if let Some(e) = &st.lost {
            // Failing a job can let the planner issue others (each block fails once: a failed
            // load is not retried until the block is used, and no use succeeds any more).
            let reason = e.to_string();
            loop {
                let over = st.queue.fail_all(&reason);
                if over.is_empty() {
                    break;
                }
                for job in over {
                    finish_job(&shared, &mut st, &job);
                }
            }
        }
        let mut batch = Vec::new();
        if st.lost.is_none() {
            // At shutdown only write-backs go on: they carry the only copy of what was written
            // on the device (a caller-owned buffer must get it).
            let pick = if st.shutdown {
                Pick::WriteBacks
            } else {
                Pick::Any
            };
            copies.carve(&mut st.queue, pick, &mut batch);
            // A load a consumer's stream is about to wait on goes on whole.
            if !st.shutdown {
                copies.carve_all(&mut st.queue, Pick::Eager, &mut batch);
            }
        }
        if !batch.is_empty() {
            drop(st);
            // SAFETY: each chunk is the union of end-to-end parts of its jobs, each inside its
            // block's host buffer and device region (parts are merged only where one job's bytes
            // start where the previous one's end, in one host mapping and on the device). The
            // planner keeps each region allocated, and the engine keeps each host buffer alive
            // and untouched by callers (`write`, `read` and `free` wait for the block's jobs),
            // until the job is reported done, which happens only after `wait` on every chunk's
            // ticket.
            let submitted = unsafe { CopyLoop::submit(&mut link, batch) };
            st = sync::lock(&shared.state);
            for s in submitted {
                let State {
                    queue,
                    planner,
                    trace,
                    ..
                } = &mut *st;
                if let Some((e, over)) = copies.record(queue, planner, trace.as_mut(), s) {
                    st.note(&shared, &e);
                    for job in over {
                        finish_job(&shared, &mut st, &job);
                    }
                }
            }
            // A stream-ordered acquire may be waiting for its load's last ticket.
            shared.ready.notify_all();
            continue;
        }
        // A copy is running and the pipeline has room: while it runs, wait for new work (a
        // release that lets the next loads in) as well as for the copy, so those loads go on the
        // copy queue before it ends. Looked at again every `POLL`; only where the backend can
        // tell without blocking.
        let running = copies.peek_oldest().map(|f| f.ticket);
        if let Some(ticket) = running.filter(|_| copies.has_room() && !st.shutdown) {
            // The query is a driver call: outside the state lock, as every one is.
            drop(st);
            let done = backend.query(ticket);
            st = sync::lock(&shared.state);
            if done == Some(false) {
                st = sync::wait_timeout(&shared.work, st, POLL);
                continue;
            }
        }
        let Some(f) = copies.oldest() else {
            if st.shutdown && (st.lost.is_some() || !st.queue.has_writebacks()) {
                break;
            }
            copies.start_idle(link.now());
            st = if !st.deferred.is_empty() {
                // Stream-ordered releases are pending: look at their fences again soon.
                sync::wait_timeout(&shared.work, st, std::time::Duration::from_micros(100))
            } else {
                sync::wait(&shared.work, st)
            };
            copies.end_idle(&mut st.planner, link.now());
            continue;
        };
        drop(st);
        let (result, done) = link.wait(f.ticket);
        st = sync::lock(&shared.state);
        if let Err(e) = &result {
            st.note(&shared, e);
        }
        let State {
            queue,
            planner,
            trace,
            ..
        } = &mut *st;
        let result = result.map_err(|e| e.to_string());
        for job in copies.complete(queue, planner, trace.as_mut(), f, result, done) {
            finish_job(&shared, &mut st, &job);
        }
    }
}

fn finish_job(shared: &Shared, st: &mut State, job: &Job) {
    let (ok, reason, _) = job.outcome();
    let stream_waited = match st.stream_waits.iter().position(|&b| b == job.block) {
        Some(i) if job.dir == Direction::HostToDevice => {
            st.stream_waits.swap_remove(i);
            true
        }
        _ => false,
    };
    if !ok && stream_waited {
        // A consumer queued work on a stream that waits for this copy (`acquire_on_stream` of a
        // block in flight): that work runs on bytes that never arrived, and its memory is in use
        // until the consumer's fence. Nothing can undo it, so the device counts as lost.
        st.fail_device(
            shared,
            Error::DeviceLost(format!(
                "the load of block {} failed while a stream waited on it: {reason}",
                job.block
            )),
        );
    }
    if job.dir == Direction::HostToDevice {
        if ok {
            st.ram.loaded(job.block, job.host, job.len);
        } else {
            st.ram.load_failed(job.block);
        }
    }
    report(&mut st.planner, job);
    st.apply_commands(shared);
    shared.ready.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(index: u32) -> BlockId {
        BlockId {
            index,
            generation: 0,
        }
    }

    const H2D: Direction = Direction::HostToDevice;

    #[test]
    fn jobs_whose_bytes_follow_on_go_as_one_copy_and_the_rest_as_a_batch() {
        let mut q = TransferQueue::default();
        // Three blocks end to end in mapping 7 and on the device, then one in another mapping,
        // then one with a gap on the device: one segment each for the last two, in one batch.
        q.push(id(0), H2D, 1000, 0, 100, false, (7, false));
        q.push(id(1), H2D, 1100, 100, 100, false, (7, false));
        q.push(id(2), H2D, 1200, 200, 50, false, (7, false));
        q.push(id(3), H2D, 1250, 250, 50, false, (8, false));
        q.push(id(4), H2D, 1300, 356, 50, false, (8, false));
        let c = q.next_chunk(1 << 20, Pick::Any).unwrap();
        let seg = |host, device, len| Segment { host, device, len };
        assert_eq!(
            c.segments,
            [seg(1000, 0, 250), seg(1250, 250, 50), seg(1300, 356, 50)],
            "merged in mapping 7; another mapping, and a gap on the device, each a segment"
        );
        assert_eq!((c.len, c.parts.len()), (350, 5));
        assert!(q.next_chunk(1 << 20, Pick::Any).is_none());
        let done: Vec<u32> = q
            .chunk_done(&c, Ok(()), 2.5)
            .iter()
            .map(|j| j.block.index)
            .collect();
        assert_eq!(done, [0, 1, 2, 3, 4]);
        assert_eq!(q.load_ticket(id(1)), LoadTicket::Gone);
    }

    #[test]
    fn a_batch_stops_at_its_segment_limit_and_at_a_demand_load() {
        let mut q = TransferQueue::default();
        for i in 0..=MAX_SEGMENTS as u32 {
            q.push(
                id(i),
                H2D,
                u64::from(i) * 1000,
                u64::from(i) * 1000,
                10,
                false,
                (0, false),
            );
        }
        let c = q.next_chunk(1 << 20, Pick::Any).unwrap();
        assert_eq!(c.segments.len(), MAX_SEGMENTS);
        let c = q.next_chunk(1 << 20, Pick::Any).unwrap();
        assert_eq!(c.segments.len(), 1);
        q.push(id(100), H2D, 0, 0, 10, true, (0, false));
        q.push(id(101), H2D, 5000, 5000, 10, false, (0, false));
        let c = q.next_chunk(1 << 20, Pick::Any).unwrap();
        assert_eq!(
            (c.host(), c.segments.len()),
            (0, 1),
            "a demand load goes alone"
        );
        q.next_chunk(1 << 20, Pick::Any).unwrap();
        // Past BATCH_BYTES a chunk takes no new segment (it still runs on where bytes follow).
        let big = BATCH_BYTES * 3 / 5;
        for i in 0..3u32 {
            let at = u64::from(i) * 2 * big;
            q.push(id(200 + i), H2D, at, at, big, false, (0, false));
        }
        let c = q.next_chunk(8 << 20, Pick::Any).unwrap();
        assert_eq!(
            c.segments.len(),
            2,
            "the second segment took it past BATCH_BYTES"
        );
        assert_eq!(q.next_chunk(8 << 20, Pick::Any).unwrap().segments.len(), 1);
        assert!(q.next_chunk(8 << 20, Pick::Any).is_none());
    }

    #[test]
    fn a_merged_chunk_stops_at_the_chunk_size_and_never_reorders() {
        let mut q = TransferQueue::default();
        q.push(id(0), H2D, 0, 0, 100, false, (0, false));
        q.push(id(1), H2D, 100, 100, 100, false, (0, false));
        // A demand load elsewhere ranks first; the adjacent prefetches follow it only in order.
        q.push(id(2), H2D, 5000, 5000, 10, true, (0, false));
        let c = q.next_chunk(150, Pick::Any).unwrap();
        assert_eq!(
            (c.host(), c.len),
            (5000, 10),
            "demand first, alone: nothing follows on"
        );
        let c = q.next_chunk(150, Pick::Any).unwrap();
        assert_eq!(
            (c.host(), c.len, c.parts.clone()),
            (0, 150, vec![(1, 100), (2, 50)])
        );
        let c2 = q.next_chunk(150, Pick::Any).unwrap();
        assert_eq!((c2.host(), c2.len), (150, 50));
        // A failed merged copy fails each job it carried; the rest of job 2 is still in flight.
        let over = q.chunk_done(&c, Err("link".into()), 0.0);
        assert_eq!(over.len(), 1);
        assert!(!over[0].outcome().0);
        assert_eq!(q.load_ticket(id(1)), LoadTicket::Failed);
        let over = q.chunk_done(&c2, Ok(()), 0.0);
        assert_eq!(over.len(), 1);
        assert!(!over[0].outcome().0, "one failed part fails the job");
    }

    #[test]
    fn expedite_and_eager_re_rank_a_queued_load() {
        let mut q = TransferQueue::default();
        q.push(id(0), H2D, 0, 0, 100, false, (0, false));
        q.push(id(1), H2D, 9000, 9000, 100, false, (0, false));
        q.make_eager(id(1));
        let c = q.next_chunk(1 << 20, Pick::Eager).unwrap();
        assert_eq!(c.host(), 9000);
        assert!(q.next_chunk(1 << 20, Pick::Eager).is_none());
        q.record_ticket(&c, Ticket(3));
        assert_eq!(q.load_ticket(id(1)), LoadTicket::Queued(Ticket(3)));
        assert_eq!(q.load_ticket(id(0)), LoadTicket::Submitting);
        assert!(!q.has_writebacks());
    }
}
