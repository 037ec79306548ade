//! Routed experts (mixture-of-experts models): which tensors are experts, how many a token uses,
//! and the blocks they become.
//!
//! # Which tensors are experts
//! - **One tensor per expert and projection**, as Hugging Face checkpoints of Mixtral, Qwen-MoE
//!   and DeepSeek store them: a name with an `experts` component followed by an integer,
//!   `model.layers.3.block_sparse_moe.experts.5.w1.weight`. The expert is
//!   (`model.layers.3.block_sparse_moe.experts`, 5), and its tensors (`w1`, `w2`, `w3`) are one
//!   candidate, drawn together. Shared experts (`shared_expert`, `shared_experts` with no
//!   integer) and the router are ordinary uses.
//! - **Packed**: one tensor holding every expert of a layer, as GGUF stores them
//!   (`blk.3.ffn_gate_exps.weight`, the expert index its outermost dimension, the last of GGUF's
//!   shape) and some safetensors checkpoints (`model.layers.3.mlp.experts.gate_up_proj`, the first
//!   of its shape). When the model's expert count is known and is that dimension, the tensor is
//!   cut into that many equal, contiguous slices, one block each (`blk.3.ffn_gate_exps.weight[5]`),
//!   and slice `e` of each packed tensor of the layer is expert `e`. Otherwise it stays one block.
//!
//! # How many a token uses
//! From `config.json` beside the safetensors files (`num_experts_per_tok`, and the expert count
//! as `num_local_experts`, `num_experts` or `n_routed_experts`), or from the GGUF metadata
//! (`<arch>.expert_used_count`, `<arch>.expert_count`). A step whose experts are known becomes a
//! routed step of the workload: `k` of its experts drawn per pass, each declared to the engine with
//! probability `k / n` (at batch `b`, `min(k b, n)` of them). Without `k` every expert is an
//! ordinary use: the bytes a pass moves are then overstated, never understated.

use std::path::Path;

use super::{bad, Model};
use crate::Result;

/// The routing a model's configuration gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoeConfig {
    /// Routed experts per layer.
    pub experts: Option<u64>,
    /// Experts a token uses per layer (`num_experts_per_tok`).
    pub active: Option<u64>,
    /// Where this was read.
    pub source: String,
}

/// A block of a model: a whole tensor, or one expert's slice of a packed tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The tensor's name, with `[e]` for a slice.
    pub name: String,
    /// Which of the model's tensors it is (or is a slice of).
    pub tensor: usize,
    /// Which of the model's files holds it.
    pub file: usize,
    /// Its bytes within that file: `offset..offset + bytes`.
    pub offset: u64,
    /// Its length in bytes.
    pub bytes: u64,
    /// Its parameters.
    pub elements: u64,
    /// The expert it belongs to: (the experts' group, the expert's index).
    pub expert: Option<(String, u64)>,
}

/// Reads the routing from `config.json` in `dir`; `None` without the file or without MoE keys.
pub(super) fn read_config_json(dir: &Path) -> Result<Option<MoeConfig>> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| bad(&path, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&path, format!("invalid JSON: {e}")))?;
    // Multimodal configs nest the language model's under `text_config`.
    let cfg = json.get("text_config").unwrap_or(&json);
    let int = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| cfg.get(*k).and_then(serde_json::Value::as_u64))
            .filter(|&n| n > 0)
    };
    let experts = int(&["num_local_experts", "num_experts", "n_routed_experts"]);
    let active = int(&["num_experts_per_tok"]);
    Ok((experts.is_some() || active.is_some()).then(|| MoeConfig {
        experts,
        active,
        source: format!("{}", path.display()),
    }))
}

/// The expert a tensor name is one tensor of: `(group, index)` from `... .experts.<E>. ...`.
fn named_expert(name: &str) -> Option<(String, u64)> {
    let parts: Vec<&str> = name.split('.').collect();
    let at = parts.windows(2).position(|w| {
        w[0] == "experts" && !w[1].is_empty() && w[1].bytes().all(|b| b.is_ascii_digit())
    })?;
    Some((parts[..=at].join("."), parts[at + 1].parse().ok()?))
}

