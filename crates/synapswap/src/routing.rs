//! Routed draws: which experts each routed step of a workload uses in each pass, and what the
//! engine is told of them ahead of time. The simulator (every policy, the oracle included) and
//! `synapswap run` read the same draws from the same seed.
//!
//! # The draw (one routed step, one pass)
//! `k` candidates without replacement. Each of the `k` picks, in turn:
//! - with probability `repeat`, one of the step's choices in the previous pass that is not
//!   picked yet, uniformly (consecutive tokens reuse experts);
//! - otherwise a candidate not picked yet, in proportion to its `popularity` weight.
//!
//! Without `popularity` and with no repeat the draw is a uniform `k`-subset by a partial
//! Fisher-Yates shuffle (the draw of workloads written before these fields, kept so that their
//! figures stand); explicit equal weights draw uniformly too, by the weighted rule.
//! Every pick comes from SplitMix64 ([`crate::pattern::seed`]) of the seed, the pass and the step,
//! so a pass's draw depends only on those and the previous pass's draw.
//!
//! # The reveal
//! `known_ahead` steps before the step (0: at the step itself, a router's output), the driver
//! tells the engine the draw with [`crate::Engine::hint_choice`]. Each revealed expert is the
//! right one with probability `accuracy`; otherwise another candidate (not in the draw, not
//! revealed yet, uniformly) is revealed in its place. Each is revealed with `accuracy` as its
//! probability. `known_ahead` is below the number of steps, so a reveal is for the step's next
//! occurrence: the one [`crate::Engine::hint_choice`] refers to.

use std::collections::VecDeque;

use crate::pattern::seed as mix;
use crate::workload::{Resolved, Routing};
use crate::BlockId;

/// What the driver tells the engine before one step: `step`'s draw (or guesses), as
/// `(block, probability)` pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct Reveal {
    /// The routed step revealed.
    pub step: usize,
    /// Its candidates' blocks, each with the probability that it is right.
    pub blocks: Vec<(usize, f64)>,
}

/// The draws of a workload, pass by pass (see the module docs). Passes are drawn in order
/// and the last few are kept, so memory does not grow with the passes.
#[derive(Debug, Clone)]
pub struct Draws<'a> {
    resolved: &'a Resolved,
    /// (pass, per step: the experts chosen), oldest first.
    passes: VecDeque<(u64, Vec<Vec<usize>>)>,
    /// Per step: the routed steps whose draw is revealed right after its hint (`known_ahead`
    /// steps before them, cyclically), so a reveal costs what it tells, not a walk of the steps.
    reveal_at: Vec<Vec<usize>>,
    /// Scratch of [`Draws::tell`].
    revealed: Vec<Reveal>,
    told: Vec<(BlockId, f64)>,
}

/// Passes kept: the current, the next (reveals reach into it) and the previous (repeats).
const KEPT_PASSES: usize = 3;

/// The random stream of one step of one pass: SplitMix64 of the seed, the pass, the step and a
/// salt (0 for the draw, another for the guesses), so each is independent of the others.
struct Stream(u64);

/// The salt of the guesses' stream.
const GUESS_SALT: u64 = 0x6775_6573;

impl Stream {
    fn new(seed: u64, pass: u64, step: usize, salt: u64) -> Stream {
        Stream(mix(seed
            ^ mix(pass.wrapping_mul(0x1_0000_0001) ^ step as u64)
            ^ salt))
    }

