//! safetensors files: one file, or a Hugging Face directory sharded through
//! `model.safetensors.index.json`. The header is parsed and validated by the `safetensors` crate
//! (see the module docs of `model`); this maps the files and turns their headers into tensors.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{bad, Model, Tensor};
use crate::Result;

/// The index file of a sharded directory.
const INDEX: &str = "model.safetensors.index.json";

pub(super) fn open(path: &Path) -> Result<Model> {
    let meta = std::fs::metadata(path).map_err(|e| bad(path, e))?;
    if !meta.is_dir() {
        let (map, tensors) = file(path, 0)?;
        return Ok(Model {
            path: path.to_path_buf(),
            format: "safetensors",
            tensors,
            moe: None,
            files: vec![(path.to_path_buf(), map)],
            order: None,
        });
    }
    let index = path.join(INDEX);
    if index.exists() {
        return sharded(path, &index);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| bad(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        // Regular files only (`is_file` follows links): a link or directory named
        // `*.safetensors` (`loop.safetensors -> .`) must not send the reader round in a loop.
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors") && p.is_file())
        .collect();
    found.sort();
    match found.len() {
        1 => {
            let mut m = open(&found[0])?;
            m.path = path.to_path_buf();
            Ok(m)
        }
        0 => Err(bad(path, "no .safetensors file in this directory")),
        n => Err(bad(
            path,
            format!("{n} .safetensors files and no {INDEX} to say how they fit together"),
        )),
    }
}

/// Maps one file read-only and reads its tensors (as file `index` of the model).
fn file(path: &Path, index: usize) -> Result<(memmap2::Mmap, Vec<Tensor>)> {
    let f = File::open(path).map_err(|e| bad(path, e))?;
    let len = f.metadata().map_err(|e| bad(path, e))?.len();
    if len < 8 {
        return Err(bad(
            path,
            format!("{len} bytes: too short for a safetensors header (8 bytes of length first)"),
        ));
    }
    // SAFETY: a read-only private mapping of a file we just opened. Its bytes are only read
    // through the returned value; a file truncated while mapped makes such a read raise SIGBUS
    // (documented in the module docs of `model`), not undefined behaviour in Rust's sense.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| bad(path, e))?;
    let tensors = parse(&map, index).map_err(|e| bad(path, e))?;
    Ok((map, tensors))
}

/// The tensors of a safetensors file whose bytes are `buf` (as file `index` of its model).
pub(crate) fn parse(buf: &[u8], index: usize) -> std::result::Result<Vec<Tensor>, String> {
    let len = buf.len() as u64;
    precheck(buf)?;
    let (header, meta) = safetensors::SafeTensors::read_metadata(buf)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let base = 8 + header as u64;
    let mut tensors: Vec<Tensor> = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (s, e) = info.data_offsets;
            Tensor {
                name,
                dtype: format!("{:?}", info.dtype),
                shape: info.shape.iter().map(|&d| d as u64).collect(),
                // `read_metadata` checked that the product does not overflow.
                elements: info.shape.iter().map(|&d| d as u64).product(),
                file: index,
                offset: base + s as u64,
                bytes: (e - s) as u64,
            }
        })
        .collect();
    // `read_metadata` checked that the offsets tile the data to the file's end; this is the
    // bound the mapping relies on, checked again here where it is used.
    if let Some(t) = tensors.iter().find(|t| t.offset + t.bytes > len) {
        return Err(format!("tensor {} runs past the end", t.name));
    }
    tensors.sort_by_key(|t| (t.offset, t.name.clone()));
    Ok(tensors)
}

/// A sharded directory: the index's `weight_map` names each tensor's shard.
fn sharded(dir: &Path, index: &Path) -> Result<Model> {
    let text = std::fs::read_to_string(index).map_err(|e| bad(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(index, format!("invalid JSON: {e}")))?;
    let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(bad(index, "no \"weight_map\" object"));
    };
    let mut shard_of: BTreeMap<String, String> = BTreeMap::new();
    for (name, shard) in map {
        let Some(shard) = shard.as_str() else {
            return Err(bad(
                index,
                format!("the shard of {name} is not a file name"),
            ));
        };
        let plain = Path::new(shard)
            .file_name()
            .is_some_and(|f| f == std::ffi::OsStr::new(shard));
        if !plain {
            return Err(bad(
                index,
                format!("shard '{shard}' is not a file name in this directory"),
            ));
        }
        shard_of.insert(name.clone(), shard.to_string());
    }
    // Shards in name order (model-00001-of-00004.safetensors, ...).
    let shards: Vec<String> = {
        let mut v: Vec<String> = shard_of.values().cloned().collect();
        v.sort();
        v.dedup();
        v
    };
    let mut files = Vec::new();
    let mut tensors = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        let path = dir.join(shard);
        let (map, mut ts) = file(&path, i)?;
        tensors.append(&mut ts);
        files.push((path, map));
    }
    let held: HashMap<&str, usize> = tensors.iter().map(|t| (t.name.as_str(), t.file)).collect();
    for (name, shard) in &shard_of {
        match held.get(name.as_str()) {
            Some(&f) if files[f].0.file_name() == Some(std::ffi::OsStr::new(shard)) => {}
            Some(&f) => {
                return Err(bad(
                    index,
                    format!(
                        "{name} is in {}, not in {shard} as the index says",
                        files[f].0.display()
                    ),
                ))
            }
            None => return Err(bad(index, format!("{name} is in no shard ({shard})"))),
        }
    }
    Ok(Model {
        path: dir.to_path_buf(),
        format: "safetensors",
        tensors,
        moe: None,
        files,
        order: None,
    })
}

/// What `read_metadata` (safetensors 0.4) leaves unchecked: it adds the last tensor's end to the
/// header's length without a checked add, which a crafted end near `u64::MAX` overflows (a panic
/// in a debug build). So every `data_offsets` end is checked against the file's length first.
fn precheck(buf: &[u8]) -> std::result::Result<(), String> {
    let Some(head) = buf.get(..8) else {
        return Err("not a valid safetensors file: too short for a header".into());
    };
    let n = u64::from_le_bytes(head.try_into().expect("8 bytes"));
    let Some(header) = usize::try_from(n)
        .ok()
        .and_then(|n| buf.get(8..8usize.checked_add(n)?))
    else {
        return Err(format!(
            "not a valid safetensors file: header length {n} runs past the end of the file"
        ));
    };
    let json: serde_json::Value = serde_json::from_slice(header)
        .map_err(|e| format!("not a valid safetensors file: invalid JSON header: {e}"))?;
    let Some(entries) = json.as_object() else {
        return Err("not a valid safetensors file: the header is not a JSON object".into());
    };
    for (name, info) in entries.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let ends = info.get("data_offsets").and_then(|o| o.as_array());
        for v in ends.into_iter().flatten() {
            if v.as_u64().is_none_or(|e| e > buf.len() as u64) {
                return Err(format!(
                    "tensor {name}: data offset {v} runs past the end of the file"
                ));
            }
        }
    }
    Ok(())
}
