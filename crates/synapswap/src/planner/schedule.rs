//! The declared schedule and its next-use index: which step uses which block (with a probability
//! per pass), where execution is in the cycle, how many steps until each block's next use, and the
//! smoothed step durations, with Fenwick prefix sums over them so that the time from now to any
//! step costs O(log steps).

use std::collections::BTreeMap;

use super::popularity::Learned;
use super::Planner;
use crate::block::BlockId;
use crate::{Error, Result};

/// Smoothing factor of the step-duration and bandwidth EMAs.
pub(super) const EMA_ALPHA: f64 = 0.3;

/// The declared cyclic schedule and its next-use index.
#[derive(Debug, Clone, Default)]
pub(super) struct Schedule {
    /// step -> (block, probability of use per pass)
    pub(super) declared: BTreeMap<u64, Vec<(u32, f64)>>,
    pub(super) stale: bool,
    pub(super) steps: Vec<u64>,
    pub(super) uses: Vec<Vec<u32>>,
    pub(super) probs: Vec<Vec<f64>>,
    pub(super) positions: Vec<Vec<u32>>, // by block index: sorted positions
    pub(super) pos_probs: Vec<Vec<f64>>, // by block index: probability at each of `positions`
    /// By block index, at each of `positions`: what its uses taught (`popularity.rs`).
    pub(super) pos_learned: Vec<Vec<Learned>>,
    pub(super) ema_dur: Vec<Option<f64>>, // by position; None until measured
    /// By position: step duration minus the time its caller stalled (the step's own work).
    pub(super) ema_compute: Vec<Option<f64>>,
    /// How many positions of `ema_compute` are measured (O(1) "all measured").
    pub(super) measured: usize,
    /// Prefix sums over `ema_dur` (measured seconds, and a count of unmeasured positions), so
    /// the prefetch walk gets the time to any step in O(log steps).
    pub(super) dur_sums: Fenwick,
    pub(super) unmeasured: Fenwick,
}

impl Schedule {
    /// Rebuilds the index if the declarations changed; returns whether it did.
    pub(super) fn rebuild(&mut self, slots: usize) -> bool {
        if !self.stale {
            return false;
        }
        self.stale = false;
        self.steps = self.declared.keys().copied().collect();
        self.uses = self
            .declared
            .values()
            .map(|v| v.iter().map(|&(b, _)| b).collect())
            .collect();
        self.probs = self
            .declared
            .values()
            .map(|v| v.iter().map(|&(_, p)| p).collect())
            .collect();
        self.positions = vec![Vec::new(); slots];
        self.pos_probs = vec![Vec::new(); slots];
        self.pos_learned = vec![Vec::new(); slots];
        for (pos, blocks) in self.declared.values().enumerate() {
            for &(b, p) in blocks {
                self.positions[b as usize].push(pos as u32);
                self.pos_probs[b as usize].push(p);
                self.pos_learned[b as usize].push(Learned::declared(p));
            }
        }
        self.ema_dur = vec![None; self.steps.len()];
        self.ema_compute = vec![None; self.steps.len()];
        self.measured = 0;
        self.dur_sums = Fenwick::new(std::iter::repeat_n(0.0, self.steps.len()));
        self.unmeasured = Fenwick::new(std::iter::repeat_n(1.0, self.steps.len()));
        true
    }

    /// Adds the use of `block` at `step` to the built index, or updates its probability, without
    /// a rebuild: O(step blocks + uses of the block). Only a step that is already a position can
    /// be edited so; returns false when the index must be rebuilt instead (a new step, or an
    /// index already stale). The result equals what [`Schedule::rebuild`] would build from
    /// `declared` (a use is appended to its step, as `declared` appends it), and the measured
    /// step durations stay: the steps did not change.
    pub(super) fn edit_use(&mut self, step: u64, block: u32, p: f64) -> bool {
        if self.stale || (block as usize) >= self.positions.len() {
            return false;
        }
        let Ok(pos) = self.steps.binary_search(&step) else {
            return false;
        };
        let b = block as usize;
        match self.positions[b].binary_search(&(pos as u32)) {
            Ok(k) => {
                if self.pos_probs[b][k] != p {
                    self.pos_learned[b][k] = Learned::declared(p);
                }
                self.pos_probs[b][k] = p;
                match self.uses[pos].iter().position(|&x| x == block) {
                    Some(j) => self.probs[pos][j] = p,
                    None => return false,
                }
            }
            Err(k) => {
                self.positions[b].insert(k, pos as u32);
                self.pos_probs[b].insert(k, p);
                self.pos_learned[b].insert(k, Learned::declared(p));
                self.uses[pos].push(block);
                self.probs[pos].push(p);
            }
        }
        true
    }

