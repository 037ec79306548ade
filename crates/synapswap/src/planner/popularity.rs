//! Learned popularity: how often each routed candidate is really used at its step, learned from
//! the uses themselves, so that skewed and correlated routing is exploited without anyone
//! declaring it.
//!
//! # What is learned
//! For every declared use with a probability below 1 (a routed candidate at a step), at the end
//! of each occurrence of its step: was the block used there (acquired during the step)? Two
//! estimates of the probability of that use per pass follow from the answers:
//! - **long-run** (the expert's popularity): a running mean with a prior of
//!   [`PRIOR_OBSERVATIONS`] observations of the declared probability, then, once prior and
//!   observations reach [`LONG_WINDOW`], an EMA over that many. The keep plan reads it once it differs
//!   from the declared probability by more than chance explains (`Learned::plan_p`): a candidate's
//!   expected uses per cycle, and what it streams, are the learned figures (`placement.rs`,
//!   `Planner::replan`), so the plan keeps the popular experts;
//! - **recent**: an EMA with weight [`RECENT_ALPHA`] on the last occurrence (consecutive tokens
//!   repeat experts). The eviction rule reads the larger of the two
//!   ([`Schedule::expected_next_use`]), so an expert used a pass ago outranks one that was not.
//!
//! The plan's stability does not suffer: learned figures enter the keep plan as measurements do
//! (the plan's shape, which decides whether its hysteresis applies, sees only whether a use is
//! certain), and plans are remade only at the reviews (after 1, 2, 4, ... 64 passes, then every
//! 64: `Planner::pass_ended`).
//!
//! # Cost
//! O(uncertain uses of the step, times log uses of each block) at each hint; nothing for a model
//! without routed steps.

use super::schedule::Schedule;
use super::Planner;

/// Observations of the declared probability the long-run estimate starts from.
pub(super) const PRIOR_OBSERVATIONS: f64 = 2.0;
/// Observations after which the long-run mean becomes an EMA over as many.
pub(super) const LONG_WINDOW: f64 = 32.0;
/// How many standard deviations from the declared probability a learned one must be to count.
pub(super) const SIGNIFICANT_SIGMAS: f64 = 3.0;
/// Weight of the last occurrence in the recent estimate.
pub(super) const RECENT_ALPHA: f64 = 0.5;

/// What is learned of one routed use (one block at one position).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Learned {
    /// Long-run probability of use per pass.
    pub(super) long: f64,
    /// Recent probability of use per pass.
    pub(super) recent: f64,
    /// Occurrences observed.
    pub(super) seen: f64,
}

impl Learned {
    /// Nothing observed yet: the declared probability.
    pub(super) fn declared(p: f64) -> Learned {
        Learned {
            long: p,
            recent: p,
            seen: 0.0,
        }
    }

    /// Folds one occurrence in.
    pub(super) fn observe(&mut self, declared: f64, used: bool) {
        let x = if used { 1.0 } else { 0.0 };
        self.seen += 1.0;
        let weight = 1.0 / (self.seen + PRIOR_OBSERVATIONS).min(LONG_WINDOW);
        if self.seen == 1.0 {
            self.long = declared;
        }
        self.long += weight * (x - self.long);
        self.recent += RECENT_ALPHA * (x - self.recent);
    }

    /// The long-run probability the keep plan reads: the declared one while the difference is
    /// within what chance explains ([`SIGNIFICANT_SIGMAS`] standard deviations of a rate
    /// measured over that many observations), so uniform routing does not make plans churn on
    /// noise.
    pub(super) fn plan_p(&self, declared: f64) -> f64 {
        let n = (self.seen + PRIOR_OBSERVATIONS).min(LONG_WINDOW);
        let sigma = (declared * (1.0 - declared) / n).sqrt();
        if (self.long - declared).abs() <= SIGNIFICANT_SIGMAS * sigma {
            declared
        } else {
            self.long
        }
    }

    /// The probability the eviction rule ranks by.
    pub(super) fn eviction_p(&self) -> f64 {
        self.long.max(self.recent)
    }
}

impl Schedule {
    /// The long-run probability of `block`'s use at `pos` (its declared one when certain or
    /// not routed). O(log uses of the block).
    pub(super) fn learned_p(&self, block: u32, pos: usize) -> Option<f64> {
        let b = block as usize;
        let k = self.positions.get(b)?.binary_search(&(pos as u32)).ok()?;
        Some(self.plan_p_at(b, k))
    }

    /// The block's expected uses per cycle as the keep plan counts them: [`Self::learned_p`]
    /// summed over its uses. O(uses of the block).
    pub(super) fn learned_uses(&self, block: u32) -> f64 {
        let b = block as usize;
        (0..self.positions.get(b).map_or(0, Vec::len))
            .map(|k| self.plan_p_at(b, k))
            .sum()
    }

    /// The keep plan's probability of the block's `k`-th use (in `positions` order).
    fn plan_p_at(&self, b: usize, k: usize) -> f64 {
        let declared = self.pos_probs[b][k];
        if declared >= 1.0 {
            1.0
        } else {
            self.pos_learned[b][k].plan_p(declared)
        }
    }
}

impl Planner {
    /// The step at `pos` ends: each of its routed candidates was used in it or not.
    pub(super) fn learn_step(&mut self, pos: usize) {
        let Some(uses) = self.schedule.uses.get(pos) else {
            return;
        };
        for (j, &i) in uses.iter().enumerate() {
            let declared = self.schedule.probs[pos][j];
            if declared >= 1.0 {
                continue;
            }
            let used = self.slots[i as usize]
                .block
                .as_ref()
                .is_some_and(|b| b.last_use_epoch == self.epoch);
            let b = i as usize;
            if let Ok(k) = self.schedule.positions[b].binary_search(&(pos as u32)) {
                self.schedule.pos_learned[b][k].observe(declared, used);
            }
        }
    }
}
