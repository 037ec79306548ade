//! `synapswap plan`: what a model would do on a device, before running it. Which tensors the keep
//! plan holds resident, and the predicted tokens/s of each policy, from the simulator running the
//! same planner (and, for the host-compute policy, a roofline of the host's memory bandwidth).
//!
//! Each peer is modelled as it really runs, as far as the simulator can say:
//! - `stream-sync` (accelerate's offload hooks) copies from pageable memory: its link is the
//!   profile's pageable bandwidth (on the H200, pageable copies ran at 6.5-8.6 GB/s against 55.4
//!   pinned: `../shared/DESIGN.md`), not the pinned one;
//! - `lookahead` (ZeRO-Inference) copies from pinned buffers two steps ahead;
//! - `host-compute` (llama.cpp's partial offload): the first tensors in execution order that fit
//!   are resident and computed on the device, the rest are computed by the CPU where they lie, by
//!   the host's roofline: its memory bandwidth (one read of their bytes per pass) and FLOP/s;
//! - `all-resident`, when the model fits the budget.

use serde::Serialize;

use crate::model::Model;
use crate::planner::{Planner, PlannerConfig};
use crate::simulate::{simulate, SimPolicy, SimulateConfig};
use crate::workload::DeviceModel;
use crate::{BlockSpec, Error, Result};

/// A device's figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DeviceProfile {
    /// Short name (`--gpu`).
    pub name: &'static str,
    /// Device memory, bytes.
    pub vram_bytes: u64,
    /// Host-to-device bandwidth from pinned memory, bytes/s.
    pub h2d_pinned: f64,
    /// Host-to-device bandwidth from pageable memory, bytes/s.
    pub h2d_pageable: f64,
    /// Device memory bandwidth, bytes/s.
    pub hbm: f64,
    /// Dense 16-bit math, FLOP/s.
    pub flops: f64,
    /// Where the figures come from.
    pub source: &'static str,
}

const GB: f64 = 1e9;
const T: f64 = 1e12;
const GIB: u64 = 1 << 30;
impl DeviceProfile {
    /// The roofline the workload's step times are estimated on.
    pub fn model(&self) -> DeviceModel {
        DeviceModel {
            flops: self.flops,
            mem_bytes_per_s: self.hbm,
        }
    }
}

