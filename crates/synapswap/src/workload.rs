//! Workloads: a model's blocks and the cyclic sequence of steps that use them.
//!
//! The same description drives `synapswap run` (real runtime, real bytes) and, later, the
//! simulator. Its JSON form is documented in the README.

use serde::{Deserialize, Serialize};

use crate::{Error, Policy, Result, DEFAULT_PRIORITY, MAX_PRIORITY};

/// One block of a workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDesc {
    /// Unique name, used by steps.
    pub name: String,
    /// Size in bytes (> 0).
    pub bytes: u64,
    /// 0..=10.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// auto | pinned | lru | volatile.
    #[serde(default)]
    pub policy: Policy,
    /// Written on the device (a KV cache): written back before eviction.
    #[serde(default)]
    pub mutable: bool,
}

fn default_priority() -> u8 {
    DEFAULT_PRIORITY
}

/// Data-dependent use (mixture-of-experts routing): each pass the step uses `k` candidates drawn
/// from `from` (seeded, without replacement; how, in `routing.rs`). The engine is declared the
/// candidates' blocks, each with probability `k / from.len()`, and is told the draw itself
/// `known_ahead` steps before the step (a router's output at the step, or a guess earlier).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choose {
    /// Candidates used per pass (1..=from.len()).
    pub k: u32,
    /// The candidates: in JSON each is a block name, or a list of the names of blocks that are
    /// drawn together (an expert's gate, up and down projections: `["e0.w1", "e0.w2", "e0.w3"]`).
    pub from: Vec<Expert>,
    /// One weight per candidate (non-negative, at least `k` positive): the draw picks a
    /// candidate in proportion to its weight. Uniform when absent. The engine is not told it: it
    /// learns the skew from what is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub popularity: Option<Vec<f64>>,
    /// The probability (0..=1) that each of the `k` draws repeats one of this step's choices in
    /// the previous pass instead (consecutive tokens reuse experts). 0 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<f64>,
    /// How many steps before its own step the draw is revealed to the engine (`hint_choice`),
    /// less than the number of steps: 0 (the default) is a router's output at the step itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_ahead: Option<u32>,
    /// The probability (0..=1) that each revealed expert is right; a wrong one reveals another
    /// candidate instead, with this probability as its confidence. 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
}

impl Choose {
    /// `k` of `from`, uniform, independent from pass to pass, revealed at the step itself.
    pub fn new(k: u32, from: Vec<Expert>) -> Choose {
        Choose {
            k,
            from,
            popularity: None,
            repeat: None,
            known_ahead: None,
            accuracy: None,
        }
    }
}

/// One candidate of a [`Choose`]: a block, or blocks used together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Expert {
    /// One block, by name.
    Block(String),
    /// Blocks drawn together, by name (at least one).
    Blocks(Vec<String>),
}

impl Expert {
    /// The names of its blocks.
    pub fn names(&self) -> &[String] {
        match self {
            Expert::Block(n) => std::slice::from_ref(n),
            Expert::Blocks(v) => v,
        }
    }
}

impl From<String> for Expert {
    fn from(name: String) -> Self {
        Expert::Block(name)
    }
}

impl From<&str> for Expert {
    fn from(name: &str) -> Self {
        Expert::Block(name.to_string())
    }
}

impl From<Vec<String>> for Expert {
    fn from(names: Vec<String>) -> Self {
        Expert::Blocks(names)
    }
}

/// A resolved [`Choose`]: `k` of `experts` are used each pass, each expert one or more blocks
/// (indices into [`Workload::blocks`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Experts used per pass.
    pub k: usize,
    /// The candidates, each the blocks drawn together.
    pub experts: Vec<Vec<usize>>,
    /// Draw weight per candidate; `None`: uniform.
    pub popularity: Option<Vec<f64>>,
    /// Probability that a draw repeats one of the previous pass's choices.
    pub repeat: f64,
    /// Steps before its own step that the draw is revealed.
    pub known_ahead: usize,
    /// Probability that each revealed expert is right.
    pub accuracy: f64,
}

impl Routing {
    /// The probability that a given candidate is used in a pass: `k / n`.
    pub fn p(&self) -> f64 {
        self.k as f64 / self.experts.len() as f64
    }

    /// Every candidate block, expert by expert.
    pub fn blocks(&self) -> impl Iterator<Item = usize> + '_ {
        self.experts.iter().flatten().copied()
    }

    /// Bytes of the `k` largest experts (`bytes` of a block): the most a pass's draw puts on the
    /// device at once.
    pub fn largest_k(&self, bytes: impl Fn(usize) -> u64) -> u64 {
        let mut sizes: Vec<u64> = self
            .experts
            .iter()
            .map(|e| e.iter().map(|&b| bytes(b)).sum())
            .collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        sizes.iter().take(self.k).sum()
    }
}

/// One step: the blocks it uses and how long its computation takes on the modelled device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDesc {
    /// Modelled compute time of the step, seconds.
    pub compute_s: f64,
    /// Names of the blocks the step always uses.
    #[serde(default)]
    pub uses: Vec<String>,
    /// Blocks the step uses depending on data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choose: Option<Choose>,
}

/// A model's blocks and steps. One pass over `steps` is one token of decoding (one prompt for a
/// prefill workload, one denoising step for a diffusion model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Name for reports.
    pub name: String,
    /// Suggested device budget, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_budget: Option<u64>,
    /// Suggested host-to-device bandwidth, bytes/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2d_bytes_per_s: Option<f64>,
    /// Suggested number of passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passes: Option<u64>,
    /// The blocks.
    pub blocks: Vec<BlockDesc>,
    /// The steps of one pass, in order.
    pub steps: Vec<StepDesc>,
}

/// A step with block names resolved to indices into [`Workload::blocks`].
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedStep {
    /// Blocks used every pass.
    pub uses: Vec<usize>,
    /// A data-dependent choice.
    pub choose: Option<Routing>,
    /// Modelled compute time, seconds.
    pub compute_s: f64,
}

/// A checked workload: what drivers (run, simulate) iterate over.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// One entry per step.
    pub steps: Vec<ResolvedStep>,
    /// Seed of the data-dependent draws.
    pub seed: u64,
}

