//! The keep plan: which declared blocks stay resident for good (at homes packed from the bottom of
//! the pool) and how much room is left above them for the blocks that stream (the streaming
//! reserve).
//!
//! [`plan`] is a pure function of its inputs: the candidates, the declared uses of every step,
//! the room, the measured step times and bandwidth when there are any, and the previous plan.
//! The planner gathers them, calls it, and lays out the homes in the order it returns.
//!
//! # Why a plan
//! Over a cyclic schedule the bytes moved per pass are the bytes of the blocks that are not
//! resident when used, so the best steady state keeps a fixed set and streams the rest through
//! what is left. Belady's rule finds that set only when blocks are interchangeable bytes; in a
//! contiguous pool, streamed blocks evict their kept neighbours to make runs big enough and the
//! "stable" set erodes (measured: 15-19% more bytes than the minimum, BENCHMARKS.md,
//! "`synapswap run`"). So the set is explicit.
//!
//! # The choice
//! A block that is not kept crosses the link at every use: its bytes times its probability, per
//! use, every pass. Keeping a set `K` leaves `R = room - bytes(K)` for the streamed blocks.
//!
//! - **Candidate sets** are greedy knapsacks in (priority, uses per cycle, size, spread over the
//!   pass) order that leave at least `r` free, for a bounded list of reserves `r`: room for two
//!   blocks of each of the 32 largest sizes, 1/32, 2/32, ... 31/32 of the room (a tied
//!   `lm_head` kept beside a ring deep enough to run ahead over the steps that use kept blocks
//!   only sits at a reserve that is a difference of sizes, which no doubled size hits), all of
//!   the room, and each tried set's own no-stall
//!   reserve (the most two consecutive steps stream, or measured and compute-bound, the prefetch
//!   deficit plus two blocks: [`prefetch_deficit`]). The spread (golden-ratio sequence over
//!   first-use positions) breaks ties so that the kept blocks are spread evenly over the pass: a
//!   pass whose first layers are all kept and whose last are all streamed leaves the link idle
//!   early and short late.
//! - **Feasible** sets are those whose `R` holds the two consecutive steps that stream the most
//!   (the step running and the one loading) and the largest streamed block.
//! - **The plan** is the feasible set with the least predicted pass time. Before step times and
//!   bandwidth are measured that is the set that streams the fewest bytes per pass (when
//!   copy-bound, time is bytes over bandwidth: the same order). Once measured, it is the period
//!   of the pipeline model in [`pass_time`]: `max(compute, streamed / bandwidth)` when the
//!   reserve lets the link run ahead far enough, plus the stalls it cannot hide when it does
//!   not. Ties (equal predictions: every compute-bound set that hides its copies) go to a set
//!   whose reserve covers its no-stall reserve (the model's prefetch always runs as far ahead
//!   as the ring allows, the runtime's is also bounded by its horizon: this keeps the margin
//!   that took the prefill presets to 0.998-1.000 of the oracle), then to fewer streamed
//!   bytes, then to more kept bytes, then to the set tried first.
//!
//! Kept bytes are not the objective: a 37 MB classifier used at the first and the last step of a
//! pass saves 74 MB per pass when kept, six 4 MB layers used once save 24 MB.
//!
//! # Stability
//! Measured times are noisy, and a plan that changes with the noise moves different bytes from
//! one run to the next. So the measured inputs are quantized (to 1/16 octave, about 4.4%), and
//! the previous plan, when it was made for the same candidates, uses and room (only the
//! measurements and the learned probabilities of routed uses differ, `popularity.rs`), stays unless the best set is predicted at least [`HYSTERESIS`] (5%)
//! faster, or [`FIRST_MEASURED_HYSTERESIS`] (2%) when the previous plan was made before any
//! measurement. Before measurements the plan is a function of the declarations alone, so the
//! first measured plan of every run starts from the same one, and a run whose measurements fall
//! on the other side of a near tie keeps it.
//!
//! # Cost
//! With `c` candidates, `u` declared uses and `s` steps: sorting is O(c log c), on keys made
//! once and laid out contiguously (the uses are one flat list too: [`Steps`]); each try is
//! O(c + u + s) (the greedy fill, the streamed bytes per step, the window of two steps, the
//! deficit by prefix sums and a sliding-window minimum, and [`MODEL_PASSES`] passes of the
//! pipeline model); there are at most [`MAX_TRIES`] (97) tries, and one more for the previous
//! plan. So O(c log c + MAX_TRIES (c + u + s)): linear in the schedule, never quadratic in the
//! steps.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Consecutive steps whose streamed blocks the reserve must hold: the step using its blocks and
/// the next one loading (a third would only deepen the pipeline, at one step's bytes per pass).
const RESERVE_STEPS: usize = 2;
/// Distinct block sizes whose double is tried as a reserve.
const SIZE_TRIES: usize = 32;
/// Reserves tried at even fractions of the room (1/32, 2/32, ...).
const GRID_TRIES: u64 = 32;
/// Most reserves tried.
const MAX_TRIES: usize = 97;
/// How much faster a new plan must be predicted to replace the previous one when both were
/// made from measurements (they differ by noise only).
const HYSTERESIS: f64 = 0.05;
/// The same when the previous plan was made before anything was measured: the measurements are
/// new information, so a smaller margin (the measured plan for `unet-sdxl` is predicted 4.9%
/// faster than the byte-optimal one, and is 5.5% faster on the simulator).
const FIRST_MEASURED_HYSTERESIS: f64 = 0.02;
/// Measured inputs are rounded to this fraction of an octave.
const QUANTUM_PER_OCTAVE: f64 = 16.0;
/// Passes of the pipeline model (at least 3); the period is the mean of the last two.
const MODEL_PASSES: usize = 4;
const _: () = assert!(MODEL_PASSES >= 3);
/// Relative difference below which two predictions are equal.
const TIE: f64 = 1e-9;

