//! Uses, waits and completions: a caller acquiring a block (a hit, or a wait registered until
//! its load lands), the end of a hint's protection, and the driver reporting that a load or a
//! write-back finished or failed (which also feeds the bandwidth estimate).

use super::{Acquire, Command, Planner, State};
use crate::block::BlockId;
use crate::{Error, Result};

impl Planner {
    /// Ends the protection a hint gave `block` (it stays on the device until space is needed).
    pub fn release(&mut self, id: BlockId) -> Result<()> {
        let b = self.block_mut(id)?;
        b.protected = false;
        self.protected.retain(|&i| i != id.index);
        self.reserved.retain(|&(i, _)| i != id.index);
        self.pump();
        Ok(())
    }

    /// Records a use (and a hold). Returns whether the prefetch pipeline shrank, which is the
    /// only way a use can let more prefetches in.
    pub(super) fn mark_used(&mut self, index: u32) -> bool {
        let (tick, epoch) = (self.tick, self.epoch);
        let b = self.b_mut(index);
        b.take_hold();
        b.last_use_tick = tick;
        b.last_use_epoch = epoch;
        b.used_since_load = true;
        b.writeback_failed = false;
        b.load_failed = false;
        if std::mem::take(&mut b.prefetched_unused) {
            let size = b.spec.size;
            self.pipeline_bytes -= size;
            self.n.prefetch.used += 1;
            return true;
        }
        false
    }

    /// A caller wants `block` on the device. On `Ready` the block is held: call
    /// [`Planner::unhold`] when done. On `Pending` the caller is registered as a waiter: call
    /// [`Planner::poll_waiter`] after each completion, or [`Planner::cancel_wait`].
    pub fn acquire(&mut self, id: BlockId) -> Result<Acquire> {
        match self.count_wait(id)? {
            State::Resident { alloc } => {
                self.n.hits += 1;
                // The hit path: only walk the schedule when the use freed pipeline room.
                if self.mark_used(id.index) {
                    self.pump();
                }
                Ok(Acquire::Ready(alloc.offset))
            }
            State::Loading { demand, .. } => {
                self.b_mut(id.index).waiters += 1;
                if !demand {
                    if let State::Loading { demand, .. } = &mut self.b_mut(id.index).state {
                        *demand = true;
                    }
                    self.commands.push_back(Command::Expedite { block: id });
                }
                Ok(Acquire::Pending)
            }
            State::Host | State::WritingBack { .. } => {
                let b = self.b_mut(id.index);
                b.waiters += 1;
                if !b.pending_demand {
                    b.pending_demand = true;
                    self.pending_demands.push_back(id.index);
                }
                self.pump();
                Ok(Acquire::Pending)
            }
        }
    }

    /// Counts a wait for `id` (and whether the schedule predicted it); returns the block's state.
    pub(super) fn count_wait(&mut self, id: BlockId) -> Result<State> {
        self.sync_schedule();
        let (pos, hinted) = (self.pos, self.hinted);
        let predicted = hinted
            && self.schedule.next_use(id.index, pos, false) == Some(0)
            && self.schedule.len() > 0;
        let b = self.block_mut(id)?;
        // A failed load's error belongs to the waiters registered for it; only with none left is
        // it stale.
        let cleared = b.error_waiters == 0 && b.error.take().is_some();
        let state = b.state;
        if cleared {
            self.touch(id.index);
        }
        self.n.waits += 1;
        self.tick += 1;
        if !predicted {
            self.n.unpredicted += 1;
        }
        Ok(state)
    }

    /// A use whose consumer waits on the device (a stream waiting on the copy's event), not on
    /// the host: if the block is being loaded, it is held now, its copy is moved ahead of the
    /// other prefetches, and its arena offset is returned; the runtime then orders the consumer
    /// after the copy. The host did not block, so it counts as a hit. `None` (nothing counted):
    /// the block is not loading; use [`Planner::acquire`].
    pub fn acquire_in_flight(&mut self, id: BlockId) -> Result<Option<u64>> {
        // Checked first: `count_wait` counts the wait, which only a loading block may get here.
        if !matches!(self.block(id)?.state, State::Loading { .. }) {
            return Ok(None);
        }
        let State::Loading { alloc, demand } = self.count_wait(id)? else {
            return Ok(None);
        };
        self.n.hits += 1;
        if !demand {
            if let State::Loading { demand, .. } = &mut self.b_mut(id.index).state {
                *demand = true;
            }
            self.commands.push_back(Command::Expedite { block: id });
        }
        // Used before its copy finished: `transfer_done` will not see it as an unused
        // prefetch, so its bytes leave the loading count here.
        let b = self.b(id.index);
        if b.prefetched_unused {
            self.loading_bytes -= b.spec.size;
        }
        if self.mark_used(id.index) {
            self.pump();
        }
        Ok(Some(alloc.offset))
    }