impl Resolved {
    /// Every `(step, block, probability)` the engine should be told about: fixed uses with 1.0,
    /// candidates with `k / n`.
    pub fn declarations(&self) -> Vec<(u64, usize, f64)> {
        let mut out = Vec::new();
        for (s, step) in self.steps.iter().enumerate() {
            for &b in &step.uses {
                out.push((s as u64, b, 1.0));
            }
            if let Some(r) = &step.choose {
                for b in r.blocks() {
                    if !step.uses.contains(&b) {
                        out.push((s as u64, b, r.p()));
                    }
                }
            }
        }
        out
    }

    /// Whether any step depends on data.
    pub fn is_routed(&self) -> bool {
        self.steps.iter().any(|s| s.choose.is_some())
    }
}

impl Workload {
    /// Checks the workload and resolves names to indices into `blocks`. Routed draws use `seed`.
    pub fn resolve_seeded(&self, seed: u64) -> Result<Resolved> {
        let bad = |m: String| Err(Error::Workload(m));
        if self.blocks.is_empty() {
            return bad("no blocks".into());
        }
        if self.steps.is_empty() {
            return bad("no steps".into());
        }
        if let Some(0) = self.vram_budget {
            return bad("vram_budget is zero".into());
        }
        if let Some(bw) = self.h2d_bytes_per_s {
            if !(bw.is_finite() && bw > 0.0) {
                return bad(format!("h2d_bytes_per_s must be positive, not {bw}"));
            }
        }
        if let Some(0) = self.passes {
            return bad("passes is zero".into());
        }
        let mut index = std::collections::HashMap::new();
        for (i, b) in self.blocks.iter().enumerate() {
            if b.name.is_empty() {
                return bad(format!("block {i} has an empty name"));
            }
            if b.bytes == 0 {
                return bad(format!("block '{}' has zero bytes", b.name));
            }
            if b.priority > MAX_PRIORITY {
                return bad(format!(
                    "block '{}' has priority {} (0..=10)",
                    b.name, b.priority
                ));
            }
            if index.insert(b.name.as_str(), i).is_some() {
                return bad(format!("block name '{}' is used twice", b.name));
            }
        }
        let lookup = |s: usize, name: &String| -> Result<usize> {
            index
                .get(name.as_str())
                .copied()
                .ok_or_else(|| Error::Workload(format!("step {s} uses unknown block '{name}'")))
        };
        let mut steps = Vec::with_capacity(self.steps.len());
        for (s, step) in self.steps.iter().enumerate() {
            if !(step.compute_s.is_finite() && step.compute_s >= 0.0) {
                return bad(format!(
                    "step {s} has an invalid compute_s {}",
                    step.compute_s
                ));
            }
            let mut uses = Vec::with_capacity(step.uses.len());
            for name in &step.uses {
                let i = lookup(s, name)?;
                if !uses.contains(&i) {
                    uses.push(i);
                }
            }
            let choose = match &step.choose {
                None => None,
                Some(c) => {
                    let mut seen = std::collections::HashSet::new();
                    let mut experts = Vec::with_capacity(c.from.len());
                    for (e, expert) in c.from.iter().enumerate() {
                        if expert.names().is_empty() {
                            return bad(format!("step {s}: candidate {e} of choose.from is empty"));
                        }
                        let mut blocks = Vec::with_capacity(expert.names().len());
                        for name in expert.names() {
                            let i = lookup(s, name)?;
                            if !seen.insert(i) {
                                return bad(format!(
                                    "step {s} lists '{name}' twice in choose.from"
                                ));
                            }
                            blocks.push(i);
                        }
                        experts.push(blocks);
                    }
                    if c.k == 0 || c.k as usize > experts.len() {
                        return bad(format!(
                            "step {s}: choose.k is {} but must be 1..={}",
                            c.k,
                            experts.len()
                        ));
                    }
                    let unit = |v: Option<f64>, what: &str, default: f64| match v {
                        None => Ok(default),
                        Some(x) if (0.0..=1.0).contains(&x) => Ok(x),
                        Some(x) => Err(Error::Workload(format!(
                            "step {s}: choose.{what} is {x} but must lie in 0..=1"
                        ))),
                    };
                    let repeat = unit(c.repeat, "repeat", 0.0)?;
                    let accuracy = unit(c.accuracy, "accuracy", 1.0)?;
                    let known_ahead = c.known_ahead.unwrap_or(0) as usize;
                    if known_ahead >= self.steps.len() {
                        return bad(format!(
                            "step {s}: choose.known_ahead is {known_ahead} but must be below the \
                             number of steps ({})",
                            self.steps.len()
                        ));
                    }
                    if let Some(w) = &c.popularity {
                        if w.len() != experts.len() {
                            return bad(format!(
                                "step {s}: choose.popularity has {} weights for {} candidates",
                                w.len(),
                                experts.len()
                            ));
                        }
                        if let Some(x) = w.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
                            return bad(format!(
                                "step {s}: choose.popularity has the weight {x}: weights are \
                                 finite and non-negative"
                            ));
                        }
                        if !w.iter().sum::<f64>().is_finite() {
                            return bad(format!(
                                "step {s}: choose.popularity's weights sum to more than a \
                                 float holds"
                            ));
                        }
                        let positive = w.iter().filter(|x| **x > 0.0).count();
                        if positive < c.k as usize {
                            return bad(format!(
                                "step {s}: choose.popularity gives {positive} candidates a \
                                 positive weight, fewer than k ({})",
                                c.k
                            ));
                        }
                    }
                    Some(Routing {
                        k: c.k as usize,
                        experts,
                        popularity: c.popularity.clone(),
                        repeat,
                        known_ahead,
                        accuracy,
                    })
                }
            };
            if uses.is_empty() && choose.is_none() {
                return bad(format!("step {s} uses no block"));
            }
            steps.push(ResolvedStep {
                uses,
                choose,
                compute_s: step.compute_s,
            });
        }
        Ok(Resolved { steps, seed })
    }

    /// [`Workload::resolve_seeded`] with the default seed (0).
    pub fn resolve(&self) -> Result<Resolved> {
        self.resolve_seeded(0)
    }

    /// The least device budget that runs this workload, and the step that sets it: the most
    /// bytes one step has on the device at once (its fixed uses and, for a routed step, its `k`
    /// largest candidates), plus every pinned block, each granule-rounded and a pinned block of
    /// the step counted once. The planner runs any budget of at least this (its joint step
    /// placement); a smaller one fails up front with [`Error::BudgetTooSmall`].
    pub fn min_budget(&self) -> Result<(u64, u64)> {
        let r = self.resolve()?;
        let rounded = |b: usize| crate::pool::granules(self.blocks[b].bytes) * crate::pool::GRANULE;
        let pinned = |b: &usize| self.blocks[*b].policy == Policy::Pinned;
        let pinned_bytes: u64 = (0..self.blocks.len()).filter(pinned).map(rounded).sum();
        let (bytes, step) = r
            .steps
            .iter()
            .enumerate()
            .map(|(s, st)| {
                let fixed: u64 = st
                    .uses
                    .iter()
                    .filter(|b| !pinned(b))
                    .map(|&b| rounded(b))
                    .sum();
                let routed: u64 = st.choose.as_ref().map_or(0, |r| {
                    r.largest_k(|b| {
                        if pinned(&b) || st.uses.contains(&b) {
                            0
                        } else {
                            rounded(b)
                        }
                    })
                });
                (fixed + routed, s as u64)
            })
            .max_by_key(|&(bytes, s)| (bytes, std::cmp::Reverse(s)))
            .unwrap_or((0, 0));
        Ok((bytes + pinned_bytes, step))
    }

    /// Fails with [`Error::BudgetTooSmall`] if `budget` is under [`Workload::min_budget`].
    pub fn check_budget(&self, budget: u64) -> Result<()> {
        let (minimum, step) = self.min_budget()?;
        if budget < minimum {
            return Err(Error::BudgetTooSmall {
                budget,
                minimum,
                step,
            });
        }
        Ok(())
    }

    /// Bytes of all blocks.
    pub fn model_bytes(&self) -> u64 {
        self.blocks.iter().map(|b| b.bytes).sum()
    }

    /// Bytes one pass touches on average: fixed uses in full, each candidate weighted by `k / n`
    /// (a block used at several steps counts once).
    pub fn bytes_per_pass(&self) -> Result<f64> {
        let r = self.resolve()?;
        let mut p_used = vec![0.0f64; self.blocks.len()];
        for step in &r.steps {
            for &b in &step.uses {
                p_used[b] = 1.0;
            }
        }
        for step in &r.steps {
            if let Some(r) = &step.choose {
                let p = r.p();
                for b in r.blocks() {
                    // Independent draws at different steps: P(used) = 1 - prod(1 - p).
                    p_used[b] = 1.0 - (1.0 - p_used[b]) * (1.0 - p);
                }
            }
        }
        Ok(self
            .blocks
            .iter()
            .zip(p_used)
            .map(|(b, p)| b.bytes as f64 * p)
            .sum())
    }

    /// Modelled compute time of one pass.
    pub fn compute_s_per_pass(&self) -> f64 {
        self.steps.iter().map(|s| s.compute_s).sum()
    }
}

