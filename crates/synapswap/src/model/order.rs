//! Execution order from tensor names: which tensors each step of a pass uses.
//!
//! The rule (one rule for every family; it is what the common layouts' names encode):
//! - A tensor's *group* is its name up to and including its first integer component, split on
//!   `.`: `model.layers.3.self_attn.q_proj.weight` is in `model.layers.3` (Llama, Mistral, Qwen,
//!   Mixtral, DeepSeek, Gemma and Phi in Hugging Face naming), `transformer.h.3.attn.c_attn.weight`
//!   in `transformer.h.3` (GPT-2), `encoder.layer.3.output.dense.weight` in `encoder.layer.3`
//!   (BERT), `blk.3.attn_q.weight` in `blk.3` (GGUF).
//! - Groups are steps, ordered by their prefix's first appearance in the files, then by the
//!   integer (numerically: files list `layers.10` before `layers.2`).
//! - Tensors with no integer come before the groups if they look like embeddings (`embed`,
//!   `wte`, `wpe`, `token_embd` in the name), else after them (final norm, `lm_head`), each as
//!   one step.
//! - A file with no integer in any name is one pass in file order, a tensor a step.
//!
//! What names cannot say: a UNet's `down_blocks.N` and `up_blocks.N` interleave, an
//! encoder-decoder runs in two halves, and a tied `lm_head` (stored once, as the embedding) is
//! used twice. Such models take an order file ([`read_order`]: `--order FILE`), which
//! `synapswap.torch`'s `OffloadHandle.save_order` writes from a real forward.

use std::collections::HashMap;

use super::Tensor;

/// One step of the pass: a name for reports and the tensors it uses (indices into the model's
/// tensors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The group (`model.layers.3`), or the tensor's name for a step of its own.
    pub name: String,
    /// Tensors used, in file order.
    pub tensors: Vec<usize>,
}

/// The group of a name: (prefix before the first integer component, the integer).
fn group(name: &str) -> Option<(String, u64)> {
    let parts: Vec<&str> = name.split('.').collect();
    let i = parts
        .iter()
        .position(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))?;
    let n = parts[i].parse().ok()?;
    Some((parts[..i].join("."), n))
}

fn looks_like_embedding(name: &str) -> bool {
    ["embed", "wte", "wpe", "token_embd"]
        .iter()
        .any(|k| name.contains(k))
}

/// The steps of one pass over `tensors` (see the module docs).
pub fn execution_order(tensors: &[Tensor]) -> Vec<Step> {
    let groups: Vec<Option<(String, u64)>> = tensors.iter().map(|t| group(&t.name)).collect();
    if groups.iter().all(Option::is_none) {
        return tensors
            .iter()
            .enumerate()
            .map(|(i, t)| Step {
                name: t.name.clone(),
                tensors: vec![i],
            })
            .collect();
    }
    let mut prefix_rank: HashMap<&str, usize> = HashMap::new();
    for (prefix, _) in groups.iter().flatten() {
        let next = prefix_rank.len();
        prefix_rank.entry(prefix.as_str()).or_insert(next);
    }
    let mut keyed: Vec<((usize, u64), usize)> = groups
        .iter()
        .enumerate()
        .filter_map(|(i, g)| g.as_ref().map(|(p, n)| ((prefix_rank[p.as_str()], *n), i)))
        .collect();
    keyed.sort();
    let mut steps: Vec<Step> = Vec::new();
    let single = |i: usize| Step {
        name: tensors[i].name.clone(),
        tensors: vec![i],
    };
    let loose = |embedding: bool| -> Vec<usize> {
        (0..tensors.len())
            .filter(|&i| groups[i].is_none() && looks_like_embedding(&tensors[i].name) == embedding)
            .collect()
    };
    let (head, tail) = (loose(true), loose(false));
    steps.extend(head.into_iter().map(single));
    let mut last = None;
    for (key, i) in keyed {
        if last != Some(key) {
            let (p, n) = groups[i].as_ref().expect("keyed tensors have a group");
            steps.push(Step {
                name: if p.is_empty() {
                    n.to_string()
                } else {
                    format!("{p}.{n}")
                },
                tensors: Vec::new(),
            });
            last = Some(key);
        }
        steps.last_mut().expect("pushed above").tensors.push(i);
    }
    steps.extend(tail.into_iter().map(single));
    steps
}

