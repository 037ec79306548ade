//! The chunk pipeline, once: what the runtime's transfer thread and the simulator's virtual copy
//! engine both do with a [`TransferQueue`] and a copy link.
//!
//! # The seam
//! A [`CopyLoop`] keeps up to `depth` chunks on a [`Link`] (the in-flight FIFO), completes them
//! oldest first, measures each chunk's busy time from `max(submitted, previous completion)` (a
//! queued copy starts no earlier than the one before it finishes: that is the link time the
//! planner's bandwidth estimate divides by), shares it among the chunk's jobs, records the trace
//! span, and counts the link's idle time. [`queue_commands`] turns the planner's commands into
//! jobs and [`report`] hands a finished job back to the planner. Two things differ between the
//! users, and the seam is exactly there:
//! - **the link and its clock** ([`Link`]): the runtime's link is the backend's copy queue on
//!   [`crate::sync::Instant`] (a submit and a wait are driver calls); the simulator's is its
//!   modelled link on a virtual clock in `f64` seconds, which knows a copy's start and finish as
//!   soon as it is submitted (so it records the span then, labelled as submitted; the runtime
//!   records it when the copy completes);
//! - **where a block's host bytes are** (the `host_of` lookup of [`queue_commands`]): the engine's
//!   real host memory, or the simulator's model of the host tier (`host_tier::model_layout`).
//!
//! The steps are separate calls ([`CopyLoop::carve`], [`CopyLoop::submit`],
//! [`CopyLoop::record`], [`CopyLoop::oldest`], [`Link::wait`], [`CopyLoop::complete`]) so that
//! the runtime can drop the engine's state lock around the two that call the driver (`submit` and
//! `wait`): driver calls never run under the state lock. The simulator calls them back to back.
//! What stays on the runtime's side: stream fences, device loss, write-backs only at shutdown,
//! eager loads, and waking the threads that wait on the engine.

use std::collections::VecDeque;

use super::{Chunk, Job, Pick, TransferQueue};
use crate::backend::{Direction, Ticket};
use crate::planner::{Command, Planner};
use crate::trace::Trace;
use crate::{BlockId, Error};

/// A point on a copy loop's clock.
pub(crate) trait Moment: Copy {
    /// The later of the two.
    fn later(self, other: Self) -> Self;
    /// Seconds from `earlier` to `self`.
    fn secs_since(self, earlier: Self) -> f64;
}

/// Virtual time: seconds.
impl Moment for f64 {
    fn later(self, other: f64) -> f64 {
        self.max(other)
    }
    fn secs_since(self, earlier: f64) -> f64 {
        self - earlier
    }
}

impl Moment for crate::sync::Instant {
    fn later(self, other: Self) -> Self {
        self.max(other)
    }
    fn secs_since(self, earlier: Self) -> f64 {
        (self - earlier).as_secs_f64()
    }
}

/// A copy link and its clock: copies complete in submission order.
pub(crate) trait Link {
    /// The link's clock.
    type Time: Moment;

    /// Now, on the link's clock.
    fn now(&self) -> Self::Time;

    /// Puts the copy of `c` on the link.
    ///
    /// # Safety
    /// The chunk's host and device ranges must stay allocated, and untouched by anyone else, until
    /// [`Link::wait`] has returned for the ticket (a link that moves bytes reads and writes them).
    unsafe fn submit(&mut self, c: &Chunk) -> Result<Ticket, Error>;

    /// The copy's start and finish, when the link knows them at submit (a modelled link).
    fn span(&self, _ticket: Ticket) -> Option<(Self::Time, Self::Time)> {
        None
    }

    /// Waits for the copy with `ticket` (the oldest on the link): its result and when it finished.
    fn wait(&mut self, ticket: Ticket) -> (Result<(), Error>, Self::Time);
}

/// A chunk on the link.
#[derive(Debug)]
pub(crate) struct InFlight<M> {
    chunk: Chunk,
    /// What to wait on.
    pub ticket: Ticket,
    submitted: M,
    /// Its span is already on the trace (recorded at submit).
    traced: bool,
}