/// The experts' group of a packed tensor, and which of its dimensions is the expert index:
/// GGUF's `*_exps` (the last of its shape), or a tensor under an `experts` component with no
/// index after it (the first).
fn packed_group(model: &Model, name: &str) -> Option<(String, usize)> {
    let parts: Vec<&str> = name.split('.').collect();
    if model.format == "gguf" {
        let at = parts.iter().position(|p| p.contains("_exps"))?;
        let dims = model.tensors.iter().find(|t| t.name == name)?.shape.len();
        return Some((
            format!("{}.exps", parts[..at].join(".")),
            dims.checked_sub(1)?,
        ));
    }
    let at = parts.iter().position(|&p| p == "experts")?;
    Some((parts[..=at].join("."), 0))
}

impl Model {
    /// A line on the model's routed experts for reports: how many a token uses of how many, per
    /// routed step, and where that was read; `None` for a model with no expert tensors.
    pub fn routing_summary(&self) -> Option<String> {
        let w = self.workload();
        let (pieces, _) = self.pieces();
        if !pieces.iter().any(|p| p.expert.is_some()) {
            return None;
        }
        let routed: Vec<_> = w.steps.iter().filter_map(|s| s.choose.as_ref()).collect();
        let source = self.moe.as_ref().map_or("", |m| m.source.as_str());
        Some(match routed.first() {
            Some(c) => format!(
                "{} of {} experts a token in {} routed steps (from {source})",
                c.k,
                c.from.len(),
                routed.len()
            ),
            None => format!(
                "expert tensors, but no experts-per-token figure (num_experts_per_tok in config.json, or <arch>.expert_used_count in GGUF{}): every expert counts as used",
                if source.is_empty() { String::new() } else { format!("; read {source}") }
            ),
        })
    }

    /// The model's blocks: a piece per tensor with bytes (empty tensors are no block), except
    /// that a packed expert tensor is cut into one slice per expert when the expert count is
    /// known (see the module docs). Also returns, per tensor, its pieces.
    pub fn pieces(&self) -> (Vec<Piece>, Vec<Vec<usize>>) {
        let experts = self.moe.as_ref().and_then(|m| m.experts);
        let mut pieces = Vec::with_capacity(self.tensors.len());
        let mut of_tensor = Vec::with_capacity(self.tensors.len());
        for (i, t) in self.tensors.iter().enumerate() {
            let mut mine = Vec::new();
            if t.bytes > 0 {
                let named = named_expert(&t.name);
                let packed = match (&named, experts) {
                    (None, Some(n)) if n >= 2 => packed_group(self, &t.name).filter(|(_, d)| {
                        t.shape.get(*d) == Some(&n) && t.bytes % n == 0 && t.elements % n == 0
                    }),
                    _ => None,
                };
                match (packed, experts) {
                    (Some((group, _)), Some(n)) => {
                        let (bytes, elements) = (t.bytes / n, t.elements / n);
                        for e in 0..n {
                            mine.push(pieces.len());
                            pieces.push(Piece {
                                name: format!("{}[{e}]", t.name),
                                tensor: i,
                                file: t.file,
                                offset: t.offset + e * bytes,
                                bytes,
                                elements,
                                expert: Some((group.clone(), e)),
                            });
                        }
                    }
                    _ => {
                        mine.push(pieces.len());
                        pieces.push(Piece {
                            name: t.name.clone(),
                            tensor: i,
                            file: t.file,
                            offset: t.offset,
                            bytes: t.bytes,
                            elements: t.elements,
                            expert: named,
                        });
                    }
                }
            }
            of_tensor.push(mine);
        }
        (pieces, of_tensor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expert_names_are_read_from_every_family() {
        assert_eq!(
            named_expert("model.layers.3.block_sparse_moe.experts.5.w1.weight"),
            Some(("model.layers.3.block_sparse_moe.experts".into(), 5))
        );
        assert_eq!(
            named_expert("model.layers.0.mlp.experts.63.down_proj.weight"),
            Some(("model.layers.0.mlp.experts".into(), 63))
        );
        assert_eq!(
            named_expert("model.layers.0.mlp.shared_expert.up_proj.weight"),
            None
        );
        assert_eq!(named_expert("model.layers.0.mlp.gate.weight"), None);
        assert_eq!(
            named_expert("model.layers.0.mlp.experts.gate_up_proj"),
            None
        );
    }
}