/// The device whose compute time the workload models.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceModel {
    /// Dense math throughput, FLOP/s.
    pub flops: f64,
    /// Device memory bandwidth, bytes/s.
    pub mem_bytes_per_s: f64,
}

impl DeviceModel {
    /// A consumer-class GPU: 1 TB/s of memory bandwidth, 100 TFLOP/s of bf16 math (assumed round
    /// figures, not measured).
    pub const CONSUMER: DeviceModel = DeviceModel {
        flops: 100e12,
        mem_bytes_per_s: 1e12,
    };

    /// Roofline time of a step doing `flops` over `bytes`.
    pub fn time(&self, flops: f64, bytes: f64) -> f64 {
        (flops / self.flops).max(bytes / self.mem_bytes_per_s)
    }
}

/// Shape of a Llama-style decoder (optionally with routed mixture-of-experts MLPs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlamaShape {
    /// Model width.
    pub hidden: u64,
    /// Width of the K and V projections (`hidden` without grouped-query attention).
    pub kv_dim: u64,
    /// MLP width (per expert).
    pub intermediate: u64,
    /// Decoder layers.
    pub layers: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// Bytes per weight (2 for bf16/fp16).
    pub dtype_bytes: u64,
    /// KV-cache length in tokens (mutable blocks, one per layer).
    pub context: u64,
    /// Experts per layer (0: a dense MLP).
    pub experts: u64,
    /// Experts each token is routed to.
    pub experts_per_token: u64,
    /// MLP width of a routed expert (0: `intermediate`; fine-grained experts are narrower).
    pub expert_intermediate: u64,
    /// Shared experts of a routed layer, `expert_intermediate` wide, used by every token.
    pub shared_experts: u64,
    /// The first layers keep a dense MLP (`intermediate` wide) in a routed model.
    pub dense_layers: u64,
}

impl LlamaShape {
    /// Llama-2-7B's layer shapes in bf16 with 8 layers instead of 32: 3.29 GiB, the default
    /// `synapswap run` model (big enough to need streaming, small enough for a laptop's RAM).
    pub const LLAMA_8L: LlamaShape = LlamaShape {
        hidden: 4096,
        kv_dim: 4096,
        intermediate: 11008,
        layers: 8,
        vocab: 32000,
        dtype_bytes: 2,
        context: 256,
        experts: 0,
        experts_per_token: 0,
        expert_intermediate: 0,
        shared_experts: 0,
        dense_layers: 0,
    };

    /// Llama-2-7B in fp16.
    pub const LLAMA_7B: LlamaShape = LlamaShape {
        layers: 32,
        context: 1024,
        ..Self::LLAMA_8L
    };