/// The built-in profiles (`--gpu NAME`); flags override any figure.
pub const PROFILES: &[DeviceProfile] = &[
    DeviceProfile {
        name: "rtx3060",
        vram_bytes: 12 * GIB,
        h2d_pinned: 25.0 * GB,
        h2d_pageable: 6.5 * GB,
        hbm: 360.0 * GB,
        flops: 51.0 * T,
        source: "RTX 3060: 12 GB, 360 GB/s, 51 TFLOP/s fp16 tensor; assumed (vendor spec sheet) with a PCIe 4.0 link of 25 GB/s pinned, 6.5 pageable (assumed)",
    },
    DeviceProfile {
        name: "rtx3090",
        vram_bytes: 24 * GIB,
        h2d_pinned: 25.0 * GB,
        h2d_pageable: 6.5 * GB,
        hbm: 936.0 * GB,
        flops: 71.0 * T,
        source: "RTX 3090: 24 GB, 936 GB/s, 71 TFLOP/s fp16 tensor; assumed (vendor spec sheet) with a PCIe 4.0 link of 25 GB/s pinned, 6.5 pageable (assumed)",
    },
    DeviceProfile {
        name: "rtx4090",
        vram_bytes: 24 * GIB,
        h2d_pinned: 25.0 * GB,
        h2d_pageable: 6.5 * GB,
        hbm: 1008.0 * GB,
        flops: 165.0 * T,
        source: "RTX 4090: 24 GB, 1008 GB/s, 165 TFLOP/s fp16 tensor; assumed (vendor spec sheet) with a PCIe 4.0 link of 25 GB/s pinned, 6.5 pageable (assumed)",
    },
    DeviceProfile {
        name: "rtx5090",
        vram_bytes: 32 * GIB,
        h2d_pinned: 55.4 * GB,
        h2d_pageable: 6.5 * GB,
        hbm: 1792.0 * GB,
        flops: 209.0 * T,
        source: "RTX 5090: 32 GB, 1792 GB/s, 209 TFLOP/s fp16 tensor; assumed (vendor spec sheet); PCIe 5.0 link as measured on an H200 (55.4 pinned, 6.5 pageable: ../shared/DESIGN.md)",
    },
    DeviceProfile {
        name: "a100",
        vram_bytes: 80 * GIB,
        h2d_pinned: 25.0 * GB,
        h2d_pageable: 6.5 * GB,
        hbm: 2039.0 * GB,
        flops: 312.0 * T,
        source: "A100 80GB: 2039 GB/s, 312 TFLOP/s bf16 tensor; assumed (vendor spec sheet) with a PCIe 4.0 link of 25 GB/s pinned, 6.5 pageable (assumed)",
    },
    DeviceProfile {
        name: "h100",
        vram_bytes: 80 * GIB,
        h2d_pinned: 55.4 * GB,
        h2d_pageable: 6.5 * GB,
        hbm: 3350.0 * GB,
        flops: 989.0 * T,
        source: "H100 SXM: 80 GB, 3350 GB/s, 989 TFLOP/s bf16 tensor; assumed (vendor spec sheet); PCIe 5.0 link as measured on an H200 (55.4 pinned, 6.5 pageable: ../shared/DESIGN.md)",
    },
    DeviceProfile {
        name: "h200",
        vram_bytes: 141 * 1_000_000_000,
        h2d_pinned: 55.4 * GB,
        h2d_pageable: 6.5 * GB,
        hbm: 4800.0 * GB,
        flops: 989.0 * T,
        source: "H200: 141 GB, 4800 GB/s, 989 TFLOP/s bf16 tensor; assumed (vendor spec sheet); link measured on an H200: 55.4 GB/s pinned, 6.5-8.6 pageable (../shared/DESIGN.md)",
    },
];

/// A profile by name (`rtx4090`, `RTX 4090`, `4090` all match).
pub fn profile(name: &str) -> Option<DeviceProfile> {
    let key: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    PROFILES
        .iter()
        .find(|p| p.name == key || p.name.trim_start_matches("rtx") == key)
        .copied()
}

/// How to plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanConfig {
    /// The device.
    pub device: DeviceProfile,
    /// Device budget for the model, bytes.
    pub budget: u64,
    /// The host's memory bandwidth, for `host-compute`, bytes/s.
    pub host_bytes_per_s: f64,
    /// The host's math throughput, for `host-compute`, FLOP/s.
    pub host_flops: f64,
    /// Tokens per pass (1: decode; more: a batch, or a prompt's prefill).
    pub batch: u64,
    /// Host memory for the model file's pages, bytes; `None`: the file fits in RAM (no disk
    /// term).
    pub host_ram: Option<u64>,
    /// The disk's read rate, bytes/s (with `host_ram`).
    pub disk_bytes_per_s: f64,
}

/// What the disk allows when the model file is larger than RAM (see [`plan`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskPrediction {
    /// Host memory for the file's pages, bytes.
    pub ram_bytes: u64,
    /// The disk's read rate used, bytes/s.
    pub disk_bytes_per_s: f64,
    /// Bytes the RAM tier keeps cached: its default cap ([`crate::default_ram_cap`] of the RAM),
    /// at most what streams.
    pub cached_bytes: u64,
    /// Bytes read from the disk per token with the RAM tier: `(M - V - C) / batch`.
    pub synapswap_disk_bytes_per_token: f64,
    /// The same with the page cache left to itself (every other policy): a cyclic pass over
    /// more than it holds (the same usable memory) misses on every page (LRU), so all of
    /// `M - V` unless it fits.
    pub page_cache_disk_bytes_per_token: f64,
}