/// A block the plan may keep: an `Auto` block with declared uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Candidate {
    /// The block's index (the planner's).
    pub index: u32,
    /// Expected uses per cycle (the probabilities of its declared uses, summed).
    pub uses: f64,
    /// Granule-rounded size, bytes.
    pub size: u64,
    /// Priority (higher is kept first).
    pub priority: u8,
    /// Its first declared position in the cycle.
    pub first: u32,
}

/// One declared use at a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Use {
    /// Position of the block in [`Inputs::candidates`]; `None` for a block that is never kept
    /// (`Lru`, `Volatile`): it always streams.
    pub cand: Option<u32>,
    /// Granule-rounded size, bytes.
    pub size: u64,
    /// Probability of the use per pass (1 for a fixed use, `k / n` for a routed candidate: such
    /// a use is loaded when waited for, never ahead).
    pub prob: f64,
}

/// Declared uses per position of the cycle, in one flat list (position `p`'s uses are
/// `uses[starts[p]..starts[p + 1]]`): at a million steps, one allocation instead of a million.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Steps {
    uses: Vec<Use>,
    starts: Vec<u32>,
}

impl Default for Steps {
    fn default() -> Self {
        Steps::with_capacity(0, 0)
    }
}

impl Steps {
    /// No steps, with room for `steps` positions and `uses` uses.
    pub fn with_capacity(steps: usize, uses: usize) -> Self {
        let mut starts = Vec::with_capacity(steps + 1);
        starts.push(0);
        Steps {
            uses: Vec::with_capacity(uses),
            starts,
        }
    }

    /// Appends the next position with these uses.
    pub fn push_step(&mut self, uses: impl IntoIterator<Item = Use>) {
        self.uses.extend(uses);
        self.starts.push(self.uses.len() as u32);
    }

    /// Positions.
    pub fn len(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }

    /// Position `p`'s uses.
    pub fn step(&self, p: usize) -> &[Use] {
        &self.uses[self.starts[p] as usize..self.starts[p + 1] as usize]
    }

    /// Every position's uses, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[Use]> {
        (0..self.len()).map(|p| self.step(p))
    }
}