    /// Llama-2-70B in fp16 (grouped-query attention, 8 KV heads).
    pub const LLAMA_70B: LlamaShape = LlamaShape {
        hidden: 8192,
        kv_dim: 1024,
        intermediate: 28672,
        layers: 80,
        vocab: 32000,
        dtype_bytes: 2,
        context: 1024,
        experts: 0,
        experts_per_token: 0,
        expert_intermediate: 0,
        shared_experts: 0,
        dense_layers: 0,
    };

    /// Mixtral-8x7B in fp16: 8 experts per layer, 2 per token.
    pub const MIXTRAL_8X7B: LlamaShape = LlamaShape {
        hidden: 4096,
        kv_dim: 1024,
        intermediate: 14336,
        layers: 32,
        vocab: 32000,
        dtype_bytes: 2,
        context: 1024,
        experts: 8,
        experts_per_token: 2,
        expert_intermediate: 0,
        shared_experts: 0,
        dense_layers: 0,
    };

    /// DeepSeek-V3's shape (DeepSeek-V3 Technical Report, arXiv:2412.19437, section 4.2 and
    /// its released config): 61 layers, hidden 7168, the first 3 dense (MLP 18432 wide), the
    /// others 256 routed experts (MLP 2048 wide) of which 8 per token plus 1 shared expert,
    /// vocabulary 129280, FP8 weights (1 byte). Its multi-head latent attention (about 187M
    /// weights a layer) is modelled as Q, K, V and O of the same bytes: K and V 5860 wide.
    pub const DEEPSEEK_V3: LlamaShape = LlamaShape {
        hidden: 7168,
        kv_dim: 5860,
        intermediate: 18432,
        layers: 61,
        vocab: 129280,
        dtype_bytes: 1,
        context: 1024,
        experts: 256,
        experts_per_token: 8,
        expert_intermediate: 2048,
        shared_experts: 1,
        dense_layers: 3,
    };

    /// A small model for tests: same structure, tiny tensors.
    pub const TINY: LlamaShape = LlamaShape {
        hidden: 128,
        kv_dim: 128,
        intermediate: 352,
        layers: 4,
        vocab: 1000,
        dtype_bytes: 2,
        context: 16,
        experts: 0,
        experts_per_token: 0,
        expert_intermediate: 0,
        shared_experts: 0,
        dense_layers: 0,
    };
}

fn block_desc(name: String, bytes: u64, mutable: bool, priority: u8) -> BlockDesc {
    BlockDesc {
        name,
        bytes,
        priority,
        policy: Policy::Auto,
        mutable,
    }
}

fn step(compute_s: f64, uses: &[&BlockDesc]) -> StepDesc {
    StepDesc {
        compute_s,
        uses: uses.iter().map(|b| b.name.clone()).collect(),
        choose: None,
    }
}

/// A per-tensor decode workload for a Llama-shaped model: one block per weight tensor plus one
/// mutable KV-cache block per layer, one step per matrix product, compute from the roofline.
pub fn llama(name: &str, shape: LlamaShape, device: DeviceModel) -> Workload {
    llama_batch(name, shape, device, 1)
}

/// [`llama`] for `tokens` tokens per pass: 1 is decoding, more is a prefill of that many prompt
/// tokens (the weights are read once per pass either way; compute grows with the tokens).
pub fn llama_batch(name: &str, shape: LlamaShape, device: DeviceModel, tokens: u64) -> Workload {
    let LlamaShape {
        hidden: h,
        kv_dim: kvd,
        intermediate: f,
        layers,
        vocab,
        dtype_bytes: d,
        context,
        experts,
        experts_per_token,
        expert_intermediate,
        shared_experts,
        dense_layers,
    } = shape;
    let fe = if expert_intermediate == 0 {
        f
    } else {
        expert_intermediate
    };
    let t = tokens.max(1);
    let mut blocks = Vec::new();
    let mut steps = Vec::new();
    // A matrix product per weight: 2 FLOPs per weight per token, the weights read once, plus
    // activations in and out.
    let matmul = |params: u64, act_bytes: u64| {
        device.time(
            2.0 * params as f64 * t as f64,
            (params * d + act_bytes * t) as f64,
        )
    };
    // The token embedding is a row lookup: one row per token, gathered on the host (as llama.cpp
    // does when offloading), so the table itself never crosses PCIe and is not a block here.
    for l in 0..layers {
        let norm = block_desc(format!("l{l}.attn_norm"), h * d, false, DEFAULT_PRIORITY);
        let q = block_desc(format!("l{l}.wq"), h * h * d, false, DEFAULT_PRIORITY);
        let k = block_desc(format!("l{l}.wk"), h * kvd * d, false, DEFAULT_PRIORITY);
        let v = block_desc(format!("l{l}.wv"), h * kvd * d, false, DEFAULT_PRIORITY);
        let kv_bytes = 2 * context * kvd * d;
        let kv = block_desc(format!("l{l}.kv"), kv_bytes, true, 8);
        let o = block_desc(format!("l{l}.wo"), h * h * d, false, DEFAULT_PRIORITY);
        let norm2 = block_desc(format!("l{l}.mlp_norm"), h * d, false, DEFAULT_PRIORITY);
        steps.push(step(matmul(h * h, h * d), &[&norm, &q]));
        steps.push(step(matmul(h * kvd, h * d), &[&k]));
        steps.push(step(matmul(h * kvd, h * d), &[&v]));
        // Attention over the cache: each token reads every cached key and value.
        steps.push(step(
            device.time((4 * context * h * t) as f64, kv_bytes as f64),
            &[&kv],
        ));
        steps.push(step(matmul(h * h, h * d), &[&o]));
        blocks.extend([norm, q, k, v, kv, o]);
        if experts == 0 || l < dense_layers {
            let gate = block_desc(format!("l{l}.w_gate"), h * f * d, false, DEFAULT_PRIORITY);
            let up = block_desc(format!("l{l}.w_up"), h * f * d, false, DEFAULT_PRIORITY);
            let down = block_desc(format!("l{l}.w_down"), f * h * d, false, DEFAULT_PRIORITY);
            steps.push(step(matmul(h * f, h * d), &[&norm2, &gate]));
            steps.push(step(matmul(h * f, h * d), &[&up]));
            steps.push(step(matmul(f * h, f * d), &[&down]));
            blocks.extend([norm2, gate, up, down]);
        } else {
            // Router, then the chosen experts (gate, up and down of one expert are one block:
            // they are always used together).
            let router = block_desc(format!("l{l}.router"), h * experts * d, false, 5);
            steps.push(step(matmul(h * experts, h * d), &[&norm2, &router]));
            blocks.extend([norm2, router]);
            if shared_experts > 0 {
                // Shared experts: every token uses them, a dense MLP of their total width.
                let shared = block_desc(
                    format!("l{l}.shared_experts"),
                    3 * h * fe * shared_experts * d,
                    false,
                    DEFAULT_PRIORITY,
                );
                steps.push(step(matmul(3 * h * fe * shared_experts, h * d), &[&shared]));
                blocks.push(shared);
            }
            let names: Vec<String> = (0..experts).map(|e| format!("l{l}.expert{e}")).collect();
            let k = experts_per_token.clamp(1, experts);
            // With many tokens every expert is used; with one, `k` of them.
            let active = (k * t).min(experts);
            steps.push(StepDesc {
                compute_s: device.time(
                    2.0 * (3 * h * fe * k * t) as f64,
                    (3 * h * fe * d * active + h * d * t) as f64,
                ),
                uses: if active == experts {
                    names.clone()
                } else {
                    Vec::new()
                },
                choose: (active < experts).then(|| {
                    Choose::new(
                        active as u32,
                        names.iter().cloned().map(Expert::from).collect(),
                    )
                }),
            });
            for n in names {
                blocks.push(block_desc(n, 3 * h * fe * d, false, DEFAULT_PRIORITY));
            }
        }
    }
    let norm = block_desc("final_norm".into(), h * d, false, DEFAULT_PRIORITY);
    let head = block_desc("lm_head".into(), vocab * h * d, false, DEFAULT_PRIORITY);
    steps.push(step(matmul(vocab * h, h * d), &[&norm, &head]));
    blocks.extend([norm, head]);
    Workload {
        name: name.to_string(),
        vram_budget: None,
        h2d_bytes_per_s: None,
        passes: None,
        blocks,
        steps,
    }
}