/// Steps read from an order file, for `tensors`: a JSON list of steps, each a list of tensor
/// names (`[["model.embed_tokens.weight"], ["model.layers.0.self_attn.q_proj.weight", ...]]`), or
/// an object whose `"steps"` is that list (what `OffloadHandle.save_order` writes). A name the
/// model does not have is an error naming it; a tensor the file does not name is not used.
pub fn read_order(path: &std::path::Path, tensors: &[Tensor]) -> crate::Result<Vec<Step>> {
    let bad = |what: String| super::bad(path, what);
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let steps = json.get("steps").unwrap_or(&json);
    let Some(steps) = steps.as_array() else {
        return Err(bad(
            "an order file is a list of steps (or {\"steps\": [...]})".into(),
        ));
    };
    let index: HashMap<&str, usize> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut out = Vec::new();
    for (k, step) in steps.iter().enumerate() {
        let Some(names) = step.as_array() else {
            return Err(bad(format!("step {k} is not a list of tensor names")));
        };
        let mut used = Vec::new();
        for n in names {
            let Some(name) = n.as_str() else {
                return Err(bad(format!("step {k} has a name that is not a string")));
            };
            let Some(&i) = index.get(name) else {
                return Err(bad(format!(
                    "step {k} names {name}, which the model does not have"
                )));
            };
            if !used.contains(&i) {
                used.push(i);
            }
        }
        if !used.is_empty() {
            out.push(Step {
                name: format!("step {k}"),
                tensors: used,
            });
        }
    }
    if out.is_empty() {
        return Err(bad("the order names no tensor".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> Tensor {
        Tensor {
            name: name.into(),
            dtype: "F16".into(),
            shape: vec![1],
            elements: 1,
            file: 0,
            offset: 0,
            bytes: 2,
        }
    }

    fn names(tensors: &[Tensor]) -> Vec<(String, Vec<String>)> {
        execution_order(tensors)
            .into_iter()
            .map(|s| {
                let ts = s.tensors.iter().map(|&i| tensors[i].name.clone()).collect();
                (s.name, ts)
            })
            .collect()
    }

    #[test]
    fn a_llama_runs_embedding_layers_in_numeric_order_then_head() {
        // As Hugging Face writes them: sorted by name, so layer 10 comes before layer 2.
        let ts: Vec<Tensor> = [
            "lm_head.weight",
            "model.embed_tokens.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.10.self_attn.q_proj.weight",
            "model.layers.2.self_attn.q_proj.weight",
            "model.norm.weight",
        ]
        .map(t)
        .to_vec();
        let order = names(&ts);
        let steps: Vec<&str> = order.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            steps,
            [
                "model.embed_tokens.weight",
                "model.layers.0",
                "model.layers.2",
                "model.layers.10",
                "lm_head.weight",
                "model.norm.weight"
            ]
        );
        assert_eq!(order[1].1.len(), 2, "a layer's tensors are one step");
    }

    #[test]
    fn gpt2_bert_and_gguf_names_group_the_same_way() {
        let ts: Vec<Tensor> = [
            "wte.weight",
            "h.1.attn.c_attn.weight",
            "h.0.mlp.c_fc.weight",
            "ln_f.weight",
        ]
        .map(t)
        .to_vec();
        let steps: Vec<String> = names(&ts).into_iter().map(|s| s.0).collect();
        assert_eq!(steps, ["wte.weight", "h.0", "h.1", "ln_f.weight"]);
        let ts: Vec<Tensor> = [
            "encoder.layer.1.output.dense.weight",
            "encoder.layer.0.output.dense.weight",
        ]
        .map(t)
        .to_vec();
        let steps: Vec<String> = names(&ts).into_iter().map(|s| s.0).collect();
        assert_eq!(steps, ["encoder.layer.0", "encoder.layer.1"]);
        let ts: Vec<Tensor> = [
            "token_embd.weight",
            "blk.0.attn_q.weight",
            "blk.1.attn_q.weight",
            "output.weight",
        ]
        .map(t)
        .to_vec();
        let steps: Vec<String> = names(&ts).into_iter().map(|s| s.0).collect();
        assert_eq!(
            steps,
            ["token_embd.weight", "blk.0", "blk.1", "output.weight"]
        );
    }

    #[test]
    fn names_without_integers_are_one_pass_in_file_order() {
        let ts: Vec<Tensor> = ["b.weight", "a.weight", "c.bias"].map(t).to_vec();
        let steps: Vec<String> = names(&ts).into_iter().map(|s| s.0).collect();
        assert_eq!(steps, ["b.weight", "a.weight", "c.bias"]);
    }
}