    /// Removes every use of `block` from the built index without a rebuild: O(uses of the block
    /// x step blocks). Returns false when the index must be rebuilt instead (it is stale). A step
    /// left with no uses stays in the index, empty, until the next rebuild (dropping it would
    /// shift every position, and with them the measured step times): freeing a model's blocks
    /// one by one costs no rebuild and no replan.
    pub(super) fn remove_uses(&mut self, block: u32) -> bool {
        if self.stale {
            return false;
        }
        let Some(ps) = self.positions.get(block as usize) else {
            return true;
        };
        for &p in ps {
            let (uses, probs) = (&mut self.uses[p as usize], &mut self.probs[p as usize]);
            if let Some(j) = uses.iter().position(|&x| x == block) {
                uses.remove(j);
                probs.remove(j);
            }
        }
        self.positions[block as usize].clear();
        self.pos_probs[block as usize].clear();
        self.pos_learned[block as usize].clear();
        true
    }

    /// Declared uses over all positions (of the built index).
    pub(super) fn total_uses(&self) -> usize {
        self.uses.iter().map(Vec::len).sum()
    }

    /// Folds a measured duration of the step at `pos` into its EMA.
    pub(super) fn measure_duration(&mut self, pos: usize, seconds: f64) {
        let Some(d) = self.ema_dur.get_mut(pos) else {
            return;
        };
        let old = *d;
        let new = match old {
            None => seconds,
            Some(old) => EMA_ALPHA * seconds + (1.0 - EMA_ALPHA) * old,
        };
        *d = Some(new);
        self.dur_sums.add(pos, new - old.unwrap_or(0.0));
        if old.is_none() {
            self.unmeasured.add(pos, -1.0);
        }
    }

    /// Expected seconds from the start of the step at `pos` to the start of the one `k` steps
    /// later (infinite while one of them is unmeasured). O(log steps).
    pub(super) fn time_ahead(&self, pos: usize, k: usize) -> f64 {
        if k == 0 {
            return 0.0;
        }
        if self.unmeasured.cyclic(pos, k) > 0.5 {
            f64::INFINITY
        } else {
            self.dur_sums.cyclic(pos, k)
        }
    }

    pub(super) fn len(&self) -> u64 {
        self.steps.len() as u64
    }

    /// Position of the first declared step at or after `step`, wrapping to the first.
    pub(super) fn position_of(&self, step: u64) -> usize {
        match self.steps.binary_search(&step) {
            Ok(p) => p,
            Err(p) if p < self.steps.len() => p,
            Err(_) => 0,
        }
    }

    /// Steps from `pos` to the block's next declared use and that use's probability; `after`
    /// skips a use at `pos` itself.
    pub(super) fn next_use_p(&self, block: u32, pos: usize, after: bool) -> Option<(u64, f64)> {
        let (d, k) = self.next_use_at(block, pos, after)?;
        Some((d, self.pos_probs[block as usize][k]))
    }

    /// Steps from `pos` to the block's next declared use, and that use's index in the block's
    /// `positions`; `after` skips a use at `pos` itself.
    fn next_use_at(&self, block: u32, pos: usize, after: bool) -> Option<(u64, usize)> {
        let ps = self.positions.get(block as usize)?;
        let first = *ps.first()?;
        let pos = pos as u32;
        let i = ps.partition_point(|&p| if after { p <= pos } else { p < pos });
        Some(match ps.get(i) {
            Some(&p) => (u64::from(p - pos), i),
            None => (u64::from(first) + self.len() - u64::from(pos), 0),
        })
    }

    /// Steps to the next declared use, whatever its probability.
    pub(super) fn next_use(&self, block: u32, pos: usize, after: bool) -> Option<u64> {
        self.next_use_p(block, pos, after).map(|(d, _)| d)
    }

    /// Expected steps to the next use: a use that happens with probability `p` per pass is, on
    /// average, `(1 - p) / p` cycles farther away than its declared step. For a routed use `p`
    /// is what its uses taught (`popularity.rs`: the larger of its long-run and recent rates).
    pub(super) fn expected_next_use(&self, block: u32, pos: usize, after: bool) -> Option<u64> {
        let (d, k) = self.next_use_at(block, pos, after)?;
        let b = block as usize;
        if self.pos_probs[b][k] >= 1.0 {
            return Some(d);
        }
        let p = self.pos_learned[b][k].eviction_p();
        let extra = (self.len() as f64 * (1.0 - p) / p.max(1e-6)).min(1e15) as u64;
        Some(d.saturating_add(extra))
    }

