//! GGUF files (versions 2 and 3), as llama.cpp writes them: every tensor type is carried as its
//! raw bytes (the engine never decodes a quantization), at offsets aligned to
//! `general.alignment` (32 when absent).
//!
//! The reader walks the header through a bounded cursor: every length and count is checked
//! against the bytes left before it is used, so a truncated file, an absurd count, a string or
//! array running past the end, a bad magic, version or alignment, an unknown tensor type, a
//! shape whose size overflows, and tensor data that runs past the end or overlaps another
//! tensor are each an error naming the file, never a panic or an out-of-bounds read.

use std::fs::File;
use std::path::Path;

use std::collections::HashMap;

use super::{bad, Model, MoeConfig, Tensor};
use crate::Result;

/// Most dimensions of a tensor (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// Deepest nesting of metadata arrays accepted.
const MAX_NESTING: u32 = 4;

/// (elements per block, bytes per block) of a GGML tensor type, by its number.
fn type_layout(t: u32) -> Option<(&'static str, u64, u64)> {
    Some(match t {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", 256, 54),
        35 => ("TQ2_0", 256, 66),
        _ => return None,
    })
}

/// A metadata value the reader keeps.
#[derive(Debug, Clone, PartialEq)]
enum Meta {
    Int(u64),
    Str(String),
}

/// A bounded reader over the header.
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64) -> std::result::Result<&'a [u8], String> {
        let left = (self.buf.len() - self.at) as u64;
        if n > left {
            return Err(format!(
                "truncated: {n} bytes needed at offset {}, {left} left",
                self.at
            ));
        }
        let s = &self.buf[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.u64()?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }
    /// Reads a metadata value of `kind`: an integer or a string is returned (the alignment, the
    /// architecture and the expert counts are read from them), anything else is skipped.
    fn value(&mut self, kind: u32, depth: u32) -> std::result::Result<Option<Meta>, String> {
        let fixed = |k: u32| match k {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        };
        let int = |v: u64| Ok(Some(Meta::Int(v)));
        match kind {
            0 => int(u64::from(self.take(1)?[0])),
            2 => {
                let b = self.take(2)?;
                int(u64::from(u16::from_le_bytes([b[0], b[1]])))
            }
            4 => int(u64::from(self.u32()?)),
            10 => int(self.u64()?),
            // Signed integers: only non-negative values are a count or an alignment.
            5 => Ok(u64::try_from(self.u32()? as i32).ok().map(Meta::Int)),
            11 => Ok(u64::try_from(self.u64()? as i64).ok().map(Meta::Int)),
            8 => self.string().map(|v| Some(Meta::Str(v))),
            9 => {
                if depth >= MAX_NESTING {
                    return Err("metadata arrays nested too deep".into());
                }
                let elem = self.u32()?;
                let count = self.u64()?;
                if let Some(size) = fixed(elem) {
                    let bytes = count
                        .checked_mul(size)
                        .ok_or("a metadata array's size overflows")?;
                    self.take(bytes)?;
                } else {
                    // Each element takes at least 8 bytes (a string's length): a count the
                    // bytes left cannot hold is refused before the loop.
                    if count > (self.buf.len() - self.at) as u64 / 8 {
                        return Err(format!(
                            "a metadata array of {count} elements runs past the end"
                        ));
                    }
                    for _ in 0..count {
                        self.value(elem, depth + 1)?;
                    }
                }
                Ok(None)
            }
            k => match fixed(k) {
                Some(n) => self.take(n).map(|_| None),
                None => Err(format!("unknown metadata value type {k}")),
            },
        }
    }
}

pub(super) fn open(path: &Path) -> Result<Model> {
    let f = File::open(path).map_err(|e| bad(path, e))?;
    // SAFETY: a read-only private mapping of a file we just opened; see `safetensors_file.rs`
    // (a file truncated while mapped raises SIGBUS on the next read past its end).
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| bad(path, e))?;
    let (tensors, moe) =
        parse_all(&map).map_err(|e| bad(path, format!("not a valid GGUF file: {e}")))?;
    Ok(Model {
        path: path.to_path_buf(),
        format: "gguf",
        tensors,
        moe,
        files: vec![(path.to_path_buf(), map)],
        order: None,
    })
}

