//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use synapswap::backend::{SimBackend, SimConfig};
use synapswap::{pattern, BlockId, BlockSpec, Engine};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// An engine on an unpaced sim backend, plus the backend to inspect its allocations.
pub fn engine(budget: u64) -> (Engine, Arc<SimBackend>) {
    let backend = Arc::new(SimBackend::new(SimConfig::unpaced()).unwrap());
    let engine = Engine::builder()
        .budget(budget)
        .backend(backend.clone())
        .chunk_bytes(64 * KIB)
        .build()
        .unwrap();
    (engine, backend)
}

/// Allocates a block filled with the pattern of `seed`.
pub fn filled(engine: &Engine, spec: BlockSpec, seed: u64) -> BlockId {
    let size = spec.size;
    let id = engine.alloc(spec).unwrap();
    let mut buf = vec![0u8; size as usize];
    pattern::fill(pattern::seed(seed), 0, &mut buf);
    engine.write(id, 0, &buf).unwrap();
    id
}

/// Waits for the block and checks every device byte against the pattern of `seed`.
pub fn check(engine: &Engine, id: BlockId, seed: u64) {
    let g = engine.wait(id).unwrap();
    let bytes = g.as_slice().expect("sim is host-addressable");
    assert!(
        pattern::verify(pattern::seed(seed), 0, bytes),
        "block {id} has wrong bytes"
    );
}