impl<S: IntoIterator<Item = Use>> FromIterator<S> for Steps {
    fn from_iter<I: IntoIterator<Item = S>>(steps: I) -> Self {
        let mut all = Steps::default();
        for step in steps {
            all.push_step(step);
        }
        all
    }
}

/// Measured step times and bandwidth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Timing<'a> {
    /// Per position: the step's own work, seconds (its duration less the caller's stalls).
    pub compute_s: &'a [f64],
    /// Host-to-device bandwidth, bytes/s.
    pub bytes_per_s: f64,
}

/// What [`plan`] decides from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inputs<'a> {
    /// The blocks that may be kept, in any order.
    pub candidates: &'a [Candidate],
    /// Per position of the cycle: its declared uses, pinned blocks left out (always resident).
    pub steps: &'a Steps,
    /// Room for kept and streamed blocks: the budget less the pinned blocks, bytes.
    pub room: u64,
    /// Measured times, once every step has been timed and the link measured.
    pub timing: Option<Timing<'a>>,
}

/// A keep plan.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeepPlan {
    /// Block indices to keep, in home order (plan order: a larger reserve drops the tail).
    pub keep: Vec<u32>,
    /// Their rounded bytes.
    pub kept_bytes: u64,
    /// Room left for streaming: `room - kept_bytes`.
    pub reserve: u64,
    /// Expected bytes streamed per pass.
    pub streamed_bytes: f64,
    /// Predicted seconds per pass, when measured.
    pub predicted_s: Option<f64>,
    /// Fingerprint of the inputs other than the measurements (hysteresis applies only between
    /// plans for the same candidates, uses and room).
    shape: u64,
}

/// One candidate set, evaluated.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Eval {
    feasible: bool,
    streamed: f64,
    kept: u64,
    reserve: u64,
    time: Option<f64>,
    /// The reserve with which this set would not stall (a reserve to try).
    want: u64,
}

/// The measured inputs, quantized.
struct Measured {
    compute: Vec<f64>,
    bw: f64,
}

/// Rounds a positive measurement to 1/16 octave; anything else is 0.
fn quantize(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        ((x.log2() * QUANTUM_PER_OCTAVE).round() / QUANTUM_PER_OCTAVE).exp2()
    } else {
        0.0
    }
}

fn shape_of(input: &Inputs) -> u64 {
    let mut h = DefaultHasher::new();
    input.room.hash(&mut h);
    input.candidates.len().hash(&mut h);
    // A routed use's probability is learned (`popularity.rs`): like the measured times it is
    // not part of the shape, only whether a use is certain.
    for c in input.candidates {
        (c.index, c.size, c.priority, c.first).hash(&mut h);
    }
    input.steps.starts.hash(&mut h);
    for u in &input.steps.uses {
        (u.cand, u.size, u.prob >= 1.0).hash(&mut h);
    }
    h.finish()
}

/// `a` is a better plan than `b`: less predicted time (none when unmeasured), then one whose
/// reserve covers its no-stall reserve, then fewer streamed bytes, then more kept bytes (see
/// the module docs).
fn better(a: &Eval, b: &Eval) -> bool {
    let less = |x: f64, y: f64| x < y - TIE * y.abs();
    if let (Some(ta), Some(tb)) = (a.time, b.time) {
        if less(ta, tb) {
            return true;
        }
        if less(tb, ta) {
            return false;
        }
    }
    let (ca, cb) = (a.reserve >= a.want, b.reserve >= b.want);
    if ca != cb {
        return ca;
    }
    if less(a.streamed, b.streamed) {
        return true;
    }
    if less(b.streamed, a.streamed) {
        return false;
    }
    a.kept > b.kept
}

/// The objective the hysteresis compares: predicted time, or bytes when unmeasured.
fn cost(e: &Eval) -> f64 {
    e.time.unwrap_or(e.streamed)
}