/// The tensors of a GGUF file whose bytes are `buf`.
pub(crate) fn parse(buf: &[u8]) -> std::result::Result<Vec<Tensor>, String> {
    parse_all(buf).map(|(t, _)| t)
}

/// The tensors, and the routing its metadata gives (`<arch>.expert_count` and
/// `<arch>.expert_used_count`, `<arch>` being `general.architecture`).
fn parse_all(buf: &[u8]) -> std::result::Result<(Vec<Tensor>, Option<MoeConfig>), String> {
    let mut c = Cursor { buf, at: 0 };
    if c.take(4)? != b"GGUF" {
        return Err("bad magic (not \"GGUF\")".into());
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("version {version} (2 and 3 are read)"));
    }
    let n_tensors = c.u64()?;
    let n_kv = c.u64()?;
    let left = (buf.len() - c.at) as u64;
    // A key-value pair takes at least 12 bytes, a tensor info at least 24.
    if n_kv > left / 12 || n_tensors > left / 24 {
        return Err(format!(
            "{n_tensors} tensors and {n_kv} metadata entries cannot fit in {left} bytes"
        ));
    }
    let mut alignment = 32u64;
    let mut meta: HashMap<String, Meta> = HashMap::new();
    for _ in 0..n_kv {
        let key = c.string()?;
        let kind = c.u32()?;
        let v = c.value(kind, 0)?;
        if key == "general.alignment" {
            alignment = match v {
                Some(Meta::Int(a)) => a,
                _ => return Err("general.alignment is not an integer".into()),
            };
        } else if let Some(v) = v {
            meta.insert(key, v);
        }
    }
    let moe = match meta.get("general.architecture") {
        Some(Meta::Str(arch)) => {
            let count = |k: &str| match meta.get(&format!("{arch}.{k}")) {
                Some(Meta::Int(n)) if *n > 0 => Some(*n),
                _ => None,
            };
            let (experts, active) = (count("expert_count"), count("expert_used_count"));
            (experts.is_some() || active.is_some()).then(|| MoeConfig {
                experts,
                active,
                source: format!("GGUF metadata {arch}.expert_count, {arch}.expert_used_count"),
            })
        }
        _ => None,
    };
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(format!("alignment {alignment} is not a power of two"));
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = c.string()?;
        let dims = c.u32()?;
        if dims > MAX_DIMS {
            return Err(format!(
                "tensor {name} has {dims} dimensions (at most {MAX_DIMS})"
            ));
        }
        let shape: Vec<u64> = (0..dims)
            .map(|_| c.u64())
            .collect::<std::result::Result<_, _>>()?;
        let kind = c.u32()?;
        let offset = c.u64()?;
        let (dtype, block, block_bytes) =
            type_layout(kind).ok_or_else(|| format!("tensor {name} has unknown type {kind}"))?;
        let elements = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("tensor {name}: its size overflows"))?;
        if elements % block != 0 {
            return Err(format!(
                "tensor {name}: {elements} elements are not whole blocks of {block} ({dtype})"
            ));
        }
        let bytes = (elements / block)
            .checked_mul(block_bytes)
            .ok_or_else(|| format!("tensor {name}: its size overflows"))?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor {name}: offset {offset} is not aligned to {alignment}"
            ));
        }
        infos.push((name, dtype, shape, offset, bytes, elements));
    }
    let data = (c.at as u64).div_ceil(alignment) * alignment;
    let mut tensors: Vec<Tensor> = Vec::with_capacity(infos.len());
    for (name, dtype, shape, offset, bytes, elements) in infos {
        let start = data
            .checked_add(offset)
            .ok_or_else(|| format!("tensor {name}: offset overflows"))?;
        if start
            .checked_add(bytes)
            .is_none_or(|end| end > buf.len() as u64)
        {
            return Err(format!("tensor {name} runs past the end of the file"));
        }
        tensors.push(Tensor {
            name,
            dtype: dtype.to_string(),
            shape,
            elements,
            file: 0,
            offset: start,
            bytes,
        });
    }
    let mut names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("tensor {} appears twice", w[0]));
    }
    tensors.sort_by_key(|t| t.offset);
    for w in tensors.windows(2) {
        if w[0].offset + w[0].bytes > w[1].offset {
            return Err(format!("tensors {} and {} overlap", w[0].name, w[1].name));
        }
    }
    Ok((tensors, moe))
}
