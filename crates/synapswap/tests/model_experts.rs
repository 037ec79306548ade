//! Routed experts in model files: a Mixtral-named safetensors file with its `config.json`, and a
//! GGUF file whose experts are packed, become routed steps (k of n experts drawn per pass, each
//! expert's tensors or slices drawn together), and run from their mappings with every use checked
//! against the file.

mod model_writer;

use model_writer::{bytes, cfg, dir, engine, gguf_with, write};
use synapswap::model::Model;
use synapswap::run::{run_model, RunConfig};

const LAYERS: u64 = 3;
const EXPERTS: u64 = 4;

/// A Mixtral-named model: embedding, `LAYERS` layers (attention, router, `EXPERTS` experts of
/// three tensors), norm and head.
fn mixtral() -> Vec<(String, &'static str, Vec<u64>, Vec<u8>)> {
    let mut seed = 0;
    let mut t = |name: String, shape: Vec<u64>| {
        seed += 1;
        let len = shape.iter().product::<u64>() as usize * 2;
        (name, "F16", shape, bytes(seed, len))
    };
    let mut out = vec![t("model.embed_tokens.weight".into(), vec![64, 32])];
    for l in 0..LAYERS {
        out.push(t(
            format!("model.layers.{l}.self_attn.q_proj.weight"),
            vec![32, 32],
        ));
        out.push(t(
            format!("model.layers.{l}.block_sparse_moe.gate.weight"),
            vec![EXPERTS, 32],
        ));
        for e in 0..EXPERTS {
            for w in ["w1", "w2", "w3"] {
                out.push(t(
                    format!("model.layers.{l}.block_sparse_moe.experts.{e}.{w}.weight"),
                    vec![64, 32],
                ));
            }
        }
    }
    out.push(t("model.norm.weight".into(), vec![32]));
    out.push(t("lm_head.weight".into(), vec![64, 32]));
    out
}

fn run_cfg() -> RunConfig {
    RunConfig { tokens: 8, ..cfg() }
}

#[test]
fn a_mixtral_file_with_its_config_routes_two_of_four_experts() {
    let d = dir("mixtral");
    let tensors = mixtral();
    write(&d.join("model.safetensors"), &tensors);
    // Without config.json nothing says how many experts a token uses: every expert is a use.
    let all = Model::open(&d).unwrap();
    assert_eq!(all.moe, None);
    let w = all.workload();
    assert!(w.steps.iter().all(|s| s.choose.is_none()));
    let e = engine(all.bytes() / 2);
    let every = run_model(&e, &all, &run_cfg(), &mut |_| {}, None).unwrap();
    e.shutdown();
    std::fs::write(
        d.join("config.json"),
        r#"{"model_type":"mixtral","num_local_experts":4,"num_experts_per_tok":2}"#,
    )
    .unwrap();
    let m = Model::open(&d).unwrap();
    let moe = m.moe.clone().unwrap();
    assert_eq!((moe.experts, moe.active), (Some(4), Some(2)));
    let w = m.workload();
    let routed: Vec<_> = w.steps.iter().filter_map(|s| s.choose.as_ref()).collect();
    assert_eq!(routed.len(), LAYERS as usize, "one routed step per layer");
    for c in &routed {
        assert_eq!(c.k, 2);
        assert_eq!(c.from.len(), EXPERTS as usize);
        for (e, expert) in c.from.iter().enumerate() {
            let names = expert.names();
            assert_eq!(
                names.len(),
                3,
                "an expert's w1, w2 and w3 are drawn together"
            );
            assert!(names.iter().all(|n| n.contains(&format!(".experts.{e}."))));
        }
    }
    // The router and the attention stay ordinary uses of the layer's step.
    assert!(w.steps[1].uses.iter().any(|u| u.ends_with("gate.weight")));
    let e = engine(m.bytes() / 2);
    let r = run_model(&e, &m, &run_cfg(), &mut |_| {}, None).unwrap();
    e.shutdown();
    assert_eq!(r.integrity.mismatches, 0);
    assert!(r.integrity.verified_blocks > 0);
    // Half the experts a pass: fewer uses, and fewer bytes moved per token, than every expert.
    assert!(
        r.integrity.verified_blocks < every.integrity.verified_blocks,
        "{} uses routed, {} with every expert",
        r.integrity.verified_blocks,
        every.integrity.verified_blocks
    );
    assert!(
        r.bytes_h2d < every.bytes_h2d,
        "{} bytes moved routed, {} with every expert",
        r.bytes_h2d,
        every.bytes_h2d
    );
    // A config.json that is not JSON is an error naming it.
    std::fs::write(d.join("config.json"), "{not json").unwrap();
    let err = Model::open(&d).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("invalid JSON"),
        "{err}"
    );
}