struct Planning<'a> {
    input: &'a Inputs<'a>,
    measured: Option<Measured>,
    /// Scratch: streamed bytes per step, prefetchable and loaded on demand.
    ahead: Vec<f64>,
    demand: Vec<f64>,
}

impl Planning<'_> {
    /// Evaluates keeping the candidates marked in `keep` (by position in the inputs).
    fn evaluate(&mut self, keep: &[bool]) -> Eval {
        let input = self.input;
        let len = input.steps.len();
        let mut largest = 0u64;
        let streams = |u: &Use| u.cand.is_none_or(|c| !keep[c as usize]);
        for (p, step) in input.steps.iter().enumerate() {
            let (mut ahead, mut demand) = (0.0, 0.0);
            for u in step.iter().filter(|u| streams(u)) {
                largest = largest.max(u.size);
                if u.prob >= 1.0 {
                    ahead += u.size as f64;
                } else {
                    demand += u.size as f64 * u.prob;
                }
            }
            self.ahead[p] = ahead;
            self.demand[p] = demand;
        }
        let streamed_at = |p: usize| self.ahead[p] + self.demand[p];
        let streamed: f64 = (0..len).map(streamed_at).sum();
        let window = (0..len)
            .map(|p| {
                (0..RESERVE_STEPS.min(len))
                    .map(|j| streamed_at((p + j) % len))
                    .sum::<f64>()
            })
            .fold(0.0f64, f64::max);
        let hard = (window.ceil() as u64).max(largest);
        let kept: u64 = input
            .candidates
            .iter()
            .zip(keep)
            .filter(|(_, &k)| k)
            .map(|(c, _)| c.size)
            .sum();
        let reserve = input.room.saturating_sub(kept);
        let mut want = hard;
        let mut time = None;
        if let Some(m) = &self.measured {
            let per_step: Vec<f64> = (0..len).map(streamed_at).collect();
            if let Some(deficit) = prefetch_deficit(&per_step, &m.compute, m.bw) {
                want = want.max((deficit + 2 * largest).min(input.room / 2));
            }
            time = Some(pass_time(
                &self.ahead,
                &self.demand,
                &m.compute,
                m.bw,
                reserve as f64,
            ));
        }
        Eval {
            feasible: reserve >= hard,
            streamed,
            kept,
            reserve,
            time,
            want,
        }
    }
}

