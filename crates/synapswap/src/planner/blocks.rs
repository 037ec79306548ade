//! The block table: each block's state and flags, the slots that give a [`BlockId`] its index and
//! generation (a removed block's handle goes stale, its slot is reused), the lookups, and the
//! queries the runtime makes about one block.
//!
//! # Holds
//! A held block stays where it is: it is never a victim, never moved by the joint step
//! placement, and a placement that needs its room waits or fails. Holds are counted in one place,
//! here: a block's count is private to this file and changes only through [`Block::take_hold`]
//! (a use, [`Planner::hold`], [`Planner::hold_again`]) and [`Block::drop_hold`]
//! ([`Planner::unhold`]); the holds whose release waits for a fence on the caller's stream are
//! counted by [`DeferredReleases`] ([`Planner::defer_release`]). Everything else reads
//! [`Block::is_held`] and [`DeferredReleases::any`].

use super::Planner;
use crate::block::{BlockId, BlockSpec, Policy, Residency};
use crate::pool::{granules, Allocation, GRANULE};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum State {
    Host,
    Loading { alloc: Allocation, demand: bool },
    Resident { alloc: Allocation },
    WritingBack { alloc: Allocation },
}

#[derive(Debug, Clone)]
pub(super) struct Block {
    pub(super) spec: BlockSpec,
    pub(super) state: State,
    /// Private: changed only by `take_hold` and `drop_hold` (see the module docs, "Holds").
    holds: u32,
    pub(super) waiters: u32,
    pub(super) protected: bool,
    pub(super) dirty: bool,
    pub(super) used_since_load: bool,
    pub(super) prefetched_unused: bool,
    pub(super) pending_demand: bool,
    pub(super) last_use_tick: u64,
    pub(super) last_use_epoch: u64,
    pub(super) error: Option<Error>,
    /// How many of the registered waiters `error` is for: those present when the load failed.
    /// A waiter that came later waits for the retry its own wait started.
    pub(super) error_waiters: u32,
    /// Its last write-back failed: not a victim again until it is used (so a failing link makes
    /// the placement that needed the room fail, instead of retrying the write-back forever).
    pub(super) writeback_failed: bool,
    /// Its last load failed: not prefetched again until it is used (a link that keeps failing
    /// must not make prefetch place and fail the same block forever).
    pub(super) load_failed: bool,
}

impl Block {
    /// Whether anything holds the block (a use not yet released, or the runtime's own hold).
    pub(super) fn is_held(&self) -> bool {
        self.holds > 0
    }

    /// One more hold.
    pub(super) fn take_hold(&mut self) {
        self.holds += 1;
    }

    /// One hold less (none left: no change).
    pub(super) fn drop_hold(&mut self) {
        self.holds = self.holds.saturating_sub(1);
    }
}

/// Holds whose stream-ordered release is waiting for its fence: room that will come back.
/// Counted only by [`Planner::defer_release`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DeferredReleases(u32);

impl DeferredReleases {
    /// Whether any release is still waiting for its fence.
    pub(super) fn any(&self) -> bool {
        self.0 > 0
    }
}

#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) generation: u32,
    pub(super) block: Option<Block>,
}

impl Planner {
    pub(super) fn block(&self, id: BlockId) -> Result<&Block> {
        let slot = self
            .slots
            .get(id.index as usize)
            .ok_or(Error::UnknownBlock(id))?;
        if slot.generation != id.generation {
            return Err(if id.generation < slot.generation {
                Error::StaleBlock(id)
            } else {
                Error::UnknownBlock(id)
            });
        }
        slot.block.as_ref().ok_or(Error::StaleBlock(id))
    }

    pub(super) fn block_mut(&mut self, id: BlockId) -> Result<&mut Block> {
        self.block(id)?;
        Ok(self.slots[id.index as usize]
            .block
            .as_mut()
            .expect("checked by block()"))
    }

    pub(super) fn b(&self, index: u32) -> &Block {
        self.slots[index as usize]
            .block
            .as_ref()
            .expect("index of a live block")
    }

    pub(super) fn b_mut(&mut self, index: u32) -> &mut Block {
        self.slots[index as usize]
            .block
            .as_mut()
            .expect("index of a live block")
    }

    pub(super) fn id_of(&self, index: u32) -> BlockId {
        BlockId {
            index,
            generation: self.slots[index as usize].generation,
        }
    }