    /// For a registered waiter: `Some(Ok(offset))` once the block is on the device (it is then
    /// held), `Some(Err)` if its load failed, `None` to keep waiting.
    pub fn poll_waiter(&mut self, id: BlockId) -> Option<Result<u64>> {
        let b = match self.block_mut(id) {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        if let (Some(e), true) = (b.error.clone(), b.error_waiters > 0) {
            b.waiters = b.waiters.saturating_sub(1);
            b.error_waiters -= 1;
            if b.error_waiters == 0 {
                b.error = None;
                self.touch(id.index);
            }
            return Some(Err(e));
        }
        if let State::Resident { alloc } = b.state {
            b.waiters = b.waiters.saturating_sub(1);
            if self.mark_used(id.index) {
                self.pump();
            }
            return Some(Ok(alloc.offset));
        }
        None
    }

    /// A registered waiter gives up (shutdown, timeout).
    pub fn cancel_wait(&mut self, id: BlockId) {
        if let Ok(b) = self.block_mut(id) {
            b.waiters = b.waiters.saturating_sub(1);
            b.error_waiters = b.error_waiters.min(b.waiters);
            if b.error_waiters == 0 && b.error.take().is_some() {
                self.touch(id.index);
            }
        }
        self.pump();
    }

    /// A load finished (`ok`) or failed. `busy_s` is how long the copy itself took.
    pub fn transfer_done(&mut self, id: BlockId, ok: bool, reason: &str, busy_s: f64) {
        let Ok(b) = self.block_mut(id) else {
            debug_assert!(false, "transfer_done for a dead block");
            return;
        };
        let State::Loading { alloc, .. } = b.state else {
            debug_assert!(false, "transfer_done for a block that was not loading");
            return;
        };
        let size = b.spec.size;
        if b.prefetched_unused {
            self.loading_bytes -= size;
        }
        self.in_flight -= 1;
        if ok {
            let b = self.b_mut(id.index);
            // Not clean here: a consumer waiting on the copy may already have marked it written.
            b.state = State::Resident { alloc };
            b.used_since_load = false;
            self.resident_blocks += 1;
            self.n.bytes_h2d += size;
            self.n.loads += 1;
            self.n.transfer_busy_s += busy_s.max(0.0);
            if busy_s > 0.0 {
                self.bw.add(size, busy_s);
            }
        } else {
            self.pool.free(alloc.region);
            if self.b(id.index).protected {
                // No retry by the joint step placement: a failing link would make it loop.
                self.step_pending = false;
                self.reserved.clear();
            }
            let b = self.b_mut(id.index);
            b.state = State::Host;
            b.load_failed = true;
            if std::mem::take(&mut b.prefetched_unused) {
                self.pipeline_bytes -= size;
            }
            let b = self.b_mut(id.index);
            if b.waiters > 0 {
                b.error = Some(Error::Transfer {
                    block: id,
                    reason: reason.to_string(),
                });
                b.error_waiters = b.waiters;
            }
        }
        self.pump();
    }

    /// A write-back finished (`ok`) or failed. On failure the block stays resident and dirty:
    /// its bytes are never dropped.
    pub fn writeback_done(&mut self, id: BlockId, ok: bool, busy_s: f64) {
        let Ok(b) = self.block_mut(id) else {
            debug_assert!(false, "writeback_done for a dead block");
            return;
        };
        let State::WritingBack { alloc } = b.state else {
            debug_assert!(
                false,
                "writeback_done for a block that was not writing back"
            );
            return;
        };
        let size = b.spec.size;
        self.in_flight -= 1;
        if ok {
            self.pool.free(alloc.region);
            let b = self.b_mut(id.index);
            b.state = State::Host;
            b.dirty = false;
            self.resident_blocks -= 1;
            self.touch(id.index);
            self.n.bytes_d2h += size;
            self.n.writebacks += 1;
            self.n.evictions += 1;
            self.n.transfer_busy_s += busy_s.max(0.0);
        } else {
            let b = self.b_mut(id.index);
            b.state = State::Resident { alloc };
            b.writeback_failed = true;
        }
        self.pump();
    }
}
