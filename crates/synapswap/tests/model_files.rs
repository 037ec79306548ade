//! Model files: safetensors files and sharded directories that the tests write, read into
//! tensors and an execution order, run through the engine from their mappings with every use
//! checked against the file, and bad files refused with a clear error (never a panic).

mod model_writer;

use model_writer::{bytes, cfg, dir, engine, gguf, safetensors, write};
use synapswap::model::Model;
use synapswap::run::run_model;
use synapswap::Error;

/// A small Llama-named model: embedding, `layers` layers of three tensors, norm and head.
fn llama(layers: u64) -> Vec<(String, &'static str, Vec<u64>, Vec<u8>)> {
    let mut t = vec![(
        "model.embed_tokens.weight".to_string(),
        "F16",
        vec![128, 64],
        bytes(1, 128 * 64 * 2),
    )];
    for l in 0..layers {
        for (k, (n, shape)) in [
            ("self_attn.q_proj.weight", vec![64u64, 64]),
            ("mlp.up_proj.weight", vec![128, 64]),
            ("input_layernorm.weight", vec![64]),
        ]
        .into_iter()
        .enumerate()
        {
            let len = shape.iter().product::<u64>() as usize * 2;
            t.push((
                format!("model.layers.{l}.{n}"),
                "F16",
                shape,
                bytes(100 + l * 3 + k as u64, len),
            ));
        }
    }
    t.push(("model.norm.weight".into(), "F16", vec![64], bytes(7, 128)));
    t.push((
        "lm_head.weight".into(),
        "F16",
        vec![128, 64],
        bytes(8, 128 * 64 * 2),
    ));
    t
}

#[test]
fn a_file_is_read_in_order_and_runs_from_its_mapping_with_every_use_checked() {
    let d = dir("single");
    let path = d.join("model.safetensors");
    let tensors = llama(12);
    write(&path, &tensors);
    let m = Model::open(&path).unwrap();
    assert_eq!(m.tensors.len(), tensors.len());
    for t in &tensors {
        let got = m.tensors.iter().find(|x| x.name == t.0).unwrap();
        assert_eq!(m.data(got), &t.3[..], "{} read from the mapping", t.0);
        assert_eq!(got.shape, t.2);
    }
    let w = m.workload();
    let steps: Vec<usize> = w.steps.iter().map(|s| s.uses.len()).collect();
    // Embedding, 12 layers of 3 (numerically ordered), then the head and the norm.
    assert_eq!(steps.len(), 1 + 12 + 2);
    assert!(steps[1..13].iter().all(|&n| n == 3));
    assert_eq!(
        w.steps[11].uses[0],
        "model.layers.10.self_attn.q_proj.weight"
    );
    let e = engine(m.bytes() / 2);
    let r = run_model(&e, &m, &cfg(), &mut |_| {}, None).unwrap();
    assert_eq!(r.integrity.mismatches, 0);
    assert_eq!(r.integrity.verified_blocks, 4 * tensors.len() as u64);
    assert!(r.bytes_h2d > 0, "half the model streams");
    assert_eq!(e.stats().blocks, 0, "every block freed");
    e.shutdown();
}