    /// The live block at `index`, if any.
    pub(crate) fn id_at(&self, index: u32) -> Option<BlockId> {
        let slot = self.slots.get(index as usize)?;
        slot.block.as_ref()?;
        Some(BlockId {
            index,
            generation: slot.generation,
        })
    }

    /// Registers a block (its host copy is the driver's business).
    pub fn add_block(&mut self, spec: BlockSpec) -> Result<BlockId> {
        self.validate(&spec)?;
        if spec.policy == Policy::Pinned {
            self.pinned_bytes += granules(spec.size) * GRANULE;
        }
        self.host_bytes += spec.size;
        self.live_blocks += 1;
        let block = Block {
            spec,
            state: State::Host,
            holds: 0,
            waiters: 0,
            protected: false,
            dirty: false,
            used_since_load: false,
            prefetched_unused: false,
            pending_demand: false,
            last_use_tick: self.tick,
            last_use_epoch: u64::MAX,
            error: None,
            error_waiters: 0,
            writeback_failed: false,
            load_failed: false,
        };
        let index = if let Some(i) = self.free_slots.pop() {
            let slot = &mut self.slots[i as usize];
            slot.generation = slot.generation.wrapping_add(1);
            slot.block = Some(block);
            i
        } else {
            self.slots.push(Slot {
                generation: 0,
                block: Some(block),
            });
            (self.slots.len() - 1) as u32
        };
        if self.schedule.positions.len() < self.slots.len() {
            self.schedule.positions.resize(self.slots.len(), Vec::new());
            self.schedule.pos_probs.resize(self.slots.len(), Vec::new());
            self.schedule
                .pos_learned
                .resize(self.slots.len(), Vec::new());
        }
        // A block with no declared use is no candidate of the keep plan: only a pinned one
        // changes it (pinned homes are packed first).
        if self.slots[index as usize]
            .block
            .as_ref()
            .is_some_and(|b| b.spec.policy == Policy::Pinned)
        {
            self.plan_stale = true;
        }
        Ok(self.id_of(index))
    }

    /// The block's spec.
    pub fn spec(&self, id: BlockId) -> Result<&BlockSpec> {
        Ok(&self.block(id)?.spec)
    }

    /// Whether anything holds the block: a use not yet released (a guard, an `acquire`, a
    /// stream-ordered release still waiting for its fence), or the runtime's own hold.
    pub fn is_held(&self, id: BlockId) -> Result<bool> {
        Ok(self.block(id)?.is_held())
    }

    /// Where the block is.
    pub fn residency(&self, id: BlockId) -> Result<Residency> {
        Ok(match self.block(id)?.state {
            State::Host => Residency::Host,
            State::Loading { .. } => Residency::Loading,
            State::Resident { .. } => Residency::Resident,
            State::WritingBack { .. } => Residency::WritingBack,
        })
    }

    /// The block's device offset if it is resident.
    pub fn device_offset(&self, id: BlockId) -> Result<Option<u64>> {
        Ok(match self.block(id)?.state {
            State::Resident { alloc } => Some(alloc.offset),
            _ => None,
        })
    }

    /// Whether a resident mutable block holds bytes newer than its host copy.
    pub fn is_dirty(&self, id: BlockId) -> Result<bool> {
        Ok(self.block(id)?.dirty)
    }

    /// Whether the block is held by a guard or waited for.
    pub fn is_busy(&self, id: BlockId) -> Result<bool> {
        let b = self.block(id)?;
        Ok(b.is_held() || b.waiters > 0)
    }

    /// Records that a held mutable block's device bytes were written (a kernel or
    /// [`crate::Guard::write_device`]): it is written back before it leaves the device. Only a
    /// written block is dirty; a use alone is not.
    pub fn mark_dirty(&mut self, id: BlockId) -> Result<()> {
        let b = self.block_mut(id)?;
        if !b.spec.mutable {
            return Err(Error::NotMutable(id));
        }
        // Loading: held by a consumer whose stream waits on the copy (`acquire_in_flight`).
        if !matches!(b.state, State::Resident { .. } | State::Loading { .. }) || !b.is_held() {
            return Err(Error::NotHeld(id));
        }
        b.dirty = true;
        Ok(())
    }