/// The keep plan for `input`; `previous` is the plan in force (see the module docs).
pub(crate) fn plan(input: &Inputs, previous: Option<&KeepPlan>) -> KeepPlan {
    let shape = shape_of(input);
    let measured = input.timing.and_then(|t| {
        let bw = quantize(t.bytes_per_s);
        (bw > 0.0 && t.compute_s.len() == input.steps.len()).then(|| Measured {
            compute: t.compute_s.iter().map(|&c| quantize(c)).collect(),
            bw,
        })
    });
    let len = input.steps.len();
    let mut p = Planning {
        input,
        measured,
        ahead: vec![0.0; len],
        demand: vec![0.0; len],
    };
    let cands = input.candidates;
    let n = cands.len();
    // Keeping a block saves its size times its uses per cycle, so the value per kept byte is the
    // number of uses; among equals the larger block is kept, so what streams is small and
    // uniform and the streaming zone does not fragment; then the spread.
    // The order is sorted by precomputed keys (a contiguous sort, not one that reads two
    // candidates at random for every comparison: at a million candidates that was most of it).
    let spread = |c: &Candidate| (f64::from(c.first) * 0.618_033_988_749_895).fract();
    // f64 to an integer of the same order (total order: sign-flipped bits).
    let ordered = |x: f64| {
        let b = x.to_bits();
        if b >> 63 == 1 {
            !b
        } else {
            b | (1 << 63)
        }
    };
    let mut keyed: Vec<(u8, u64, u64, u64, u32, u32)> = cands
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                u8::MAX - c.priority,
                !ordered(c.uses),
                u64::MAX - c.size,
                ordered(spread(c)),
                c.index,
                i as u32,
            )
        })
        .collect();
    keyed.sort_unstable();
    let order: Vec<usize> = keyed.iter().map(|k| k.5 as usize).collect();
    drop(keyed);
    let room = input.room;
    let greedy = |reserve: u64| -> Vec<bool> {
        let mut keep = vec![false; n];
        let mut fill = 0;
        for &c in &order {
            if fill + cands[c].size + reserve <= room {
                fill += cands[c].size;
                keep[c] = true;
            }
        }
        keep
    };
    // Which reserve to plan for is a search, not a fixed point: one big block (an `lm_head` of
    // half the pool) needs a big reserve if it streams and none if it is kept.
    let mut sizes: Vec<u64> = cands.iter().map(|c| c.size).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.dedup();
    sizes.truncate(SIZE_TRIES);
    let mut tries: Vec<u64> = sizes.iter().map(|&s| 2 * s).collect();
    // A grid over the room: the reserve at which a big kept block (a tied `lm_head`) still fits
    // beside a ring deep enough to run ahead over the steps that use kept blocks only is a
    // difference of sizes, which no doubled size need hit.
    tries.extend((1..GRID_TRIES).map(|j| room / GRID_TRIES * j));
    tries.push(room);
    let mut tried: Vec<u64> = Vec::new();
    let mut best: Option<(Eval, Vec<bool>)> = None;
    while let Some(reserve) = tries.pop() {
        if tried.len() >= MAX_TRIES || tried.contains(&reserve) {
            continue;
        }
        tried.push(reserve);
        let keep = greedy(reserve);
        let e = p.evaluate(&keep);
        if e.feasible && best.as_ref().is_none_or(|(b, _)| better(&e, b)) {
            best = Some((e, keep));
        }
        if e.want > reserve {
            tries.push(e.want);
        }
    }
    // The previous plan stays unless the best is clearly faster.
    if let Some(prev) = previous.filter(|prev| prev.shape == shape) {
        let mut held = prev.keep.clone();
        held.sort_unstable();
        let keep: Vec<bool> = cands
            .iter()
            .map(|c| held.binary_search(&c.index).is_ok())
            .collect();
        let e = p.evaluate(&keep);
        let margin = if prev.predicted_s.is_some() {
            HYSTERESIS
        } else {
            FIRST_MEASURED_HYSTERESIS
        };
        let clearly_better = best
            .as_ref()
            .is_some_and(|(b, _)| cost(b) < cost(&e) * (1.0 - margin));
        if e.feasible && !clearly_better {
            best = Some((e, keep));
        }
    }
    let (e, keep) = best.unwrap_or_else(|| {
        let none = vec![false; n];
        (p.evaluate(&none), none)
    });
    KeepPlan {
        keep: order
            .iter()
            .filter(|&&c| keep[c])
            .map(|&c| cands[c].index)
            .collect(),
        kept_bytes: e.kept,
        reserve: e.reserve,
        streamed_bytes: e.streamed,
        predicted_s: e.time,
        shape,
    }
}

/// A pass whose streamed bytes copy in less time than it computes: the most bytes that must
/// already be loaded when some step starts for the link to deliver every later step's blocks in
/// time, `max over i <= j < i + len of bytes(i..=j) - bandwidth * compute(i..j)` (cyclic).
/// `None` when copy-bound (then the link is the bottleneck, stalls are unavoidable, and a deeper
/// pipeline only costs bytes) or empty.
///
/// O(len): with prefix sums `B` (bytes) and `C` (compute) over the doubled cycle, the value is
/// `(B[j+1] - bw C[j]) - (B[i] - bw C[i])`, so each `j` needs the least `B[i] - bw C[i]` over
/// the window `j + 1 - len <= i <= j` (`i < len`): a sliding-window minimum (monotone deque).
pub(crate) fn prefetch_deficit(streamed: &[f64], compute: &[f64], bw: f64) -> Option<u64> {
    let len = streamed.len();
    if len == 0 || compute.len() != len || bw <= 0.0 {
        return None;
    }
    let total_copy = streamed.iter().sum::<f64>() / bw;
    if total_copy >= compute.iter().sum::<f64>() {
        return None;
    }
    let (mut pb, mut pc) = (vec![0.0f64; 2 * len + 1], vec![0.0f64; 2 * len + 1]);
    for k in 0..2 * len {
        pb[k + 1] = pb[k] + streamed[k % len];
        pc[k + 1] = pc[k] + compute[k % len];
    }
    let g = |i: usize| pb[i] - bw * pc[i];
    let mut window: VecDeque<usize> = VecDeque::new();
    let mut worst = 0.0f64;
    for j in 0..2 * len - 1 {
        if j < len {
            while window.back().is_some_and(|&b| g(b) >= g(j)) {
                window.pop_back();
            }
            window.push_back(j);
        }
        while window.front().is_some_and(|&f| f + len <= j) {
            window.pop_front();
        }
        if let Some(&i) = window.front() {
            worst = worst.max(pb[j + 1] - bw * pc[j] - g(i));
        }
    }
    Some(worst.ceil() as u64)
}

