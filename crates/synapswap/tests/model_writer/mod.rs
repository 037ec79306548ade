//! Writers of model files for the tests (safetensors and GGUF), and the engine and run
//! settings the model tests share.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use synapswap::backend::{SimBackend, SimConfig};
use synapswap::run::{RunConfig, Verify};
use synapswap::Engine;

/// A fresh directory under the target dir, named for the test.
pub fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("synapswap-model-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Bytes of a safetensors file holding `tensors` (name, dtype, shape, bytes) in that order.
pub fn safetensors(tensors: &[(&str, &str, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    out
}

/// Deterministic bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn write(path: &Path, tensors: &[(String, &str, Vec<u64>, Vec<u8>)]) {
    let view: Vec<(&str, &str, Vec<u64>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    std::fs::write(path, safetensors(&view)).unwrap();
}

pub fn engine(budget: u64) -> Engine {
    Engine::builder()
        .budget(budget)
        .backend(std::sync::Arc::new(
            SimBackend::new(SimConfig::unpaced()).unwrap(),
        ))
        .build()
        .unwrap()
}

pub fn cfg() -> RunConfig {
    RunConfig {
        tokens: 3,
        warmup_tokens: 1,
        bound_bytes_per_s: 2e9,
        bound_source: "test".into(),
        seed: 0,
        verify: Verify::Full,
    }
}

/// A GGUF v3 file: metadata (`general.alignment` when given, a string and an array), then
/// `tensors` (name, GGML type, shape, bytes), each at the next aligned offset.
pub fn gguf(alignment: Option<u32>, tensors: &[(&str, u32, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    gguf_with(alignment, &[], tensors)
}

/// [`gguf`] with more metadata: `counts` as (key, u32 value).
pub fn gguf_with(
    alignment: Option<u32>,
    counts: &[(&str, u32)],
    tensors: &[(&str, u32, Vec<u64>, Vec<u8>)],
) -> Vec<u8> {
    let align = u64::from(alignment.unwrap_or(32));
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    };
    out.extend((2 + counts.len() as u64 + u64::from(alignment.is_some())).to_le_bytes());
    string(&mut out, "general.architecture");
    out.extend(8u32.to_le_bytes());
    string(&mut out, "llama");
    string(&mut out, "tokenizer.ggml.scores");
    out.extend(9u32.to_le_bytes());
    out.extend(6u32.to_le_bytes());
    out.extend(3u64.to_le_bytes());
    out.extend([0u8; 12]);
    for (key, v) in counts {
        string(&mut out, key);
        out.extend(4u32.to_le_bytes());
        out.extend(v.to_le_bytes());
    }
    if let Some(a) = alignment {
        string(&mut out, "general.alignment");
        out.extend(4u32.to_le_bytes());
        out.extend(a.to_le_bytes());
    }
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for (name, kind, shape, bytes) in tensors {
        string(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        for d in shape {
            out.extend(d.to_le_bytes());
        }
        out.extend(kind.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + bytes.len() as u64).div_ceil(align) * align;
    }
    let data = (out.len() as u64).div_ceil(align) * align;
    out.resize(data as usize, 0);
    for ((_, _, _, bytes), at) in tensors.iter().zip(offsets) {
        out.resize((data + at) as usize, 0);
        out.extend(bytes);
    }
    out
}