#[test]
fn a_sharded_directory_is_one_model() {
    let d = dir("sharded");
    let tensors = llama(4);
    let (a, b) = tensors.split_at(7);
    write(&d.join("model-00001-of-00002.safetensors"), a);
    write(&d.join("model-00002-of-00002.safetensors"), b);
    let mut map = serde_json::Map::new();
    for (i, t) in tensors.iter().enumerate() {
        let shard = if i < 7 { 1 } else { 2 };
        map.insert(
            t.0.clone(),
            format!("model-0000{shard}-of-00002.safetensors").into(),
        );
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let m = Model::open(&d).unwrap();
    assert_eq!(m.tensors.len(), tensors.len());
    assert_eq!(m.files().count(), 2);
    for t in &tensors {
        let got = m.tensors.iter().find(|x| x.name == t.0).unwrap();
        assert_eq!(m.data(got), &t.3[..]);
    }
    let e = engine(m.bytes() / 2);
    let r = run_model(&e, &m, &cfg(), &mut |_| {}, None).unwrap();
    assert_eq!(r.integrity.mismatches, 0);
    e.shutdown();
    // An index that names a shard the tensor is not in, or a path out of the directory.
    let mut bad = index.clone();
    bad["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors".into();
    std::fs::write(d.join("model.safetensors.index.json"), bad.to_string()).unwrap();
    let err = Model::open(&d).unwrap_err().to_string();
    assert!(
        err.contains("not in model-00001-of-00002.safetensors"),
        "{err}"
    );
    let mut bad = index;
    bad["weight_map"]["lm_head.weight"] = "../elsewhere.safetensors".into();
    std::fs::write(d.join("model.safetensors.index.json"), bad.to_string()).unwrap();
    let err = Model::open(&d).unwrap_err().to_string();
    assert!(err.contains("not a file name in this directory"), "{err}");
}

#[test]
fn bad_files_are_clear_errors() {
    let d = dir("bad");
    let good = safetensors(&[
        ("a", "F16", vec![4], vec![1; 8]),
        ("b", "F32", vec![2], vec![2; 8]),
    ]);
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "too short"),
        (
            "truncated",
            good[..good.len() - 3].to_vec(),
            "not a valid safetensors file",
        ),
        (
            "absurd header",
            {
                let mut v = good.clone();
                v[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                v
            },
            "not a valid safetensors file",
        ),
        (
            "header past the end",
            {
                let mut v = good.clone();
                v[..8].copy_from_slice(&((good.len() as u64) * 2).to_le_bytes());
                v
            },
            "not a valid safetensors file",
        ),
        (
            "invalid json",
            {
                let mut v = good.clone();
                v[8] = b'!';
                v
            },
            "not a valid safetensors file",
        ),
        (
            "overlapping",
            safetensors_raw(
                r#"{"a":{"dtype":"F16","shape":[4],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[4],"data_offsets":[4,12]}}"#,
                12,
            ),
            "not a valid safetensors file",
        ),
        (
            "past the end",
            safetensors_raw(
                r#"{"a":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}}"#,
                4,
            ),
            "not a valid safetensors file",
        ),
        (
            "unknown dtype",
            safetensors_raw(
                r#"{"a":{"dtype":"Q9","shape":[4],"data_offsets":[0,8]}}"#,
                8,
            ),
            "not a valid safetensors file",
        ),
        (
            "shape disagrees",
            safetensors_raw(
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#,
                8,
            ),
            "not a valid safetensors file",
        ),
    ];
    assert!(header_len > 0);
    for (what, file, message) in cases {
        let path = d.join(format!("{}.safetensors", what.replace(' ', "-")));
        std::fs::write(&path, &file).unwrap();
        match Model::open(&path) {
            Err(Error::Model(m)) => {
                assert!(m.contains(message), "{what}: {m}");
                assert!(
                    m.contains(&*path.to_string_lossy()),
                    "{what}: names the file: {m}"
                );
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    assert!(matches!(
        Model::open(&d.join("missing.safetensors")),
        Err(Error::Model(_))
    ));
    let two = dir("two");
    std::fs::write(two.join("a.safetensors"), &good).unwrap();
    std::fs::write(two.join("b.safetensors"), &good).unwrap();
    let err = Model::open(&two).unwrap_err().to_string();
    assert!(
        err.contains("2 .safetensors files and no model.safetensors.index.json"),
        "{err}"
    );
}

/// A file with header `json` and `data` bytes of zeros.
fn safetensors_raw(json: &str, data: usize) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.extend(std::iter::repeat_n(0u8, data));
    out
}

#[test]
fn a_gguf_file_carries_every_tensor_type_as_raw_bytes() {
    let d = dir("gguf");
    let tensors = vec![
        (
            "token_embd.weight",
            0u32,
            vec![64, 32],
            bytes(1, 64 * 32 * 4),
        ),
        ("blk.0.attn_q.weight", 12, vec![256, 4], bytes(2, 4 * 144)), // Q4_K
        ("blk.0.ffn_up.weight", 2, vec![64, 64], bytes(3, 128 * 18)), // Q4_0
        ("blk.1.attn_q.weight", 12, vec![256, 4], bytes(4, 4 * 144)),
        ("blk.1.ffn_up.weight", 8, vec![64, 64], bytes(5, 128 * 34)), // Q8_0
        ("output.weight", 1, vec![64, 32], bytes(6, 64 * 32 * 2)),
    ];
    for alignment in [None, Some(64)] {
        let path = d.join(format!("m{alignment:?}.gguf"));
        std::fs::write(&path, gguf(alignment, &tensors)).unwrap();
        let m = Model::open(&path).unwrap();
        assert_eq!(m.format, "gguf");
        for t in &tensors {
            let got = m.tensors.iter().find(|x| x.name == t.0).unwrap();
            assert_eq!(m.data(got), &t.3[..], "{} at its aligned offset", t.0);
        }
        let steps: Vec<String> = synapswap::model::execution_order(&m.tensors)
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            steps,
            ["token_embd.weight", "blk.0", "blk.1", "output.weight"]
        );
        let e = engine(m.bytes() / 2);
        let r = run_model(&e, &m, &cfg(), &mut |_| {}, None).unwrap();
        assert_eq!(r.integrity.mismatches, 0);
        e.shutdown();
    }
    let good = gguf(None, &tensors);
    let patch = |at: usize, with: &[u8]| {
        let mut v = good.clone();
        v[at..at + with.len()].copy_from_slice(with);
        v
    };
    // A file with one tensor, named "x": its type and offset fields follow its name and shape.
    let one = gguf(None, &[("x", 0, vec![8], vec![0; 32])]);
    let name_at = one
        .windows(9)
        .position(|w| w == [1, 0, 0, 0, 0, 0, 0, 0, b'x'])
        .expect("the tensor name");
    let kind_at = name_at + 9 + 4 + 8;
    let offset_at = kind_at + 4;
    let one_patch = |at: usize, with: &[u8]| {
        let mut v = one.clone();
        v[at..at + with.len()].copy_from_slice(with);
        v
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad magic", patch(0, b"GGUG"), "bad magic"),
        ("version 4", patch(4, &4u32.to_le_bytes()), "version 4"),
        ("version 1", patch(4, &1u32.to_le_bytes()), "version 1"),
        ("truncated", good[..60].to_vec(), "truncated"),
        (
            "absurd count",
            patch(8, &u64::MAX.to_le_bytes()),
            "cannot fit",
        ),
        (
            "unknown type",
            one_patch(kind_at, &99u32.to_le_bytes()),
            "unknown type 99",
        ),
        (
            "unaligned",
            one_patch(offset_at, &3u64.to_le_bytes()),
            "not aligned",
        ),
        (
            "past the end",
            one_patch(offset_at, &(1u64 << 40).to_le_bytes()),
            "past the end",
        ),
        (
            "bad alignment",
            gguf(Some(48), &[("x", 0, vec![8], vec![0; 32])]),
            "not a power of two",
        ),
        (
            "overlap",
            {
                let two = gguf(
                    None,
                    &[
                        ("a", 0, vec![8], vec![0; 32]),
                        ("b", 0, vec![8], vec![0; 32]),
                    ],
                );
                let at = two
                    .windows(9)
                    .position(|w| w == [1, 0, 0, 0, 0, 0, 0, 0, b'b'])
                    .unwrap()
                    + 9
                    + 4
                    + 8
                    + 4;
                let mut v = two.clone();
                v[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
                v
            },
            "overlap",
        ),
    ];
    for (what, file, message) in cases {
        let path = d.join(format!("{}.gguf", what.replace(' ', "-")));
        std::fs::write(&path, &file).unwrap();
        match Model::open(&path) {
            Err(Error::Model(m)) => assert!(m.contains(message), "{what}: {m}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn an_order_file_overrides_the_names_order_and_bad_ones_are_errors() {
    let d = dir("order");
    let path = d.join("model.safetensors");
    write(&path, &llama(3));
    let mut m = Model::open(&path).unwrap();
    // Reversed layers, the head first: a deliberately different order.
    let order = serde_json::json!({"steps": [
        ["lm_head.weight"],
        ["model.layers.2.self_attn.q_proj.weight", "model.layers.2.mlp.up_proj.weight"],
        ["model.layers.1.self_attn.q_proj.weight"],
        ["model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"]
    ]});
    let file = d.join("order.json");
    std::fs::write(&file, order.to_string()).unwrap();
    m.use_order_file(&file).unwrap();
    let w = m.workload();
    let uses: Vec<Vec<String>> = w.steps.iter().map(|s| s.uses.clone()).collect();
    assert_eq!(uses[0], ["lm_head.weight"]);
    assert_eq!(uses.len(), 4);
    assert_eq!(
        uses[3],
        [
            "model.layers.0.self_attn.q_proj.weight",
            "model.embed_tokens.weight"
        ]
    );
    let e = engine(m.bytes() / 2);
    let r = run_model(&e, &m, &cfg(), &mut |_| {}, None).unwrap();
    assert_eq!(r.integrity.mismatches, 0);
    assert_eq!(
        r.integrity.verified_blocks,
        4 * 6,
        "only the named tensors are used"
    );
    e.shutdown();
    for (json, message) in [
        (r#"[["no.such.tensor"]]"#, "which the model does not have"),
        (r#"{"steps": 3}"#, "a list of steps"),
        (r#"[["lm_head.weight"], 7]"#, "step 1 is not a list"),
        (r#"[[]]"#, "names no tensor"),
        ("not json", "invalid JSON"),
    ] {
        std::fs::write(&file, json).unwrap();
        let err = m.use_order_file(&file).unwrap_err().to_string();
        assert!(
            err.contains(message) && err.contains("order.json"),
            "{json}: {err}"
        );
    }
}

/// What review found: a directory entry that links back to its directory, a header whose
/// offsets overflow the crate's own arithmetic (a panic in a debug build), an empty tensor (a
/// valid file: it is skipped), and a GGUF name given twice.
#[test]
fn crafted_files_are_errors_and_empty_tensors_are_skipped() {
    let d = dir("crafted");
    #[cfg(unix)]
    {
        let looped = dir("loop");
        std::os::unix::fs::symlink(&looped, looped.join("loop.safetensors")).unwrap();
        let err = Model::open(&looped).unwrap_err().to_string();
        assert!(err.contains("no .safetensors file"), "{err}");
    }
    let huge = u64::MAX;
    let file = safetensors_raw(
        &format!(r#"{{"a":{{"dtype":"U8","shape":[{huge}],"data_offsets":[0,{huge}]}}}}"#),
        8,
    );
    let path = d.join("overflow.safetensors");
    std::fs::write(&path, file).unwrap();
    let err = Model::open(&path).unwrap_err().to_string();
    assert!(err.contains("runs past the end"), "{err}");
    // An empty tensor between two others: the model runs without it.
    let path = d.join("empty.safetensors");
    std::fs::write(
        &path,
        safetensors(&[
            ("model.layers.0.a.weight", "F16", vec![64], bytes(1, 128)),
            ("model.layers.0.b.weight", "F16", vec![0, 64], Vec::new()),
            ("model.layers.1.a.weight", "F16", vec![64], bytes(2, 128)),
        ]),
    )
    .unwrap();
    let m = Model::open(&path).unwrap();
    assert_eq!(m.tensors.len(), 3);
    assert_eq!(m.pieces().0.len(), 2);
    let e = engine(4096);
    let r = run_model(&e, &m, &cfg(), &mut |_| {}, None).unwrap();
    assert_eq!(r.integrity.mismatches, 0);
    e.shutdown();
    let path = d.join("twice.gguf");
    std::fs::write(
        &path,
        gguf(
            None,
            &[
                ("x", 0, vec![8], vec![0; 32]),
                ("x", 0, vec![8], vec![0; 32]),
            ],
        ),
    )
    .unwrap();
    let err = Model::open(&path).unwrap_err().to_string();
    assert!(err.contains("appears twice"), "{err}");
}