/// One policy's prediction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyPrediction {
    /// `synapswap`, `all-resident`, `stream-sync`, `lookahead` or `host-compute`.
    pub policy: &'static str,
    /// Predicted tokens/s (passes/s times the batch).
    pub tokens_per_s: f64,
    /// Bytes moved host-to-device per token.
    pub bytes_h2d_per_token: f64,
}

/// The model, as the plan reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSummary {
    /// What was opened.
    pub path: String,
    /// `safetensors` or `gguf`.
    pub format: &'static str,
    /// The family its tensor names suggest (`llama-like decoder`, `gpt-2`, ...).
    pub family: String,
    /// Number of tensors.
    pub tensors: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Steps of more than one tensor (the layers).
    pub layers: usize,
    /// Routed experts, when the model has them: how many a token uses and where that was read
    /// (`model/experts.rs`); `None` for a dense model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<String>,
}

/// A plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The model.
    pub model: ModelSummary,
    /// The device's figures used.
    pub device: DeviceProfile,
    /// The budget planned for.
    pub vram_budget_bytes: u64,
    /// Tokens per pass.
    pub batch: u64,
    /// The host's memory bandwidth (`host-compute`), bytes/s.
    pub host_bytes_per_s: f64,
    /// The host's FLOP/s (`host-compute`).
    pub host_flops: f64,
    /// Bytes the keep plan holds resident (the plan before measurements: the set that streams
    /// the fewest bytes).
    pub resident_bytes: u64,
    /// Those tensors' names.
    pub resident: Vec<String>,
    /// Each policy's prediction (with `host_ram`, at most what the disk allows).
    pub policies: Vec<PolicyPrediction>,
    /// The disk's term, when the plan was given the host's RAM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskPrediction>,
    /// One sentence: which policy wins, and whether computing on the host beats streaming.
    pub verdict: String,
}

/// The model's family, from its tensor names.
fn family(model: &Model) -> String {
    let has = |k: &str| model.tensors.iter().any(|t| t.name.contains(k));
    if has("block_sparse_moe") || has(".experts.") || has("ffn_gate_exps") {
        "mixture-of-experts".into()
    } else if has("model.layers.") || has("blk.") {
        "llama-like decoder".into()
    } else if has("transformer.h.") || has("h.0.attn.c_attn") {
        "gpt-2".into()
    } else if has("encoder.layer.") {
        "bert-like encoder".into()
    } else {
        "unknown".into()
    }
}