    pub(super) fn is_certain(&self, pos: usize, j: usize) -> bool {
        self.probs[pos][j] >= 1.0
    }
}

/// A Fenwick (binary indexed) tree: point add and prefix sum in O(log n).
#[derive(Debug, Clone, Default)]
pub(super) struct Fenwick(Vec<f64>);

impl Fenwick {
    pub(super) fn new(values: impl ExactSizeIterator<Item = f64>) -> Fenwick {
        let mut t = Fenwick(vec![0.0; values.len()]);
        for (i, v) in values.enumerate() {
            t.add(i, v);
        }
        t
    }

    pub(super) fn add(&mut self, i: usize, delta: f64) {
        let mut k = i + 1;
        while k <= self.0.len() {
            self.0[k - 1] += delta;
            k += k & k.wrapping_neg();
        }
    }

    /// Sum of positions `0..end`.
    pub(super) fn prefix(&self, end: usize) -> f64 {
        let (mut k, mut sum) = (end.min(self.0.len()), 0.0);
        while k > 0 {
            sum += self.0[k - 1];
            k &= k - 1;
        }
        sum
    }

    /// Sum of the cyclic range of `count` positions from `start` (`count <= len`).
    pub(super) fn cyclic(&self, start: usize, count: usize) -> f64 {
        let len = self.0.len();
        if start + count <= len {
            self.prefix(start + count) - self.prefix(start)
        } else {
            self.prefix(len) - self.prefix(start) + self.prefix(start + count - len)
        }
    }
}

impl Planner {
    /// Rebuilds the schedule's index if the declarations changed, and re-derives the current
    /// position from the last hinted step: positions index the old schedule's arrays.
    pub(super) fn sync_schedule(&mut self) {
        if self.schedule.rebuild(self.slots.len()) {
            self.pos = match (self.last_step, self.schedule.len()) {
                (_, 0) | (None, _) => 0,
                (Some(step), _) => self.schedule.position_of(step),
            };
            // The step-duration history and the routing hints belong to the old positions.
            self.last_hint = None;
            self.choices.clear();
            self.waiting_guess = None;
            self.scan = 0;
        }
    }

    /// Declares that `step` uses `block`. Steps run in ascending order, cyclically.
    pub fn declare(&mut self, step: u64, id: BlockId) -> Result<()> {
        self.declare_p(step, id, 1.0)
    }

    /// Declares that `step` may use `block`, with `probability` per pass (a routed expert:
    /// `k / n`). Such a use is not prefetched on that alone (loading every candidate would move
    /// `n / k` times the bytes used): it is loaded when waited for, or ahead once a routing hint
    /// names it ([`Planner::hint_choice`]), and its expected next use ranks it for eviction.
    /// Declaring the same use again updates its probability.
    pub fn declare_p(&mut self, step: u64, id: BlockId, probability: f64) -> Result<()> {
        self.block(id)?;
        if !(probability > 0.0 && probability <= 1.0) {
            return Err(Error::InvalidProbability(probability));
        }
        let size = self.block(id)?.spec.size;
        let blocks = self.schedule.declared.entry(step).or_default();
        match blocks.iter_mut().find(|(i, _)| *i == id.index) {
            Some((_, p)) if *p == probability => return Ok(()),
            Some((_, p)) => *p = probability,
            None => blocks.push((id.index, probability)),
        }
        if self.schedule.edit_use(step, id.index, probability) {
            // A use added to (or changed in) a step that exists: the index is edited in place,
            // the measured step times stay, and the keep plan is remade once enough has changed
            // (`Planner::plan_changed`). The prefetch walk looks at the schedule afresh.
            self.plan_changed(size);
            self.scan = 0;
        } else {
            self.schedule.stale = true;
            self.plan_stale = true;
            self.plan_timed = false;
        }
        Ok(())
    }

    /// Forgets the whole declared schedule (blocks stay).
    pub fn clear_schedule(&mut self) {
        self.schedule.declared.clear();
        self.schedule.stale = true;
        self.plan_stale = true;
        self.plan_timed = false;
    }

    /// Number of declared steps in one cycle.
    pub fn schedule_len(&mut self) -> u64 {
        self.sync_schedule();
        self.schedule.len()
    }
}