/// Routing as real routers behave, for a routed preset: the parameters of every routed step's
/// [`Choose`] (see `routing.rs` for what each does).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutingShape {
    /// Zipf exponent of the experts' popularity: weight `1 / (rank + 1)^s`, the ranking rotated
    /// from layer to layer (each layer has its own popular experts). 0: uniform.
    pub zipf: f64,
    /// `Choose::repeat`.
    pub repeat: f64,
    /// `Choose::known_ahead`.
    pub known_ahead: u32,
    /// `Choose::accuracy`.
    pub accuracy: f64,
}

impl RoutingShape {
    /// Mixtral-8x7B decoding (sources and what is assumed: README, "Routed models").
    pub const MIXTRAL: RoutingShape = RoutingShape {
        zipf: 1.0,
        repeat: 0.3,
        known_ahead: 1,
        accuracy: 0.85,
    };

    /// DeepSeek-V3 decoding (sources and what is assumed: README, "Routed models").
    pub const DEEPSEEK_V3: RoutingShape = RoutingShape {
        zipf: 0.8,
        repeat: 0.2,
        known_ahead: 1,
        accuracy: 0.8,
    };
}

/// Sets every routed step of `w` to route as `shape` says.
pub fn with_routing(mut w: Workload, shape: RoutingShape) -> Workload {
    let mut layer = 0usize;
    for st in &mut w.steps {
        let Some(c) = st.choose.as_mut() else {
            continue;
        };
        let n = c.from.len();
        if shape.zipf > 0.0 {
            // A stride coprime with most expert counts spreads the popular ones over the layers.
            c.popularity = Some(
                (0..n)
                    .map(|e| {
                        let rank = (e + n - (layer * 5) % n) % n;
                        1.0 / ((rank + 1) as f64).powf(shape.zipf)
                    })
                    .collect(),
            );
        }
        c.repeat = (shape.repeat > 0.0).then_some(shape.repeat);
        c.known_ahead = (shape.known_ahead > 0).then_some(shape.known_ahead);
        c.accuracy = (shape.accuracy < 1.0).then_some(shape.accuracy);
        layer += 1;
    }
    w
}

/// The model `synapswap run` decodes: [`LlamaShape::LLAMA_8L`] with `layers` layers, the last
/// layer's KV cache with [`Policy::Lru`]. The keep plan keeps the other caches resident (as in
/// [`llama`], where nothing is ever written back); this one it neither keeps nor prefetches, so
/// it is loaded on demand at its use and evicted when the ring needs room: every token writes its
/// device-written rows back and reloads them, and the run checks them after the reload. The cost
/// is one 4 MiB demand load and one 4 MiB write-back per token.
pub fn run_model(layers: u64) -> Workload {
    let shape = LlamaShape {
        layers,
        ..LlamaShape::LLAMA_8L
    };
    let name = format!("llama-7b-shaped-{layers}l-bf16-decode");
    let mut w = llama(&name, shape, DeviceModel::CONSUMER);
    if let Some(kv) = w.blocks.iter_mut().rev().find(|b| b.mutable) {
        kv.policy = Policy::Lru;
    }
    w
}

/// Many small tensors: `count` blocks of `bytes`, `per_step` to a step, each used once per pass,
/// and almost no compute, so the pass is copy-bound and each copy's fixed cost shows (the shape of
/// per-expert tensors, norms and biases, or of paged KV blocks). What it measures is whether a
/// step's small copies go as one (see `transfer.rs`, "Coalescing").
pub fn small_tensors(count: u64, bytes: u64, per_step: u64) -> Workload {
    tensors(count, bytes, per_step, false)
}

/// [`small_tensors`], with each step's tensors spread over the model instead: step `s` of `n`
/// uses the tensors `s`, `s + n`, `s + 2n`, ..., so no two of a step are adjacent in allocation
/// order, as separate framework tensors are not. On the device they still take consecutive ring
/// slots; on the host they never follow on, so they go as separate copies, batched into one
/// submission (see `transfer.rs`, "Coalescing").
pub fn scattered_tensors(count: u64, bytes: u64, per_step: u64) -> Workload {
    tensors(count, bytes, per_step, true)
}