/// A chunk just submitted, to record (under the lock, on the runtime).
#[derive(Debug)]
pub(crate) struct Submitted<M> {
    chunk: Chunk,
    result: Result<Ticket, Error>,
    at: M,
    span: Option<(M, M)>,
}

/// The in-flight chunks and the time bookkeeping of one copy link (see the module docs).
#[derive(Debug)]
pub(crate) struct CopyLoop<M> {
    in_flight: VecDeque<InFlight<M>>,
    /// When the previous chunk finished: a queued chunk's copy starts no earlier.
    last_done: M,
    /// Time zero of the trace.
    epoch: M,
    /// Since when the link has had nothing to do, while it is counted as idle.
    idle_since: Option<M>,
    depth: usize,
    chunk_bytes: u64,
}

impl<M: Moment> CopyLoop<M> {
    /// A loop keeping `depth` chunks of up to `chunk_bytes` on the link, tracing from `epoch`,
    /// started at `start` (the first chunk's busy time counts from no earlier).
    pub fn new(depth: usize, chunk_bytes: u64, epoch: M, start: M) -> CopyLoop<M> {
        CopyLoop {
            in_flight: VecDeque::new(),
            last_done: start,
            epoch,
            idle_since: None,
            depth,
            chunk_bytes,
        }
    }

    /// Whether no chunk is on the link.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Carves chunks (of jobs `pick` allows) into `batch` until the link would hold `depth`.
    pub fn carve(&self, queue: &mut TransferQueue, pick: Pick, batch: &mut Vec<Chunk>) {
        while self.in_flight.len() + batch.len() < self.depth {
            let Some(c) = queue.next_chunk(self.chunk_bytes, pick) else {
                break;
            };
            batch.push(c);
        }
    }

    /// Carves every chunk `pick` allows into `batch`, past the depth (eager loads go on whole).
    pub fn carve_all(&self, queue: &mut TransferQueue, pick: Pick, batch: &mut Vec<Chunk>) {
        while let Some(c) = queue.next_chunk(self.chunk_bytes, pick) {
            batch.push(c);
        }
    }

    /// Submits `batch` to the link, in order, each at the link's `now` (on the runtime: with the
    /// state lock dropped). Record each with [`CopyLoop::record`].
    ///
    /// # Safety
    /// As [`Link::submit`], for every chunk of `batch`.
    pub unsafe fn submit<L: Link<Time = M>>(link: &mut L, batch: Vec<Chunk>) -> Vec<Submitted<M>> {
        batch
            .into_iter()
            .map(|chunk| {
                let at = link.now();
                // SAFETY: the caller's contract, for this chunk.
                let result = unsafe { link.submit(&chunk) };
                let span = result.as_ref().ok().and_then(|&t| link.span(t));
                Submitted {
                    chunk,
                    result,
                    at,
                    span,
                }
            })
            .collect()
    }

    /// Records a submitted chunk: on the link (its ticket noted in the queue, its span traced if
    /// the link already knows it), or failed to submit: then it is over, and this returns the
    /// error and the jobs that are now over, for the caller to report.
    pub fn record(
        &mut self,
        queue: &mut TransferQueue,
        planner: &Planner,
        trace: Option<&mut Trace>,
        s: Submitted<M>,
    ) -> Option<(Error, Vec<Job>)> {
        match s.result {
            Ok(ticket) => {
                queue.record_ticket(&s.chunk, ticket);
                if let (Some((start, finish)), Some(t)) = (s.span, trace) {
                    self.trace_span(t, queue, planner, &s.chunk, start, finish);
                }
                self.in_flight.push_back(InFlight {
                    chunk: s.chunk,
                    ticket,
                    submitted: s.at,
                    traced: s.span.is_some(),
                });
                None
            }
            Err(e) => {
                let over = queue.chunk_done(&s.chunk, Err(e.to_string()), 0.0);
                Some((e, over))
            }
        }
    }

    /// Takes the oldest chunk off the in-flight FIFO, to wait on its ticket.
    pub fn peek_oldest(&self) -> Option<&InFlight<M>> {
        self.in_flight.front()
    }

    /// Whether another chunk may go on the copy queue now.
    pub fn has_room(&self) -> bool {
        self.in_flight.len() < self.depth
    }

