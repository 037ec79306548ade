//! Routing hints: what a router chose (or what a predictor guesses) for one occurrence of a
//! routed step, told to the planner before the step runs ([`Planner::hint_choice`]).
//!
//! # The rule
//! A routed candidate is declared with its probability per pass (`k / n`) and is never
//! prefetched on that alone: loading every candidate would move `n / k` times the bytes used. A
//! hint names some of the step's declared candidates, each with the probability that it is
//! really used at the step's coming occurrence (1 for a router's output, the predictor's
//! accuracy for a guess). Until that occurrence ends:
//! - the prefetch walk treats a hinted candidate like a certain use of its step, so it is loaded
//!   in deadline order with everything else (`prefetch.rs`), and the same admission rule applies:
//!   a prefetch never evicts a block needed no later than itself, nor a kept one. A wrong guess
//!   therefore costs its own copy and the ring room it took, nothing already placed for sooner;
//! - the eviction rule sees the hinted occurrence as the candidate's next use (a guess with
//!   probability `p` counts `(1 - p) / p` cycles farther, as a declared use does).
//!
//! "Coming occurrence": the step's occurrence at or after the current position: the current
//! step itself when it is the one being run (a router's output for the step that uses it now),
//! otherwise the first one ahead. A hint lapses when execution moves past that occurrence (the
//! next [`Planner::hint`] of another step, or of the same step again), and when the schedule is
//! re-declared. A new hint for the same step replaces the previous one.
//!
//! # Cost
//! Hints are few at a time (a routed step's `k` experts, for the few steps revealed ahead), so
//! they are one short list: `hint_choice` is O(choices x (hints + step uses)), a lookup
//! O(hints).

use super::Planner;
use crate::block::BlockId;
use crate::{Error, Result};

/// One hinted candidate: the block, at the coming occurrence of position `pos`, with `prob`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ChoiceHint {
    pub(super) pos: usize,
    pub(super) block: u32,
    pub(super) prob: f64,
}

impl Planner {
    /// The router chose (probability 1), or a predictor guesses (probability < 1), these of
    /// `step`'s declared candidates for its coming occurrence (see the module docs of
    /// `choice.rs`). Replaces an earlier hint for the same step; an empty list withdraws it.
    /// Errors: a step that is not declared, a block not declared at it, a probability outside
    /// (0, 1]; nothing changes then.
    pub fn hint_choice(&mut self, step: u64, choices: &[(BlockId, f64)]) -> Result<()> {
        self.sync_schedule();
        let pos = match self.schedule.steps.binary_search(&step) {
            Ok(p) => p,
            Err(_) => return Err(Error::NotACandidate { step, block: None }),
        };
        for &(id, p) in choices {
            self.block(id)?;
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::InvalidProbability(p));
            }
            if !self.schedule.uses[pos].contains(&id.index) {
                return Err(Error::NotACandidate {
                    step,
                    block: Some(id),
                });
            }
        }
        self.choices.retain(|c| c.pos != pos);
        for &(id, prob) in choices {
            match self
                .choices
                .iter_mut()
                .find(|c| c.pos == pos && c.block == id.index)
            {
                Some(c) => c.prob = c.prob.max(prob),
                None => self.choices.push(ChoiceHint {
                    pos,
                    block: id.index,
                    prob,
                }),
            }
        }
        // The walk looks again from the hinted step.
        let len = self.schedule.len() as usize;
        let ahead = (pos + len - self.pos % len) % len; // `pos` was found: len > 0
        self.scan = self.scan.min(ahead);
        self.pump();
        Ok(())
    }

    /// The hinted probability of the block at position `pos`'s coming occurrence, if hinted.
    pub(super) fn choice_p(&self, pos: usize, index: u32) -> Option<f64> {
        self.choices
            .iter()
            .find(|c| c.pos == pos && c.block == index)
            .map(|c| c.prob)
    }

    /// Whether the walk may load the `j`-th use of position `p` ahead: a certain use, or a hinted
    /// candidate.
    pub(super) fn loads_ahead(&self, p: usize, j: usize) -> bool {
        self.schedule.is_certain(p, j) || self.choice_p(p, self.schedule.uses[p][j]).is_some()
    }

    /// Whether the `j`-th use of position `p`, `k` steps ahead, is only a guess (hinted with a
    /// probability below 1, not a certain use) that must not load now. A guess loads only when a
    /// wrong one would delay nothing that is needed: on an idle link (nothing loading, no demand
    /// waiting), and when its copy would finish before its step starts (the measured step times
    /// and bandwidth say so, counted from the start of the current step). At batch 1 an expert's copy outlasts the steps before it, so a
    /// guess there stays a hint for the eviction rule and the copy waits for the real choice:
    /// in a copy-bound pass a wrong guess's copy is time lost, a right one's saves none.
    pub(super) fn guess_waits(&self, p: usize, j: usize, k: usize) -> bool {
        if self.schedule.is_certain(p, j) {
            return false;
        }
        let i = self.schedule.uses[p][j];
        if !self.choice_p(p, i).is_some_and(|q| q < 1.0) {
            return false;
        }
        let busy = self.loading_bytes > 0 || !self.pending_demands.is_empty();
        let copy = self.copy_time(self.b(i).spec.size);
        let until = self.schedule.time_ahead(self.pos, k);
        busy || !(copy.is_finite() && until.is_finite() && copy <= until)
    }

    /// Expected steps to the block's hinted use, if it has one still to come.
    pub(super) fn hinted_distance(&self, index: u32) -> Option<u64> {
        let len = self.schedule.len() as usize;
        if len == 0 {
            return None;
        }
        let used_now = self.hinted && self.b(index).last_use_epoch == self.epoch;
        self.choices
            .iter()
            .filter(|c| c.block == index && !(used_now && c.pos == self.pos))
            .map(|c| {
                let d = ((c.pos + len - self.pos) % len) as u64;
                let extra = (len as f64 * (1.0 - c.prob) / c.prob).min(1e15) as u64;
                d.saturating_add(extra)
            })
            .min()
    }

    /// Execution moved from position `old` by `moved` positions (0: the same step again): the
    /// hints for the occurrences it passed lapse. `ran`: the step at `old` did run (it was
    /// hinted and declared); if not (the first hint, or one of an undeclared step), a hint
    /// for it is for an occurrence still to come and stays.
    pub(super) fn lapse_choices(&mut self, old: usize, moved: usize, len: usize, ran: bool) {
        if self.choices.is_empty() || len == 0 {
            return;
        }
        self.choices.retain(|c| {
            let d = (c.pos + len - old) % len;
            let passed = if d == 0 { ran } else { d < moved };
            !passed
        });
    }

    /// A block leaves: its hints go (its slot may be reused by another block).
    pub(super) fn forget_choices(&mut self, index: u32) {
        self.choices.retain(|c| c.block != index);
        if self.waiting_guess.is_some() && self.choices.is_empty() {
            self.waiting_guess = None;
        }
    }
}