#[test]
fn packed_gguf_experts_are_a_block_per_expert() {
    let d = dir("gguf-moe");
    let path = d.join("moe.gguf");
    // blk.N.ffn_{gate,up,down}_exps: GGUF shape [32, 16, EXPERTS], F16, expert e's slice
    // contiguous (the outermost dimension is the last of the shape).
    let exps = 32 * 16 * EXPERTS * 2;
    let mut tensors: Vec<(String, u32, Vec<u64>, Vec<u8>)> = vec![(
        "token_embd.weight".into(),
        1,
        vec![32, 64],
        bytes(1, 32 * 64 * 2),
    )];
    for l in 0..LAYERS {
        tensors.push((
            format!("blk.{l}.attn_q.weight"),
            1,
            vec![32, 32],
            bytes(10 + l, 2048),
        ));
        for (k, p) in ["gate", "up", "down"].iter().enumerate() {
            tensors.push((
                format!("blk.{l}.ffn_{p}_exps.weight"),
                1,
                vec![32, 16, EXPERTS],
                bytes(20 + l * 3 + k as u64, exps as usize),
            ));
        }
    }
    tensors.push((
        "output.weight".into(),
        1,
        vec![32, 64],
        bytes(2, 32 * 64 * 2),
    ));
    let view: Vec<(&str, u32, Vec<u64>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, k, s, b)| (n.as_str(), *k, s.clone(), b.clone()))
        .collect();
    std::fs::write(
        &path,
        gguf_with(
            None,
            &[("llama.expert_count", 4), ("llama.expert_used_count", 1)],
            &view,
        ),
    )
    .unwrap();
    let m = Model::open(&path).unwrap();
    let moe = m.moe.clone().unwrap();
    assert_eq!((moe.experts, moe.active), (Some(4), Some(1)));
    let (pieces, _) = m.pieces();
    // 3 packed tensors a layer cut in 4: 12 expert blocks a layer, each a quarter.
    let slices: Vec<_> = pieces.iter().filter(|p| p.expert.is_some()).collect();
    assert_eq!(slices.len() as u64, LAYERS * 3 * EXPERTS);
    for p in &slices {
        assert_eq!(p.bytes, exps / EXPERTS);
        let (name, data) = p.name.split_once('[').unwrap();
        let e: usize = data.trim_end_matches(']').parse().unwrap();
        let whole = &tensors.iter().find(|t| t.0 == name).unwrap().3;
        let q = (exps / EXPERTS) as usize;
        assert_eq!(m.piece_data(p), &whole[e * q..(e + 1) * q], "{}", p.name);
    }
    let w = m.workload();
    let routed: Vec<_> = w.steps.iter().filter_map(|s| s.choose.as_ref()).collect();
    assert_eq!(routed.len(), LAYERS as usize);
    for c in routed {
        assert_eq!((c.k, c.from.len()), (1, EXPERTS as usize));
        // Expert e: slice e of gate, up and down.
        for (e, expert) in c.from.iter().enumerate() {
            assert_eq!(expert.names().len(), 3);
            assert!(expert
                .names()
                .iter()
                .all(|n| n.ends_with(&format!("[{e}]"))));
        }
    }
    let e = engine(m.bytes() / 2);
    let r = run_model(&e, &m, &run_cfg(), &mut |_| {}, None).unwrap();
    e.shutdown();
    assert_eq!(r.integrity.mismatches, 0);
    assert!(r.integrity.verified_blocks > 0);
}