    /// Blocks on the device whose bytes are newer than their host copy (resident, or with a
    /// write-back not finished): (block, arena offset, size). Shutdown writes them back into
    /// caller-owned buffers.
    pub fn dirty_resident(&self) -> Vec<(BlockId, u64, u64)> {
        let mut v = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(b) = &slot.block {
                if let (true, State::Resident { alloc } | State::WritingBack { alloc }) =
                    (b.dirty, b.state)
                {
                    v.push((self.id_of(i as u32), alloc.offset, b.spec.size));
                }
            }
        }
        v
    }

    /// Removes a block. It must not be held, waited for, or in transfer.
    pub fn remove_block(&mut self, id: BlockId) -> Result<()> {
        let b = self.block(id)?;
        if b.is_held() || b.waiters > 0 {
            return Err(Error::BlockInUse(id));
        }
        if matches!(b.state, State::Loading { .. } | State::WritingBack { .. }) {
            return Err(Error::BlockInUse(id));
        }
        let slot = &mut self.slots[id.index as usize];
        let b = slot.block.take().expect("checked above");
        if let State::Resident { alloc } = b.state {
            self.pool.free(alloc.region);
            self.resident_blocks -= 1;
        }
        if b.spec.policy == Policy::Pinned {
            self.pinned_bytes -= granules(b.spec.size) * GRANULE;
        }
        if b.prefetched_unused {
            self.pipeline_bytes -= b.spec.size;
        }
        self.host_bytes -= b.spec.size;
        self.live_blocks -= 1;
        self.free_slots.push(id.index);
        self.protected.retain(|&i| i != id.index);
        self.reserved.retain(|&(i, _)| i != id.index);
        self.pending_demands.retain(|&i| i != id.index);
        self.forget_choices(id.index);
        // Its declared uses, found through the (synced) next-use index: O(its uses x step size),
        // not a walk of the schedule.
        self.sync_schedule();
        let steps: Vec<u64> = self.schedule.positions[id.index as usize]
            .iter()
            .map(|&p| self.schedule.steps[p as usize])
            .collect();
        let declared = !steps.is_empty();
        for step in steps {
            if let Some(blocks) = self.schedule.declared.get_mut(&step) {
                blocks.retain(|&(i, _)| i != id.index);
                if blocks.is_empty() {
                    self.schedule.declared.remove(&step);
                }
            }
        }
        // The plan forgets the block now (its home is free room); remade from scratch only when
        // the steps themselves changed, a pinned block left, or enough has changed since.
        self.drop_from_plan(id.index, b.spec.size);
        if declared && !self.schedule.remove_uses(id.index) {
            self.schedule.stale = true;
            self.plan_stale = true;
        } else if b.spec.policy == Policy::Pinned {
            self.plan_stale = true;
        } else if declared {
            self.plan_changed(b.spec.size);
        }
        self.pump();
        Ok(())
    }
}

// Holds: every change to a hold count is made here (see the module docs, "Holds").
impl Planner {
    /// Takes a hold that is not a use (the runtime copying bytes of a resident block outside its
    /// lock): the block cannot be evicted until [`Planner::unhold`].
    pub fn hold(&mut self, id: BlockId) -> Result<()> {
        self.block_mut(id)?.take_hold();
        Ok(())
    }

    /// One more hold on a block that is held already (a second owner of the same use, such as
    /// a DLPack export of a held view): not a wait, so no statistic counts it. Returns the
    /// block's device offset; [`Error::NotHeld`] if nothing holds it. It is [`Planner::hold`]
    /// behind the check that the block is resident and held, which `hold` does not make.
    pub fn hold_again(&mut self, id: BlockId) -> Result<u64> {
        let b = self.block(id)?;
        let offset = match b.state {
            State::Resident { alloc } if b.is_held() => alloc.offset,
            _ => return Err(Error::NotHeld(id)),
        };
        self.hold(id)?;
        Ok(offset)
    }

    /// Drops one hold taken by `acquire`/`poll_waiter`. A released hold can only matter to a
    /// placement that was refused for lack of room, so only then is the schedule walked again;
    /// and when the prefetch walk knows which block stopped it, only that block's release.
    pub fn unhold(&mut self, id: BlockId) {
        if let Ok(b) = self.block_mut(id) {
            b.drop_hold();
        }
        let walk = self.space_blocked && self.blocker.is_none_or(|i| i == id.index);
        if walk || self.step_pending || !self.pending_demands.is_empty() {
            self.pump();
        }
    }

    /// A hold's release now waits for a fence on the caller's stream (`true`), or that fence
    /// completed and the hold is about to be dropped with [`Planner::unhold`] (`false`). While
    /// such releases are pending, a demand load that finds no room waits instead of failing.
    pub fn defer_release(&mut self, pending: bool) {
        let n = &mut self.deferred_releases.0;
        if pending {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
    }
}
