//! SynapSwap: run models whose weights do not fit in GPU memory.
//!
//! Weights live in host memory; a bounded device pool holds what the next steps need; a transfer
//! thread copies blocks in ahead of use while the device computes. The caller declares the execution
//! graph (which step uses which block), so the engine knows the future instead of guessing: it
//! evicts the block needed farthest in the future and prefetches in deadline order.
//!
//! ```
//! use synapswap::{Engine, BlockSpec};
//! # fn main() -> synapswap::Result<()> {
//! let engine = Engine::builder().budget(1 << 20).build()?;       // sim backend: no GPU needed
//! let w = engine.alloc(BlockSpec::new(4096).name("w"))?;
//! engine.write(w, 0, &[7u8; 4096])?;
//! engine.declare(0, w)?;
//! engine.hint(0)?;
//! let guard = engine.wait(w)?;                                  // on the device now
//! assert_eq!(guard.as_slice().unwrap()[100], 7);
//! drop(guard);
//! engine.shutdown();
//! # Ok(()) }
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod backend;
mod block;
mod engine;
mod error;
mod host_buffer;
pub mod host_tier;
pub mod model;
pub mod os;
pub mod page_cache;
pub mod pattern;
pub mod plan;
pub mod planner;
pub mod pool;
pub mod probe;
pub(crate) mod ram_tier;
mod rate;
pub mod routing;
pub mod run;
pub mod simulate;
pub mod size;
mod stats;
mod sync;
pub mod trace;
mod transfer;
pub mod workload;

pub use block::{BlockId, BlockSpec, Policy, Residency, DEFAULT_PRIORITY, MAX_PRIORITY};
pub use engine::{
    default_ram_cap, Engine, EngineBuilder, Guard, DEFAULT_CHUNK_BYTES, DEFAULT_STREAM,
};
pub use error::{Error, Result};
pub use host_buffer::HostBuffer;
pub use stats::{PrefetchStats, RamTierStats, Stats};
