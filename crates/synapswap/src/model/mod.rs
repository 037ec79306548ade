//! Model files as the host tier: each tensor of a safetensors file (or of a Hugging Face
//! directory sharded through `model.safetensors.index.json`), or of a GGUF file (`gguf.rs`),
//! becomes a block whose host copy is
//! the file's memory mapping itself, with no second copy in RAM, in an execution order read from
//! the tensor names (`order.rs`).
//!
//! # Reading
//! Files are memory-mapped read-only (`memmap2`) and their headers parsed and validated by the
//! `safetensors` crate before any tensor is used: a header length that is absurd or runs past the
//! end, invalid JSON, an unknown dtype, offsets that are not contiguous, overlap, disagree with
//! the shape or run past the end of the file are each a clear error ([`crate::Error::Model`]),
//! never a panic or an out-of-bounds read. A sharded directory's index must name, for every
//! tensor, a shard that exists and holds it.
//!
//! # Truncation under a live mapping
//! A file that is truncated (or replaced in place) while it is mapped makes the next read of a
//! page past its new end raise `SIGBUS`, which no check made before mapping can prevent. The
//! process then dies with "Bus error"; if that happens during `synapswap run --model`, the model
//! file was changed while it ran. Keep model files read-only while they are in use (Hugging Face
//! downloads are replaced by rename, which leaves an open mapping intact).
//!
//! # Registration
//! The engine registers each mapping once, read-only ([`crate::Engine::register_buffer`]), and
//! the tensors are sub-ranges of it ([`crate::Engine::alloc_in`]): CUDA refuses overlapping
//! registrations, and tensors share pages.

mod experts;
mod gguf;
mod order;
mod safetensors_file;

use std::path::{Path, PathBuf};

pub use experts::{MoeConfig, Piece};
pub use order::{execution_order, read_order, Step};

use crate::block::{Policy, DEFAULT_PRIORITY};
use crate::workload::{BlockDesc, Choose, DeviceModel, Expert, StepDesc, Workload};
use crate::{Error, Result};

/// One tensor of a model file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    /// Its name in the file.
    pub name: String,
    /// Its dtype, as the file spells it (`F16`, `BF16`, `F32`, ...).
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its number of elements (parameters).
    pub elements: u64,
    /// Which of the model's files holds it.
    pub file: usize,
    /// Its bytes within that file: `offset..offset + bytes`.
    pub offset: u64,
    /// Its length in bytes.
    pub bytes: u64,
}

/// A model opened from its files: the tensors and the read-only mappings they live in.
pub struct Model {
    /// What was opened (a file or a directory).
    pub path: PathBuf,
    /// `safetensors` or `gguf`.
    pub format: &'static str,
    /// The tensors, in file order (file by file, by offset).
    pub tensors: Vec<Tensor>,
    /// The routing of a mixture-of-experts model, from `config.json` or the GGUF metadata
    /// (`experts.rs`).
    pub moe: Option<MoeConfig>,
    files: Vec<(PathBuf, memmap2::Mmap)>,
    /// Steps from an order file, overriding the names' order ([`Model::use_order_file`]).
    order: Option<Vec<Step>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("tensors", &self.tensors.len())
            .field("files", &self.files.len())
            .finish()
    }
}

impl Model {
    /// Opens a `.safetensors` file, a GGUF file (named `.gguf`, or by its magic), or a directory
    /// holding `model.safetensors.index.json` (a sharded model) or one `.safetensors` file.
    pub fn open(path: &Path) -> Result<Model> {
        let mut magic = [0u8; 4];
        let is_gguf = path.extension().is_some_and(|x| x == "gguf")
            || (std::fs::File::open(path)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                .is_ok()
                && &magic == b"GGUF");
        if is_gguf {
            return gguf::open(path);
        }
        let mut m = safetensors_file::open(path)?;
        // `config.json` sits in a Hugging Face directory, or beside a lone file.
        let dir = if path.is_dir() {
            Some(path)
        } else {
            path.parent()
        };
        if let Some(dir) = dir {
            m.moe = experts::read_config_json(dir)?;
        }
        Ok(m)
    }