    fn next(&mut self) -> u64 {
        self.0 = mix(self.0);
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

impl<'a> Draws<'a> {
    /// No pass drawn yet.
    pub fn new(resolved: &'a Resolved) -> Draws<'a> {
        let len = resolved.steps.len();
        let mut reveal_at = vec![Vec::new(); len];
        for (t, st) in resolved.steps.iter().enumerate() {
            if let Some(r) = &st.choose {
                // known_ahead < len (checked when resolved).
                reveal_at[(t + len - r.known_ahead % len) % len].push(t);
            }
        }
        Draws {
            resolved,
            passes: VecDeque::new(),
            reveal_at,
            revealed: Vec::new(),
            told: Vec::new(),
        }
    }

    fn draw(&self, pass: u64, step: usize, r: &Routing, prev: Option<&[usize]>) -> Vec<usize> {
        let n = r.experts.len();
        let k = r.k.min(n);
        let mut rng = Stream::new(self.resolved.seed, pass, step, 0);
        if r.popularity.is_none() && r.repeat == 0.0 {
            // Partial Fisher-Yates: the first k of a uniform permutation.
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = i + rng.below(n - i);
                pool.swap(i, j);
            }
            pool.truncate(k);
            return pool;
        }
        let mut chosen: Vec<usize> = Vec::with_capacity(k);
        let weight = |e: usize| r.popularity.as_ref().map_or(1.0, |w| w[e]);
        while chosen.len() < k {
            let again: Vec<usize> = prev
                .unwrap_or(&[])
                .iter()
                .copied()
                .filter(|e| !chosen.contains(e))
                .collect();
            if !again.is_empty() && rng.unit() < r.repeat {
                chosen.push(again[rng.below(again.len())]);
                continue;
            }
            let total: f64 = (0..n).filter(|e| !chosen.contains(e)).map(weight).sum();
            let mut x = rng.unit() * total;
            let mut pick = None;
            for e in (0..n).filter(|e| !chosen.contains(e)) {
                let w = weight(e);
                if w > 0.0 {
                    pick = Some(e);
                    if x < w {
                        break;
                    }
                    x -= w;
                }
            }
            // At least k candidates have a positive weight (checked when resolved).
            chosen.push(pick.expect("a candidate with a positive weight is left"));
        }
        chosen
    }

    /// Draws every pass up to `pass`.
    fn ensure(&mut self, pass: u64) {
        let steps = &self.resolved.steps;
        let mut next = self.passes.back().map_or(0, |(p, _)| p + 1);
        if self.passes.front().is_some_and(|(p, _)| pass < *p) {
            // Back to an earlier pass: draw again from the start (drivers go forward).
            self.passes.clear();
            next = 0;
        }
        while next <= pass {
            let prev = self.passes.back().filter(|(p, _)| p + 1 == next);
            let drawn: Vec<Vec<usize>> = steps
                .iter()
                .enumerate()
                .map(|(s, st)| match &st.choose {
                    None => Vec::new(),
                    Some(r) => self.draw(next, s, r, prev.map(|(_, d)| d[s].as_slice())),
                })
                .collect();
            self.passes.push_back((next, drawn));
            if self.passes.len() > KEPT_PASSES {
                self.passes.pop_front();
            }
            next += 1;
        }
    }

    /// The experts (indices into the step's candidates) `step` uses in `pass`; empty for a step
    /// that is not routed.
    pub fn experts(&mut self, pass: u64, step: usize) -> &[usize] {
        self.ensure(pass);
        let (_, d) = self
            .passes
            .iter()
            .find(|(p, _)| *p == pass)
            .expect("the pass was just drawn");
        &d[step]
    }

    /// The blocks `step` really uses in `pass`: its fixed uses, then its draw's.
    pub fn blocks(&mut self, pass: u64, step: usize, out: &mut Vec<usize>) {
        out.clear();
        let st = &self.resolved.steps[step];
        out.extend_from_slice(&st.uses);
        if let Some(r) = &st.choose {
            for &e in self.experts(pass, step) {
                for &b in &r.experts[e] {
                    if !out.contains(&b) {
                        out.push(b);
                    }
                }
            }
        }
    }

    /// What to tell the engine right after the hint of `step` in `pass`: each routed step whose
    /// reveal falls here (`known_ahead` steps before it), with its draw or guesses.
    pub fn reveals(&mut self, pass: u64, step: usize, out: &mut Vec<Reveal>) {
        out.clear();
        let resolved = self.resolved;
        let len = resolved.steps.len() as u64;
        let g = pass * len + step as u64;
        for i in 0..self.reveal_at[step].len() {
            let t = self.reveal_at[step][i];
            let Some(r) = &resolved.steps[t].choose else {
                continue;
            };
            let tpass = (g + r.known_ahead as u64) / len;
            let mut rng = Stream::new(resolved.seed, tpass, t, GUESS_SALT);
            let drawn = self.experts(tpass, t);
            let mut shown: Vec<usize> = Vec::with_capacity(drawn.len());
            for &e in drawn {
                let wrong: Vec<usize> = (0..r.experts.len())
                    .filter(|x| !drawn.contains(x) && !shown.contains(x))
                    .collect();
                if r.accuracy < 1.0 && !wrong.is_empty() && rng.unit() >= r.accuracy {
                    shown.push(wrong[rng.below(wrong.len())]);
                } else {
                    shown.push(e);
                }
            }
            let mut blocks = Vec::new();
            for e in shown {
                for &b in &r.experts[e] {
                    if !blocks.iter().any(|&(x, _)| x == b) {
                        blocks.push((b, r.accuracy.max(f64::MIN_POSITIVE)));
                    }
                }
            }
            out.push(Reveal { step: t, blocks });
        }
    }
}

impl Draws<'_> {
    /// What the drivers (`synapswap run`, the simulator) do right after the hint of `step` in
    /// `pass`: each reveal ([`Draws::reveals`]) goes to `hint_choice(step, choices)`, its blocks
    /// the drivers' handles `ids` (indexed as the workload's blocks).
    pub fn tell<E>(
        &mut self,
        pass: u64,
        step: usize,
        ids: &[BlockId],
        mut hint_choice: impl FnMut(u64, &[(BlockId, f64)]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut revealed = std::mem::take(&mut self.revealed);
        self.reveals(pass, step, &mut revealed);
        for r in &revealed {
            self.told.clear();
            self.told.extend(r.blocks.iter().map(|&(b, p)| (ids[b], p)));
            hint_choice(r.step as u64, &self.told)?;
        }
        self.revealed = revealed;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