    pub fn oldest(&mut self) -> Option<InFlight<M>> {
        self.in_flight.pop_front()
    }

    /// The link finished `f` at `done` with `result`: measures its busy time, traces it (unless
    /// it was traced at submit), and returns the jobs that are now over, for the caller to
    /// [`report`].
    pub fn complete(
        &mut self,
        queue: &mut TransferQueue,
        planner: &Planner,
        trace: Option<&mut Trace>,
        f: InFlight<M>,
        result: Result<(), String>,
        done: M,
    ) -> Vec<Job> {
        let start = f.submitted.later(self.last_done);
        self.last_done = done;
        let busy = done.secs_since(start);
        if let (false, Some(t)) = (f.traced, trace) {
            self.trace_span(t, queue, planner, &f.chunk, start, done);
        }
        queue.chunk_done(&f.chunk, result, busy)
    }

    fn trace_span(
        &self,
        t: &mut Trace,
        queue: &TransferQueue,
        planner: &Planner,
        c: &Chunk,
        start: M,
        finish: M,
    ) {
        let (name, cat) = queue.describe(c, planner);
        let (a, b) = (start.secs_since(self.epoch), finish.secs_since(self.epoch));
        t.push_copy(&name, cat, a, b, c.len);
    }

    /// The link has nothing to do from `now` (unless it already had).
    pub fn start_idle(&mut self, now: M) {
        if self.idle_since.is_none() {
            self.idle_since = Some(now);
        }
    }

    /// The link's idle time ends at `now`: counts it in the planner's statistics.
    pub fn end_idle(&mut self, planner: &mut Planner, now: M) {
        if let Some(t0) = self.idle_since.take() {
            planner.add_copy_idle(now.secs_since(t0));
        }
    }
}

/// Turns the planner's commands into jobs on `queue`: a block's device bytes are at
/// `device_base` plus its pool offset, its host bytes at `host_of(block)` (address, mapping,
/// whether it is pageable: [`crate::backend::Memory::pageable`]).
/// Returns whether a copy was queued.
pub(crate) fn queue_commands(
    planner: &mut Planner,
    queue: &mut TransferQueue,
    device_base: u64,
    mut host_of: impl FnMut(BlockId, Direction) -> (u64, u64, bool),
) -> bool {
    let mut queued = false;
    while let Some(c) = planner.poll_command() {
        let (block, dir, offset, size, demand) = match c {
            Command::Load {
                block,
                offset,
                size,
                demand,
            } => (block, Direction::HostToDevice, offset, size, demand),
            Command::WriteBack {
                block,
                offset,
                size,
            } => (block, Direction::DeviceToHost, offset, size, true),
            Command::Expedite { block } => {
                queue.expedite(block);
                continue;
            }
            Command::Evict { .. } => continue,
        };
        let (host, mapping, pageable) = host_of(block, dir);
        queue.push(
            block,
            dir,
            host,
            device_base + offset,
            size,
            demand,
            (mapping, pageable),
        );
        queued = true;
    }
    queued
}