fn tensors(count: u64, bytes: u64, per_step: u64, scattered: bool) -> Workload {
    let per_step = per_step.max(1);
    let n = count.div_ceil(per_step);
    let blocks: Vec<BlockDesc> = (0..count)
        .map(|i| BlockDesc {
            name: format!("t{i}"),
            bytes,
            priority: DEFAULT_PRIORITY,
            policy: Policy::Auto,
            mutable: false,
        })
        .collect();
    let steps = (0..n)
        .map(|s| StepDesc {
            compute_s: 1e-6,
            uses: if scattered {
                (s..count)
                    .step_by(n as usize)
                    .map(|i| format!("t{i}"))
                    .collect()
            } else {
                (s * per_step..((s + 1) * per_step).min(count))
                    .map(|i| format!("t{i}"))
                    .collect()
            },
            choose: None,
        })
        .collect();
    let kind = if scattered { "scattered" } else { "small" };
    Workload {
        name: format!("{kind}-tensors-{count}x{}k-{per_step}-a-step", bytes >> 10),
        vram_budget: None,
        h2d_bytes_per_s: None,
        passes: None,
        blocks,
        steps,
    }
}

/// A diffusion UNet shaped like SDXL's (its layer shapes approximated: 2.1 B parameters against
/// SDXL's 2.6 B, fp16, 128x128 latents, batch 2 for
/// classifier-free guidance): per-level resnet and transformer weights on the way down, a middle
/// block, and the way up; each down block's output is a skip activation (a mutable block) written
/// on the way down and read by the matching up block, so it is used at two distant steps of a pass.
pub fn unet(name: &str, device: DeviceModel) -> Workload {
    let d = 2u64;
    let batch = 2u64;
    // (channels, latent side, transformer blocks per attention layer)
    let levels = [(320u64, 128u64, 0u64), (640, 64, 2), (1280, 32, 10)];
    let mut blocks: Vec<BlockDesc> = Vec::new();
    let mut steps: Vec<StepDesc> = Vec::new();
    let conv = |c: u64, side: u64| {
        // Two 3x3 convolutions c->c per resnet block.
        let params = 2 * 9 * c * c;
        let px = side * side * batch;
        (
            params,
            device.time(
                2.0 * (params * px) as f64,
                (params * d + 4 * c * px * d) as f64,
            ),
        )
    };
    // One transformer layer (an offloader hooks each one): self-attention (4c^2), cross-attention
    // (2c^2 + 2 * 2048c), GEGLU feed-forward (12c^2).
    let xformer = |c: u64, side: u64| {
        let params = 18 * c * c + 4096 * c;
        let tokens = side * side * batch;
        let attn = 4 * side * side * tokens * c;
        (
            params,
            device.time(
                (2 * params * tokens + attn) as f64,
                (params * d + 6 * c * tokens * d) as f64,
            ),
        )
    };
    let mut skips: Vec<String> = Vec::new();
    let push = |blocks: &mut Vec<BlockDesc>,
                steps: &mut Vec<StepDesc>,
                wname: String,
                params: u64,
                compute: f64,
                extra: Vec<String>| {
        blocks.push(block_desc(
            wname.clone(),
            params * d,
            false,
            DEFAULT_PRIORITY,
        ));
        let mut uses = vec![wname];
        uses.extend(extra);
        steps.push(StepDesc {
            compute_s: compute,
            uses,
            choose: None,
        });
    };
    for (li, &(c, side, depth)) in levels.iter().enumerate() {
        for r in 0..2 {
            let (p, t) = conv(c, side);
            let skip = format!("down{li}.{r}.skip");
            blocks.push(block_desc(
                skip.clone(),
                c * side * side * batch * d,
                true,
                6,
            ));
            push(
                &mut blocks,
                &mut steps,
                format!("down{li}.{r}.resnet"),
                p,
                t,
                vec![skip.clone()],
            );
            for x in 0..depth {
                let (p, t) = xformer(c, side);
                push(
                    &mut blocks,
                    &mut steps,
                    format!("down{li}.{r}.attn{x}"),
                    p,
                    t,
                    vec![],
                );
            }
            skips.push(skip);
        }
    }
    let (c, side, depth) = levels[levels.len() - 1];
    let (p, t) = conv(c, side);
    push(&mut blocks, &mut steps, "mid.resnet0".into(), p, t, vec![]);
    for x in 0..depth {
        let (p, t) = xformer(c, side);
        push(
            &mut blocks,
            &mut steps,
            format!("mid.attn{x}"),
            p,
            t,
            vec![],
        );
    }
    let (p, t) = conv(c, side);
    push(&mut blocks, &mut steps, "mid.resnet1".into(), p, t, vec![]);
    for (li, &(c, side, depth)) in levels.iter().enumerate().rev() {
        for r in 0..2 {
            let (p, t) = conv(c, side);
            let skip = skips.pop().expect("one skip per down block");
            push(
                &mut blocks,
                &mut steps,
                format!("up{li}.{r}.resnet"),
                p * 3 / 2,
                t * 1.5,
                vec![skip],
            );
            for x in 0..depth {
                let (p, t) = xformer(c, side);
                push(
                    &mut blocks,
                    &mut steps,
                    format!("up{li}.{r}.attn{x}"),
                    p,
                    t,
                    vec![],
                );
            }
        }
    }
    Workload {
        name: name.to_string(),
        vram_budget: None,
        h2d_bytes_per_s: None,
        passes: None,
        blocks,
        steps,
    }
}

/// PCIe 4.0 x16 pinned host-to-device bandwidth of a consumer GPU (the presets' default link):
/// 25 GB/s, assumed (the figure DESIGN.md quotes for PCIe 4; not measured here).
pub const CONSUMER_PCIE_H2D: f64 = 25e9;