    /// The tensors a model file's bytes describe, read from memory: the header readers alone
    /// (GGUF by its magic, else safetensors), with the checks [`Model::open`] makes. For fuzzing
    /// and tests; a model to run is opened from its files.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Vec<Tensor>, String> {
        if bytes.starts_with(b"GGUF") {
            gguf::parse(bytes)
        } else {
            safetensors_file::parse(bytes, 0)
        }
    }

    /// Runs in the order `path` gives ([`read_order`]) instead of the one the names give.
    pub fn use_order_file(&mut self, path: &Path) -> Result<()> {
        self.order = Some(read_order(path, &self.tensors)?);
        Ok(())
    }

    /// The steps of one pass: the order file's, else [`execution_order`]'s.
    pub fn steps(&self) -> Vec<Step> {
        match &self.order {
            Some(o) => o.clone(),
            None => execution_order(&self.tensors),
        }
    }

    /// Total tensor bytes.
    pub fn bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }

    /// The bytes of `tensor` (in its file's mapping).
    pub fn data(&self, tensor: &Tensor) -> &[u8] {
        let map = &self.files[tensor.file].1;
        // In range: every tensor was checked against its file's length when it was opened.
        &map[tensor.offset as usize..(tensor.offset + tensor.bytes) as usize]
    }

    /// The bytes of a block of [`Model::pieces`].
    pub fn piece_data(&self, piece: &Piece) -> &[u8] {
        // In range: a piece is its tensor or a slice of it.
        &self.data(&self.tensors[piece.tensor])
            [(piece.offset - self.tensors[piece.tensor].offset) as usize..][..piece.bytes as usize]
    }

    /// The model as a workload: a block per piece ([`Model::pieces`]: a tensor with bytes, or an
    /// expert's slice of a packed one), a step per step of [`Model::steps`] (the order file's,
    /// else [`execution_order`]'s), each step's compute a roofline estimate for batch-1 decode on
    /// [`DeviceModel::CONSUMER`] (2 FLOPs per parameter, its bytes read once; assumed figures,
    /// not a measurement of this model). A step's routed experts, when the model says how many a
    /// token uses, are a routed choice (`experts.rs`).
    pub fn workload(&self) -> Workload {
        self.workload_on(DeviceModel::CONSUMER, 1)
    }

    /// [`Model::workload`] with each step's compute estimated on `device` at `batch` tokens per
    /// pass (2 FLOPs per active parameter per token, the active weights read once per pass; of a
    /// routed step's `n` experts, each token runs `k` and the pass reads `min(k batch, n)`).
    pub fn workload_on(&self, device: DeviceModel, batch: u64) -> Workload {
        let batch = batch.max(1);
        let (pieces, of_tensor) = self.pieces();
        let blocks = pieces
            .iter()
            .map(|p| BlockDesc {
                name: p.name.clone(),
                bytes: p.bytes,
                priority: DEFAULT_PRIORITY,
                policy: Policy::Auto,
                mutable: false,
            })
            .collect();
        let active_per_token = self.moe.as_ref().and_then(|m| m.active);
        let steps = self
            .steps()
            .into_iter()
            .filter_map(|s| {
                let used: Vec<&Piece> = s
                    .tensors
                    .iter()
                    .flat_map(|&t| &of_tensor[t])
                    .map(|&p| &pieces[p])
                    .collect();
                // The step's experts, in order of first appearance, each its pieces.
                let mut experts: Vec<(&(String, u64), Vec<&Piece>)> = Vec::new();
                for p in used.iter().filter(|p| p.expert.is_some()) {
                    let key = p.expert.as_ref().expect("filtered");
                    match experts.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, v)) => v.push(p),
                        None => experts.push((key, vec![p])),
                    }
                }
                let n = experts.len() as u64;
                let active = active_per_token
                    .filter(|_| n >= 2)
                    .map(|k| (k * batch).min(n))
                    .filter(|&a| a < n);
                let routed = |p: &Piece| active.is_some() && p.expert.is_some();
                let fixed: Vec<&Piece> = used.iter().copied().filter(|p| !routed(p)).collect();
                // What a pass reads: the fixed uses, and the drawn share of the experts. What it
                // computes: each token runs k of the n experts, whatever the batch draws in all
                // (so 2 b k E FLOPs for experts of E parameters, not 2 b min(k b, n) E).
                let share = active.map_or(0.0, |a| a as f64 / n as f64);
                let per_token = active_per_token
                    .filter(|_| n >= 2)
                    .map(|k| k.min(n) as f64 / n as f64);
                let (mut bytes, mut params) = (0.0, 0.0);
                for p in &used {
                    bytes += if routed(p) { share } else { 1.0 } * p.bytes as f64;
                    let flops_share = match (p.expert.is_some(), per_token) {
                        (true, Some(k)) => k,
                        _ => 1.0,
                    };
                    params += flops_share * p.elements as f64;
                }
                let choose = active.map(|k| {
                    Choose::new(
                        k as u32,
                        experts
                            .iter()
                            .map(|(_, ps)| {
                                Expert::Blocks(ps.iter().map(|p| p.name.clone()).collect())
                            })
                            .collect(),
                    )
                });
                (!fixed.is_empty() || choose.is_some()).then(|| StepDesc {
                    compute_s: device.time(2.0 * params * batch as f64, bytes),
                    uses: fixed.iter().map(|p| p.name.clone()).collect(),
                    choose,
                })
            })
            .collect();
        let name = self
            .path
            .file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
        Workload {
            name,
            vram_budget: None,
            h2d_bytes_per_s: None,
            passes: None,
            blocks,
            steps,
        }
    }

    /// The mapped files: (path, the whole mapping).
    pub fn files(&self) -> impl Iterator<Item = (&Path, &[u8])> {
        self.files.iter().map(|(p, m)| (p.as_path(), &m[..]))
    }
}

/// A model error naming the file.
pub(crate) fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Model(format!("{}: {what}", path.display()))
}