/// Plans `model` on `cfg.device` at `cfg.budget` (see the module docs).
pub fn plan(model: &Model, cfg: &PlanConfig) -> Result<Plan> {
    for (what, v) in [
        ("the host bandwidth", cfg.host_bytes_per_s),
        ("the host FLOP/s", cfg.host_flops),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(Error::Workload(format!("{what} must be positive")));
        }
    }
    let batch = cfg.batch.max(1);
    let device = cfg.device.model();
    let w = model.workload_on(device, batch);
    w.check_budget(cfg.budget)?;
    let bytes = model.bytes();
    let compute: f64 = w.steps.iter().map(|s| s.compute_s).sum();
    // The keep plan before measurements.
    let mut p = Planner::new(PlannerConfig::new(cfg.budget))?;
    let ids: Vec<_> = w
        .blocks
        .iter()
        .map(|b| p.add_block(BlockSpec::new(b.bytes)))
        .collect::<Result<_>>()?;
    let index: std::collections::HashMap<&str, usize> = w
        .blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (b.name.as_str(), i))
        .collect();
    for (s, step) in w.steps.iter().enumerate() {
        for u in &step.uses {
            p.declare(s as u64, ids[index[u.as_str()]])?;
        }
    }
    p.hint(0, 0.0);
    let mut resident = Vec::new();
    let mut resident_bytes = 0;
    for (i, &id) in ids.iter().enumerate() {
        if bytes <= cfg.budget || p.is_kept(id)? {
            resident.push(w.blocks[i].name.clone());
            resident_bytes += w.blocks[i].bytes;
        }
    }
    let per_token = |r: &crate::run::RunReport| PolicyPrediction {
        policy: "",
        tokens_per_s: r.tokens_per_s * batch as f64,
        bytes_h2d_per_token: r.bytes_h2d as f64 / (r.tokens.max(1) * batch) as f64,
    };
    let sim = |policy: SimPolicy, h2d: f64| -> Result<PolicyPrediction> {
        let c = SimulateConfig {
            budget: cfg.budget,
            h2d_bytes_per_s: h2d,
            d2h_bytes_per_s: h2d,
            tokens: 4,
            policy,
            ..SimulateConfig::for_workload(&w)
        };
        Ok(per_token(&simulate(&w, &c, &mut |_| {})?.report))
    };
    let mut policies = Vec::new();
    if bytes <= cfg.budget {
        policies.push(PolicyPrediction {
            policy: "all-resident",
            tokens_per_s: batch as f64 / compute.max(1e-12),
            bytes_h2d_per_token: 0.0,
        });
    }
    for (name, policy, h2d) in [
        ("synapswap", SimPolicy::Synapswap, cfg.device.h2d_pinned),
        (
            "stream-sync",
            SimPolicy::StreamSync,
            cfg.device.h2d_pageable,
        ),
        ("lookahead", SimPolicy::Lookahead, cfg.device.h2d_pinned),
    ] {
        policies.push(PolicyPrediction {
            policy: name,
            ..sim(policy, h2d)?
        });
    }
    // Host compute: the first steps that fit are resident, the rest computed where they lie,
    // by the host's roofline (its bytes read once a pass, 2 FLOPs per parameter per token; of a
    // routed step's experts, the share drawn: k / n of their bytes and parameters).
    let pieces = model.pieces().0;
    let mut used = 0u64;
    let mut t = 0.0;
    for s in &w.steps {
        let tensors = s.uses.iter().map(|u| index[u.as_str()]);
        let mut sb: u64 = tensors.clone().map(|i| w.blocks[i].bytes).sum();
        let mut params = tensors.map(|i| pieces[i].elements).sum::<u64>() as f64;
        let mut read = sb as f64;
        if let Some(c) = &s.choose {
            let share = f64::from(c.k) / c.from.len() as f64;
            for b in c
                .from
                .iter()
                .flat_map(|e| e.names())
                .map(|n| index[n.as_str()])
            {
                sb += w.blocks[b].bytes;
                read += share * w.blocks[b].bytes as f64;
                params += share * pieces[b].elements as f64;
            }
        }
        if used + sb <= cfg.budget {
            used += sb;
            t += s.compute_s;
        } else {
            let flops = 2.0 * params * batch as f64;
            t += (read / cfg.host_bytes_per_s).max(flops / cfg.host_flops);
        }
    }
    policies.push(PolicyPrediction {
        policy: "host-compute",
        tokens_per_s: batch as f64 / t.max(1e-12),
        bytes_h2d_per_token: 0.0,
    });
    // A model file larger than RAM: what is neither on the device nor cached in RAM is read
    // from the disk every pass (`ram_tier.rs` for SynapSwap; the page cache alone for the rest,
    // llama.cpp's mmap included).
    let disk = match cfg.host_ram {
        Some(ram) => {
            let bw = cfg.disk_bytes_per_s;
            if !(bw.is_finite() && bw > 0.0) {
                return Err(Error::Workload(
                    "the disk's read rate must be positive".into(),
                ));
            }
            let streamed = bytes.saturating_sub(cfg.budget);
            let usable = crate::default_ram_cap(ram);
            let cached = usable.min(streamed);
            let ours = (streamed - cached) as f64;
            let lru = if streamed <= usable {
                0.0
            } else {
                streamed as f64
            };
            for p in &mut policies {
                let read = match p.policy {
                    "synapswap" => ours,
                    "all-resident" => 0.0,
                    _ => lru,
                };
                if read > 0.0 {
                    p.tokens_per_s = p.tokens_per_s.min(batch as f64 * bw / read);
                }
            }
            Some(DiskPrediction {
                ram_bytes: ram,
                disk_bytes_per_s: bw,
                cached_bytes: cached,
                synapswap_disk_bytes_per_token: ours / batch as f64,
                page_cache_disk_bytes_per_token: lru / batch as f64,
            })
        }
        None => None,
    };
    let best = policies
        .iter()
        .max_by(|a, b| a.tokens_per_s.total_cmp(&b.tokens_per_s))
        .expect("at least two policies");
    let ours = policies
        .iter()
        .find(|p| p.policy == "synapswap")
        .expect("simulated");
    let host = policies.last().expect("host-compute");
    let verdict = if bytes <= cfg.budget {
        "the model fits the budget: everything stays resident, nothing streams".to_string()
    } else if host.tokens_per_s > ours.tokens_per_s {
        format!(
            "computing on the host beats streaming here: {:.2} tokens/s against {:.2} (at batch {batch}, each streamed byte serves {batch} token(s) for one trip over the link, while the host reads it at memory speed; streaming wins with larger batches or prefill, where each byte serves more tokens)",
            host.tokens_per_s, ours.tokens_per_s
        )
    } else {
        format!(
            "{} is fastest: {:.2} tokens/s (streaming beats computing on the host, {:.2} tokens/s, at batch {batch})",
            best.policy, best.tokens_per_s, host.tokens_per_s
        )
    };
    let layers = model.steps().iter().filter(|s| s.tensors.len() > 1).count();
    Ok(Plan {
        model: ModelSummary {
            path: model.path.display().to_string(),
            format: model.format,
            family: family(model),
            tensors: model.tensors.len(),
            bytes,
            layers,
            routing: model.routing_summary(),
        },
        device: cfg.device,
        vram_budget_bytes: cfg.budget,
        batch,
        host_bytes_per_s: cfg.host_bytes_per_s,
        host_flops: cfg.host_flops,
        resident_bytes,
        resident,
        policies,
        disk,
        verdict,
    })
}