/// Built-in workloads: name and one-line description.
pub const PRESETS: &[(&str, &str)] = &[
    ("llama-7b", "Llama-2-7B fp16 decode, 4 GiB budget, PCIe 4.0"),
    ("llama-7b-prefill", "Llama-2-7B fp16 prefill of a 4096-token prompt, 4 GiB budget"),
    ("llama-70b", "Llama-2-70B fp16 decode, 24 GiB budget, PCIe 4.0"),
    ("llama-70b-prefill", "Llama-2-70B fp16 prefill of a 4096-token prompt, 24 GiB budget"),
    ("mixtral-8x7b", "Mixtral-8x7B fp16 decode, 2 of 8 experts routed per layer, 16 GiB budget"),
    (
        "mixtral-8x7b-routed",
        "the same, routed as real routers are: skewed, repeating, guessed a step ahead (0.85)",
    ),
    (
        "deepseek-v3",
        "DeepSeek-V3-shaped FP8 decode: 8 of 256 experts per layer plus a shared one, 24 GiB budget",
    ),
    (
        "deepseek-v3-routed",
        "the same, routed as real routers are: skewed, repeating, guessed a step ahead (0.8)",
    ),
    ("unet-sdxl", "SDXL-shaped diffusion UNet fp16, skip connections, 2 GiB budget"),
    ("run", "the default `synapswap run` model: Llama-7B-shaped, 8 layers, half of it in budget, 2 GB/s"),
    ("small-tensors", "4,000 tensors of 64 KiB, 16 a step, no compute, half in budget, 2 GB/s"),
    (
        "scattered-tensors",
        "the same, each step's 16 spread over the model (never adjacent on the host)",
    ),
];

const GIB: u64 = 1 << 30;