/// Reports a job that is over to the planner.
pub(crate) fn report(planner: &mut Planner, job: &Job) {
    let (ok, reason, busy) = job.outcome();
    match job.dir {
        Direction::HostToDevice => planner.transfer_done(job.block, ok, reason, busy),
        Direction::DeviceToHost => planner.writeback_done(job.block, ok, busy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::PlannerConfig;

    /// A link on a virtual clock where every copy takes one second, one at a time; it knows its
    /// spans at submit when `modelled`.
    struct Fake {
        now: f64,
        free_at: f64,
        queued: VecDeque<(u64, f64, f64)>,
        tickets: u64,
        modelled: bool,
    }

    impl Link for Fake {
        type Time = f64;
        fn now(&self) -> f64 {
            self.now
        }
        unsafe fn submit(&mut self, _c: &Chunk) -> Result<Ticket, Error> {
            let start = self.now.max(self.free_at);
            self.free_at = start + 1.0;
            self.tickets += 1;
            self.queued.push_back((self.tickets, start, self.free_at));
            Ok(Ticket(self.tickets))
        }
        fn span(&self, t: Ticket) -> Option<(f64, f64)> {
            let q = self.queued.iter().find(|q| q.0 == t.0)?;
            self.modelled.then_some((q.1, q.2))
        }
        fn wait(&mut self, _t: Ticket) -> (Result<(), Error>, f64) {
            let q = self.queued.pop_front().unwrap();
            (Ok(()), q.2)
        }
    }

    /// Three one-chunk jobs through a depth-2 loop: busy time counts from the later of submit and
    /// the previous completion, spans are traced once (at submit on a modelled link, else at
    /// completion), and idle time runs from `start_idle` to `end_idle`.
    #[test]
    fn the_pipeline_measures_busy_time_and_traces_each_chunk_once() {
        for modelled in [false, true] {
            let mut planner = Planner::new(PlannerConfig::new(1 << 20)).unwrap();
            let mut q = TransferQueue::default();
            for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
                // Named apart (a trace merges touching spans of one name), and each the size of
                // a chunk (so each is a chunk of its own: neither merged nor batched).
                let b = planner.add_block(crate::BlockSpec::new(100).name(name));
                let at = i as u64 * 4096;
                q.push(
                    b.unwrap(),
                    Direction::HostToDevice,
                    at,
                    at,
                    100,
                    false,
                    (0, false),
                );
            }
            let mut link = Fake {
                now: 0.5,
                free_at: 0.0,
                queued: VecDeque::new(),
                tickets: 0,
                modelled,
            };
            let mut trace = Trace::default();
            let mut lp = CopyLoop::new(2, 100, 0.0, 0.0);
            lp.start_idle(0.0);
            let mut batch = Vec::new();
            lp.carve(&mut q, Pick::Any, &mut batch);
            assert_eq!(batch.len(), 2, "the depth");
            lp.end_idle(&mut planner, 0.5);
            // SAFETY: the fake link moves no bytes.
            for s in unsafe { CopyLoop::submit(&mut link, batch) } {
                assert!(lp.record(&mut q, &planner, Some(&mut trace), s).is_none());
            }
            let mut busy = Vec::new();
            while let Some(f) = lp.oldest() {
                let (r, done) = link.wait(f.ticket);
                let over = lp.complete(
                    &mut q,
                    &planner,
                    Some(&mut trace),
                    f,
                    r.map_err(|e| e.to_string()),
                    done,
                );
                busy.extend(over.iter().map(|j| j.outcome().2));
                // The third job goes on once one chunk completed, submitted at 3.0 (the link is
                // free from 2.5): its busy time counts from 3.0.
                link.now = 3.0;
                let mut batch = Vec::new();
                lp.carve(&mut q, Pick::Any, &mut batch);
                // SAFETY: as above.
                for s in unsafe { CopyLoop::submit(&mut link, batch) } {
                    assert!(lp.record(&mut q, &planner, Some(&mut trace), s).is_none());
                }
            }
            assert!(lp.is_empty());
            assert_eq!(busy, [1.0, 1.0, 1.0]);
            let spans: Vec<(f64, f64)> = trace.spans.iter().map(|s| (s.start_s, s.dur_s)).collect();
            assert_eq!(
                spans,
                [(0.5, 1.0), (1.5, 1.0), (3.0, 1.0)],
                "modelled: {modelled}"
            );
            assert_eq!(planner.stats().copy_idle_s, 0.5);
        }
    }

    #[test]
    fn commands_become_jobs_at_the_device_base_and_the_host_lookup() {
        let mut planner = Planner::new(PlannerConfig::new(1 << 20)).unwrap();
        let b = planner.add_block(crate::BlockSpec::new(4096)).unwrap();
        planner.declare(0, b).unwrap();
        planner.hint(0, 0.0);
        let mut q = TransferQueue::default();
        assert!(queue_commands(&mut planner, &mut q, 1 << 40, |_, _| (
            777, 3, false
        )));
        let c = q.next_chunk(1 << 20, Pick::Any).unwrap();
        assert_eq!((c.host(), c.device() >> 40, c.len), (777, 1, 4096));
        assert!(!queue_commands(&mut planner, &mut q, 0, |_, _| (
            0, 0, false
        )));
    }
}