/// The smallest budget (to a MiB, between a step's minimum and the model's size) at which
/// `synapswap` is predicted to reach `target` tokens/s, if any.
pub fn budget_for(model: &Model, cfg: &PlanConfig, target: f64) -> Result<Option<u64>> {
    let device = cfg.device.model();
    let (minimum, _) = model.workload_on(device, cfg.batch).min_budget()?;
    let rate = |budget: u64| -> Result<f64> {
        let p = plan(model, &PlanConfig { budget, ..*cfg })?;
        Ok(p.policies
            .iter()
            .map(|p| {
                if p.policy == "synapswap" || p.policy == "all-resident" {
                    p.tokens_per_s
                } else {
                    0.0
                }
            })
            .fold(0.0, f64::max))
    };
    let (mut lo, mut hi) = (minimum, model.bytes().max(minimum));
    if rate(hi)? < target {
        return Ok(None);
    }
    const MIB: u64 = 1 << 20;
    while hi - lo > MIB {
        let mid = lo + (hi - lo) / 2;
        if rate(mid)? >= target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Some(hi))
}

/// Predictions at `points` budgets spread from the least that runs the model to just above its
/// size (for `synapswap plan --plot`): (budget, every policy's prediction).
pub fn sweep(
    model: &Model,
    cfg: &PlanConfig,
    points: usize,
) -> Result<Vec<(u64, Vec<PolicyPrediction>)>> {
    let device = cfg.device.model();
    let (minimum, _) = model.workload_on(device, cfg.batch).min_budget()?;
    let top = model.bytes() + model.bytes() / 20;
    let n = points.max(2) as u64;
    (0..n)
        .map(|i| {
            let budget = minimum + (top.saturating_sub(minimum)) * i / (n - 1);
            let p = plan(model, &PlanConfig { budget, ..*cfg })?;
            Ok((budget, p.policies))
        })
        .collect()
}
