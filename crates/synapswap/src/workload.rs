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

/// One step: the blocks it uses and how long its computation takes on the modelled device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDesc {
    /// Modelled compute time of the step, seconds.
    pub compute_s: f64,
    /// Names of the blocks the step uses.
    pub uses: Vec<String>,
}

/// A model's blocks and steps. One pass over `steps` is one token of decoding.
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

impl Workload {
    /// Checks the workload and resolves each step's block names to indices into `blocks`.
    pub fn resolve(&self) -> Result<Vec<Vec<usize>>> {
        let bad = |m: String| Err(Error::Workload(m));
        if self.blocks.is_empty() {
            return bad("no blocks".into());
        }
        if self.steps.is_empty() {
            return bad("no steps".into());
        }
        let mut index = std::collections::HashMap::new();
        for (i, b) in self.blocks.iter().enumerate() {
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
        self.steps
            .iter()
            .enumerate()
            .map(|(s, step)| {
                if !(step.compute_s.is_finite() && step.compute_s >= 0.0) {
                    return Err(Error::Workload(format!(
                        "step {s} has an invalid compute_s {}",
                        step.compute_s
                    )));
                }
                let mut uses = Vec::with_capacity(step.uses.len());
                for name in &step.uses {
                    match index.get(name.as_str()) {
                        Some(&i) if !uses.contains(&i) => uses.push(i),
                        Some(_) => {}
                        None => {
                            return Err(Error::Workload(format!(
                                "step {s} uses unknown block '{name}'"
                            )))
                        }
                    }
                }
                Ok(uses)
            })
            .collect()
    }

    /// Bytes of all blocks (what one pass touches when every block is used).
    pub fn model_bytes(&self) -> u64 {
        self.blocks.iter().map(|b| b.bytes).sum()
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
    /// A consumer-class GPU: 1 TB/s of memory bandwidth, 100 TFLOP/s of bf16 math.
    pub const CONSUMER: DeviceModel = DeviceModel {
        flops: 100e12,
        mem_bytes_per_s: 1e12,
    };

    /// Roofline time of a step doing `flops` over `bytes`.
    pub fn time(&self, flops: f64, bytes: f64) -> f64 {
        (flops / self.flops).max(bytes / self.mem_bytes_per_s)
    }
}

/// Shape of a Llama-style decoder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlamaShape {
    /// Model width.
    pub hidden: u64,
    /// MLP width.
    pub intermediate: u64,
    /// Decoder layers.
    pub layers: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// Bytes per weight (2 for bf16/fp16).
    pub dtype_bytes: u64,
    /// KV-cache length in tokens (mutable blocks, one per layer).
    pub context: u64,
}

impl LlamaShape {
    /// Llama-2-7B's layer shapes in bf16 with 8 layers instead of 32: 3.29 GiB, the default
    /// `synapswap run` model (big enough to need streaming, small enough for a laptop's RAM).
    pub const LLAMA_8L: LlamaShape = LlamaShape {
        hidden: 4096,
        intermediate: 11008,
        layers: 8,
        vocab: 32000,
        dtype_bytes: 2,
        context: 256,
    };

    /// Llama-2-7B in bf16.
    pub const LLAMA_7B: LlamaShape = LlamaShape {
        layers: 32,
        ..Self::LLAMA_8L
    };

    /// A small model for tests: same structure, tiny tensors.
    pub const TINY: LlamaShape = LlamaShape {
        hidden: 128,
        intermediate: 352,
        layers: 4,
        vocab: 1000,
        dtype_bytes: 2,
        context: 16,
    };
}

/// A per-tensor decode workload for a Llama-shaped model: one block per weight tensor plus one
/// mutable KV-cache block per layer, one step per matrix product, compute from the roofline.
pub fn llama(name: &str, shape: LlamaShape, device: DeviceModel) -> Workload {
    let LlamaShape {
        hidden: h,
        intermediate: f,
        layers,
        vocab,
        dtype_bytes: d,
        context,
    } = shape;
    let mut blocks = Vec::new();
    let mut steps = Vec::new();
    let mut block = |name: String, bytes: u64, mutable: bool, priority: u8| {
        blocks.push(BlockDesc {
            name: name.clone(),
            bytes,
            priority,
            policy: Policy::Auto,
            mutable,
        });
        name
    };
    // A matrix-vector product per weight at batch 1: 2 FLOPs and `d` bytes per weight.
    let matvec = |params: u64, extra_bytes: u64| {
        device.time(2.0 * params as f64, (params * d + extra_bytes) as f64)
    };
    // The token embedding is a row lookup: one row per token, gathered on the host (as llama.cpp
    // does when offloading), so the table itself never crosses PCIe and is not a block here.
    for l in 0..layers {
        let norm = block(format!("l{l}.attn_norm"), h * d, false, DEFAULT_PRIORITY);
        let q = block(format!("l{l}.wq"), h * h * d, false, DEFAULT_PRIORITY);
        let k = block(format!("l{l}.wk"), h * h * d, false, DEFAULT_PRIORITY);
        let v = block(format!("l{l}.wv"), h * h * d, false, DEFAULT_PRIORITY);
        let kv_bytes = 2 * context * h * d;
        let kv = block(format!("l{l}.kv"), kv_bytes, true, 8);
        let o = block(format!("l{l}.wo"), h * h * d, false, DEFAULT_PRIORITY);
        let norm2 = block(format!("l{l}.mlp_norm"), h * d, false, DEFAULT_PRIORITY);
        let gate = block(format!("l{l}.w_gate"), h * f * d, false, DEFAULT_PRIORITY);
        let up = block(format!("l{l}.w_up"), h * f * d, false, DEFAULT_PRIORITY);
        let down = block(format!("l{l}.w_down"), f * h * d, false, DEFAULT_PRIORITY);
        steps.push(StepDesc {
            compute_s: matvec(h * h, h * d),
            uses: vec![norm, q],
        });
        steps.push(StepDesc {
            compute_s: matvec(h * h, 0),
            uses: vec![k],
        });
        steps.push(StepDesc {
            compute_s: matvec(h * h, 0),
            uses: vec![v],
        });
        steps.push(StepDesc {
            compute_s: device.time((4 * context * h) as f64, kv_bytes as f64),
            uses: vec![kv],
        });
        steps.push(StepDesc {
            compute_s: matvec(h * h, 0),
            uses: vec![o],
        });
        steps.push(StepDesc {
            compute_s: matvec(h * f, h * d),
            uses: vec![norm2, gate],
        });
        steps.push(StepDesc {
            compute_s: matvec(h * f, 0),
            uses: vec![up],
        });
        steps.push(StepDesc {
            compute_s: matvec(f * h, 0),
            uses: vec![down],
        });
    }
    let norm = block("final_norm".into(), h * d, false, DEFAULT_PRIORITY);
    let head = block("lm_head".into(), vocab * h * d, false, DEFAULT_PRIORITY);
    steps.push(StepDesc {
        compute_s: matvec(vocab * h, h * d),
        uses: vec![norm, head],
    });
    Workload {
        name: name.to_string(),
        vram_budget: None,
        h2d_bytes_per_s: None,
        passes: None,
        blocks,
        steps,
    }
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
}