/// Predicted seconds per pass: the period of a pipeline model run for [`MODEL_PASSES`] passes
/// from an empty ring (the mean of the last two). It lays out what the planner does:
/// - each step's streamed bytes are one contiguous run in a ring of `ring` bytes, placed after
///   the previous step's run, or at the start when they do not fit before the end (the tail is
///   lost until the ring comes round);
/// - a step's prefetchable bytes (`ahead[k]`) are copied in deadline order, one step after
///   another, at `bw`, once the link is free and their run is clear: every earlier step whose
///   run it overlaps has ended (the newest of them, as steps end in order);
/// - a step starts when the previous one has ended and its prefetched bytes are in; its routed
///   bytes (`demand[k]`, expected) are copied only then, when waited for, and it waits for them;
/// - it then computes for `compute[k]`, and its run is released when it ends.
///
/// So a pass takes `max(compute, streamed / bw)` when the ring lets the link run ahead far
/// enough, and more by the stalls it cannot hide when the ring is short (the prefetch deficit),
/// fragmented by runs that do not fit before its end, or when bytes come on demand.
/// O(MODEL_PASSES x len).
pub(crate) fn pass_time(ahead: &[f64], demand: &[f64], compute: &[f64], bw: f64, ring: f64) -> f64 {
    let len = ahead.len();
    if len == 0 {
        return 0.0;
    }
    let total = MODEL_PASSES * len;
    let mut end = vec![0.0f64; total];
    // The runs placed so far, in order: (step, start in the unrolled ring, where lap `q` covers
    // `q * ring .. (q + 1) * ring`).
    let mut runs: Vec<(usize, f64)> = Vec::with_capacity(total);
    let mut head = 0.0f64;
    // `runs[..below]` start before the lowest offset the current run reaches, one lap back.
    let mut below = 0usize;
    let (mut link, mut prev_end) = (0.0f64, 0.0f64);
    for k in 0..total {
        let (a, d) = (ahead[k % len], demand[k % len]);
        let bytes = a + d;
        // When its run may be copied: once the newest earlier run it overlaps is released.
        let mut clear = 0.0;
        if bytes > 0.0 {
            let lap = (head / ring).floor() * ring;
            if head - lap + bytes > ring && head > lap {
                head = lap + ring;
            }
            let reach = head + bytes - ring;
            while below < runs.len() && runs[below].1 < reach {
                below += 1;
            }
            if below > 0 {
                clear = end[runs[below - 1].0];
            }
            runs.push((k, head));
            head += bytes;
        }
        let ready = if a > 0.0 {
            link = link.max(clear) + a / bw;
            link
        } else {
            0.0
        };
        let mut start = prev_end.max(ready);
        if d > 0.0 {
            link = link.max(start).max(clear) + d / bw;
            start = link;
        }
        end[k] = start + compute[k % len];
        prev_end = end[k];
    }
    (end[total - 1] - end[total - 1 - 2 * len]) / 2.0
}

#[cfg(test)]
mod tests;