/// A built-in workload by name (see [`PRESETS`]).
pub fn preset(name: &str) -> Option<Workload> {
    let dev = DeviceModel::CONSUMER;
    let with = |mut w: Workload, budget: u64, bw: f64, passes: u64| {
        w.vram_budget = Some(budget);
        w.h2d_bytes_per_s = Some(bw);
        w.passes = Some(passes);
        w
    };
    Some(match name {
        "llama-7b" => with(
            llama(name, LlamaShape::LLAMA_7B, dev),
            4 * GIB,
            CONSUMER_PCIE_H2D,
            16,
        ),
        "llama-7b-prefill" => with(
            llama_batch(name, LlamaShape::LLAMA_7B, dev, 4096),
            4 * GIB,
            CONSUMER_PCIE_H2D,
            4,
        ),
        "llama-70b" => with(
            llama(name, LlamaShape::LLAMA_70B, dev),
            24 * GIB,
            CONSUMER_PCIE_H2D,
            8,
        ),
        "llama-70b-prefill" => with(
            llama_batch(name, LlamaShape::LLAMA_70B, dev, 4096),
            24 * GIB,
            CONSUMER_PCIE_H2D,
            3,
        ),
        "mixtral-8x7b" => with(
            llama(name, LlamaShape::MIXTRAL_8X7B, dev),
            16 * GIB,
            CONSUMER_PCIE_H2D,
            32,
        ),
        "mixtral-8x7b-routed" => with(
            with_routing(
                llama(name, LlamaShape::MIXTRAL_8X7B, dev),
                RoutingShape::MIXTRAL,
            ),
            16 * GIB,
            CONSUMER_PCIE_H2D,
            64,
        ),
        "deepseek-v3" => with(
            llama(name, LlamaShape::DEEPSEEK_V3, dev),
            24 * GIB,
            CONSUMER_PCIE_H2D,
            32,
        ),
        "deepseek-v3-routed" => with(
            with_routing(
                llama(name, LlamaShape::DEEPSEEK_V3, dev),
                RoutingShape::DEEPSEEK_V3,
            ),
            24 * GIB,
            CONSUMER_PCIE_H2D,
            64,
        ),
        "unet-sdxl" => with(unet(name, dev), 2 * GIB, CONSUMER_PCIE_H2D, 10),
        "run" => {
            let w = run_model(LlamaShape::LLAMA_8L.layers);
            let half = w.model_bytes() / 2 / (1 << 20) * (1 << 20);
            with(w, half, crate::backend::sim::DEFAULT_SIM_H2D, 8)
        }
        "small-tensors" | "scattered-tensors" => {
            let w = if name == "small-tensors" {
                small_tensors(4000, 64 << 10, 16)
            } else {
                scattered_tensors(4000, 64 << 10, 16)
            };
            let half = w.model_bytes() / 2;
            with(w, half, crate::backend::sim::DEFAULT_SIM_H2D, 8)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_model_is_big_enough() {
        let w = llama("llama-8l", LlamaShape::LLAMA_8L, DeviceModel::CONSUMER);
        w.resolve().unwrap();
        assert!(w.model_bytes() >= 3 << 30, "{}", w.model_bytes());
        assert_eq!(w.steps.len(), 1 + 8 * 8);
        assert!(w.compute_s_per_pass() > 0.0);
    }

    #[test]
    fn bad_workloads_are_rejected() {
        let mut w = llama("t", LlamaShape::TINY, DeviceModel::CONSUMER);
        w.steps[1].uses.push("nope".into());
        assert!(w.resolve().unwrap_err().to_string().contains("nope"));
        let mut w = llama("t", LlamaShape::TINY, DeviceModel::CONSUMER);
        w.blocks[0].bytes = 0;
        assert!(w.resolve().is_err());
        let mut w = llama("t", LlamaShape::TINY, DeviceModel::CONSUMER);
        w.blocks[1].name = w.blocks[0].name.clone();
        assert!(w.resolve().is_err());
        let e =
            serde_json::from_str::<Workload>(r#"{"name":"x","blocks":[],"steps":[],"bogus":1}"#);
        assert!(e.is_err());
    }

    #[test]
    fn presets_have_the_published_sizes() {
        let gib = |n: &str| preset(n).unwrap().model_bytes() as f64 / GIB as f64;
        // Llama-2-7B is 6.7 B parameters (the 0.26 GB embedding is gathered on the host), plus
        // a 1024-token fp16 KV cache (0.5 GiB).
        assert!(
            (12.3..13.0).contains(&gib("llama-7b")),
            "{}",
            gib("llama-7b")
        );
        // Llama-2-70B: 69 B parameters.
        assert!(
            (127.0..129.5).contains(&gib("llama-70b")),
            "{}",
            gib("llama-70b")
        );
        // Mixtral-8x7B: 46.7 B parameters.
        assert!(
            (86.0..87.5).contains(&gib("mixtral-8x7b")),
            "{}",
            gib("mixtral-8x7b")
        );
        // SDXL's UNet has 2.6 B parameters; this approximation of its layers has 2.1 B.
        assert!(
            (3.5..5.5).contains(&gib("unet-sdxl")),
            "{}",
            gib("unet-sdxl")
        );
        for (name, _) in PRESETS {
            let w = preset(name).unwrap();
            w.resolve().unwrap();
            assert!(
                w.vram_budget.unwrap() < w.model_bytes(),
                "{name} must stream"
            );
        }
        assert!(preset("nope").is_none());
    }

    #[test]
    fn unet_skips_are_used_twice_per_pass() {
        let w = preset("unet-sdxl").unwrap();
        let r = w.resolve().unwrap();
        for (i, b) in w.blocks.iter().enumerate() {
            let uses = r.steps.iter().filter(|s| s.uses.contains(&i)).count();
            assert_eq!(
                uses,
                if b.name.ends_with(".skip") { 2 } else { 1 },
                "{}",
                b.name
            );
        }
    }

    #[test]
    fn routed_draws_are_seeded_and_uniform() {
        let w = preset("mixtral-8x7b").unwrap();
        let r = w.resolve_seeded(7).unwrap();
        assert!(r.is_routed());
        let s = r.steps.iter().position(|s| s.choose.is_some()).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut counts = std::collections::HashMap::new();
        let (mut da, mut db) = (
            crate::routing::Draws::new(&r),
            crate::routing::Draws::new(&r),
        );
        for pass in 0..4000 {
            da.blocks(pass, s, &mut a);
            db.blocks(pass, s, &mut b);
            assert_eq!(a, b);
            assert_eq!(a.len(), 2);
            for &x in &a {
                *counts.entry(x).or_insert(0u32) += 1;
            }
        }
        assert_eq!(counts.len(), 8);
        // 1000 expected per expert; a uniform draw stays well inside +-15%.
        assert!(
            counts.values().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
        let decl = r.declarations();
        assert!(decl.iter().any(|&(_, _, p)| (p - 0.25).abs() < 1e-9));
        let mut other = w.resolve_seeded(8).unwrap();
        crate::routing::Draws::new(&other).blocks(0, s, &mut a);
        other.seed = 7;
        crate::routing::Draws::new(&other).blocks(0, s, &mut b);
        crate::routing::Draws::new(&r).blocks(0, s, &mut a);
        assert_eq!(a, b);
    }

    /// An expert of several blocks (its gate, up and down projections) is drawn as one: every
    /// pass uses all of an expert's blocks or none, and the budget counts whole experts.
    #[test]
    fn experts_of_several_blocks_are_drawn_together() {
        let json = r#"{"name":"moe","blocks":[
            {"name":"a.w1","bytes":4096},{"name":"a.w2","bytes":4096},
            {"name":"b.w1","bytes":4096},{"name":"b.w2","bytes":4096},
            {"name":"c","bytes":12288}],
            "steps":[{"compute_s":0.1,"uses":[],
                      "choose":{"k":1,"from":[["a.w1","a.w2"],["b.w1","b.w2"],"c"]}}]}"#;
        let w: Workload = serde_json::from_str(json).unwrap();
        let r = w.resolve_seeded(3).unwrap();
        let mut got = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut draws = crate::routing::Draws::new(&r);
        for pass in 0..300 {
            draws.blocks(pass, 0, &mut got);
            got.sort_unstable();
            assert!(
                [vec![0, 1], vec![2, 3], vec![4]].contains(&got),
                "pass {pass}: {got:?}"
            );
            seen.insert(got.clone());
        }
        assert_eq!(seen.len(), 3, "every expert is drawn");
        let decl = r.declarations();
        assert_eq!(decl.len(), 5);
        assert!(decl.iter().all(|&(_, _, p)| (p - 1.0 / 3.0).abs() < 1e-12));
        // The largest expert is `c` (12 KiB), not a pair of 4 KiB blocks.
        assert_eq!(w.min_budget().unwrap().0, 12288);
        // A whole expert's bytes per pass: each block at 1/3.
        assert!((w.bytes_per_pass().unwrap() - 28672.0 / 3.0).abs() < 1e-6);
        // Written back, a single-block expert stays a name.
        let back = serde_json::to_string(&w).unwrap();
        assert!(
            back.contains(r#"["a.w1","a.w2"],["b.w1","b.w2"],"c"]"#),
            "{back}"
        );
    }

    #[test]
    fn bad_choices_are_rejected() {
        let json = |choose: &str| {
            format!(
                r#"{{"name":"x","blocks":[{{"name":"a","bytes":1}},{{"name":"b","bytes":1}}],
                "steps":[{{"compute_s":0.1,"uses":[],"choose":{choose}}}]}}"#
            )
        };
        for (c, want) in [
            (r#"{"k":0,"from":["a","b"]}"#, "choose.k"),
            (r#"{"k":3,"from":["a","b"]}"#, "choose.k"),
            (r#"{"k":1,"from":["a","zz"]}"#, "zz"),
            (r#"{"k":1,"from":["a","a"]}"#, "twice"),
            (r#"{"k":1,"from":[["a","b"],"b"]}"#, "twice"),
            (r#"{"k":1,"from":[[],"b"]}"#, "empty"),
            (r#"{"k":2,"from":[["a","b"]]}"#, "choose.k"),
        ] {
            let w: Workload = serde_json::from_str(&json(c)).unwrap();
            let e = w.resolve().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let w: Workload = serde_json::from_str(&json(r#"{"k":1,"from":["a","b"]}"#)).unwrap();
        w.resolve().unwrap();
        assert!((w.bytes_per_pass().unwrap() - 1.0).abs() < 1e-9);
    }
}
