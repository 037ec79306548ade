//! One C-ABI engine: the Rust [`Engine`] plus what the C API adds on top of it: host pointers as
//! handles, a node graph turned into the engine's step schedule, and the holds that keep a
//! block's device address valid until the next hint moves on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use engine::{BlockId, BlockSpec, Engine, Error, Policy, Stats};

/// Why a call failed: the status code C sees and the detail `synapswap_last_error` returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub status: i32,
    pub message: String,
}

pub type Res<T> = std::result::Result<T, Failure>;

pub const ERR_INITIALIZATION: i32 = -1;
pub const ERR_OUT_OF_VRAM: i32 = -2;
pub const ERR_OUT_OF_RAM: i32 = -3;
pub const ERR_INVALID_PTR: i32 = -4;
pub const ERR_NOT_FOUND: i32 = -5;
pub const ERR_CUDA: i32 = -6;
pub const ERR_UNKNOWN: i32 = -99;

pub fn fail<T>(status: i32, message: impl Into<String>) -> Res<T> {
    Err(Failure {
        status,
        message: message.into(),
    })
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure {
            status: status_of(&e),
            message: e.to_string(),
        }
    }
}

/// The status code of an engine error, chosen by its variant (never by its message). The match
/// is exhaustive, so a new variant does not build until it has a code.
pub fn status_of(e: &Error) -> i32 {
    match e {
        Error::UnknownBlock(_) | Error::StaleBlock(_) | Error::NotHeld(_) => ERR_INVALID_PTR,
        // A node that names no declared step (it has no dependency of its own).
        Error::NotACandidate { block: None, .. } => ERR_NOT_FOUND,
        Error::BlockTooLarge { .. }
        | Error::PinnedOverBudget { .. }
        | Error::OutOfDeviceMemory { .. }
        | Error::DeviceMemory { .. }
        | Error::BudgetTooSmall { .. }
        | Error::InvalidBudget(_) => ERR_OUT_OF_VRAM,
        Error::HostMemory { .. } | Error::OutOfHostMemory(_) => ERR_OUT_OF_RAM,
        Error::BackendUnavailable { .. } | Error::DeviceLost(_) => ERR_CUDA,
        Error::ShutDown => ERR_INITIALIZATION,
        Error::ZeroSize
        | Error::InvalidPriority(_)
        | Error::InvalidProbability(_)
        | Error::NotACandidate { block: Some(_), .. }
        | Error::OutOfBounds { .. }
        | Error::OutsideBuffer { .. }
        | Error::BlockInUse(_)
        | Error::NotMutable(_)
        | Error::Transfer { .. }
        | Error::Backend(_)
        | Error::AlreadyRegistered { .. }
        | Error::Parse { .. }
        | Error::Model(_)
        | Error::Workload(_) => ERR_UNKNOWN,
    }
}

/// The node graph of `register_dependency`.
#[derive(Debug, Default)]
struct Graph {
    uses: BTreeMap<i32, Vec<BlockId>>,
    /// Routed candidates: node -> (block, probability of use per pass).
    candidates: BTreeMap<i32, Vec<(BlockId, f64)>>,
    next: BTreeMap<i32, BTreeSet<i32>>,
    /// node -> step, valid when not `dirty`.
    steps: HashMap<i32, u64>,
    dirty: bool,
}

impl Graph {
    /// Steps in topological order of the `next` edges (ties by node id); a cycle (a decode loop
    /// that links its last node back to its first) is cut at its smallest node.
    fn order(&self) -> Vec<i32> {
        let nodes: BTreeSet<i32> = self
            .uses
            .keys()
            .chain(self.candidates.keys())
            .chain(self.next.keys())
            .chain(self.next.values().flatten())
            .copied()
            .collect();
        let mut indeg: BTreeMap<i32, usize> = nodes.iter().map(|&n| (n, 0)).collect();
        for succ in self.next.values() {
            for s in succ {
                *indeg.get_mut(s).expect("every successor is a node") += 1;
            }
        }
        let mut order = Vec::with_capacity(nodes.len());
        let mut done: BTreeSet<i32> = BTreeSet::new();
        let mut ready: BTreeSet<i32> = indeg
            .iter()
            .filter(|(_, &d)| d == 0)
            .map(|(&n, _)| n)
            .collect();
        while done.len() < nodes.len() {
            let n = match ready.pop_first() {
                Some(n) => n,
                // Only cycles are left: cut the smallest remaining node loose.
                None => *nodes
                    .iter()
                    .find(|n| !done.contains(n))
                    .expect("a node is left"),
            };
            if !done.insert(n) {
                continue;
            }
            order.push(n);
            for s in self.next.get(&n).into_iter().flatten() {
                let d = indeg.get_mut(s).expect("every successor is a node");
                *d = d.saturating_sub(1);
                if *d == 0 && !done.contains(s) {
                    ready.insert(*s);
                }
            }
        }
        order
    }
}

#[derive(Debug, Default)]
struct State {
    /// Host pointer -> block.
    blocks: HashMap<usize, BlockId>,
    graph: Graph,
    /// Holds taken by wait_for_data / get_vram_ptr since the current node began: block ->
    /// device address.
    node_holds: HashMap<BlockId, u64>,
    /// Holds taken by acquire_on_stream: block -> the stream of each (a `free` ends each after
    /// the work on its own stream).
    stream_holds: HashMap<BlockId, Vec<u64>>,
    /// Blocks allocated with SS_BLOCK_MUTABLE. The C API hands out raw device pointers and
    /// cannot say whether a kernel wrote through one, so each hold of such a block marks it
    /// written (dirty): it is written back before eviction, whether or not it changed.
    mutable: std::collections::HashSet<BlockId>,
    current_node: Option<i32>,
}

/// One engine behind the C ABI.
#[derive(Debug)]
pub struct Instance {
    engine: Engine,
    verbose: bool,
    poisoned: AtomicBool,
    state: Mutex<State>,
}

impl Instance {
    pub fn new(engine: Engine, verbose: bool) -> Instance {
        Instance {
            engine,
            verbose,
            poisoned: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        }
    }

    pub fn verbose(&self) -> bool {
        self.verbose
    }

    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    /// Fails if the instance is poisoned.
    fn check(&self) -> Res<()> {
        if self.poisoned.load(Ordering::SeqCst) {
            return fail(
                ERR_UNKNOWN,
                "the engine hit an internal error and accepts only shutdown/destroy",
            );
        }
        Ok(())
    }

    fn lock(&self) -> Res<MutexGuard<'_, State>> {
        if self.poisoned.load(Ordering::SeqCst) {
            return fail(
                ERR_UNKNOWN,
                "the engine hit an internal error and accepts only shutdown/destroy",
            );
        }
        // A panic is caught at the boundary and poisons the instance first, so a poisoned
        // mutex is never relied on; recover its data for shutdown.
        Ok(self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn block_of(st: &State, ptr: usize) -> Res<BlockId> {
        if ptr == 0 {
            return fail(ERR_INVALID_PTR, "NULL pointer");
        }
        st.blocks.get(&ptr).copied().ok_or_else(|| Failure {
            status: ERR_INVALID_PTR,
            message: format!(
                "{ptr:#x} is not a live block of this engine (pass the pointer synapswap_malloc returned)"
            ),
        })
    }

    /// Allocates a block and returns the address of its (zeroed) host copy.
    pub fn malloc(
        &self,
        size: usize,
        priority: i32,
        policy: i32,
        tag: Option<String>,
        mutable: bool,
    ) -> Res<usize> {
        self.check()?;
        #[cfg(test)]
        if tag.as_deref() == Some("__test_panic__") {
            panic!("test hook");
        }
        if size == 0 {
            return fail(ERR_INVALID_PTR, "size 0: a block has at least one byte");
        }
        let priority = u8::try_from(priority)
            .ok()
            .filter(|&p| p <= engine::MAX_PRIORITY)
            .ok_or_else(|| Failure {
                status: ERR_INVALID_PTR,
                message: format!("priority {priority} is out of range 0..=10"),
            })?;
        let policy = match policy {
            0 => Policy::Auto,
            1 => Policy::Pinned,
            2 => Policy::Lru,
            3 => Policy::Volatile,
            p => return fail(ERR_INVALID_PTR, format!("policy {p} is not an ss_policy_t")),
        };
        let mut spec = BlockSpec::new(size as u64)
            .priority(priority)
            .policy(policy)
            .mutable(mutable);
        if let Some(t) = tag {
            spec = spec.name(t);
        }
        let id = self.engine.alloc(spec)?;
        let ptr = match self.engine.host_ptr(id) {
            Ok(p) => p as usize,
            Err(e) => {
                let _ = self.engine.free(id);
                return Err(e.into());
            }
        };
        let mut st = self.lock()?;
        st.blocks.insert(ptr, id);
        if mutable {
            st.mutable.insert(id);
        }
        Ok(ptr)
    }

    /// Frees a block (dropping this engine's holds on it first). If the engine refuses (another
    /// thread is waiting for the block right now), the block stays valid and this returns why.
    pub fn free(&self, ptr: usize) -> Res<()> {
        let mut st = self.lock()?;
        let id = Self::block_of(&st, ptr)?;
        // Each hold ends after the work on its stream: the node hold on the default stream,
        // acquire_on_stream holds on theirs.
        let mut streams = st.stream_holds.remove(&id).unwrap_or_default();
        if st.node_holds.remove(&id).is_some() {
            streams.push(engine::DEFAULT_STREAM);
        }
        drop(st);
        for s in streams {
            let _ = self.engine.unacquire_on_stream(id, s);
        }
        self.engine.free(id)?;
        let mut st = self.lock()?;
        st.blocks.remove(&ptr);
        st.mutable.remove(&id);
        for uses in st.graph.uses.values_mut() {
            uses.retain(|&b| b != id);
        }
        for cands in st.graph.candidates.values_mut() {
            cands.retain(|&(b, _)| b != id);
        }
        st.graph.dirty = true;
        Ok(())
    }

    /// Node `node` may use the block at `ptr`, with `probability` per pass (a routed expert).
    pub fn register_candidate(&self, node: i32, ptr: usize, probability: f64) -> Res<()> {
        if !(probability > 0.0 && probability <= 1.0) {
            return Err(Error::InvalidProbability(probability).into());
        }
        let mut st = self.lock()?;
        let id = Self::block_of(&st, ptr)?;
        let cands = st.graph.candidates.entry(node).or_default();
        match cands.iter_mut().find(|(b, _)| *b == id) {
            Some((_, p)) => *p = probability,
            None => cands.push((id, probability)),
        }
        st.graph.dirty = true;
        Ok(())
    }

    /// The router's choice (or a guess) for `node`'s coming occurrence: `Engine::hint_choice`.
    pub fn hint_choice(&self, node: i32, choices: &[(usize, f64)]) -> Res<()> {
        let mut st = self.lock()?;
        let step = self.step_of(&mut st, node)?;
        let mut ids = Vec::with_capacity(choices.len());
        for &(ptr, p) in choices {
            ids.push((Self::block_of(&st, ptr)?, p));
        }
        drop(st);
        self.engine.hint_choice(step, &ids)?;
        Ok(())
    }

    pub fn register_dependency(&self, node: i32, ptr: usize, next: i32) -> Res<()> {
        let mut st = self.lock()?;
        let id = Self::block_of(&st, ptr)?;
        let uses = st.graph.uses.entry(node).or_default();
        if !uses.contains(&id) {
            uses.push(id);
        }
        if next != -1 {
            st.graph.next.entry(node).or_default().insert(next);
        }
        st.graph.dirty = true;
        Ok(())
    }

    /// The engine's step of `node` (the schedule re-declared first if the graph changed), or
    /// `ERR_NOT_FOUND`.
    fn step_of(&self, st: &mut State, node: i32) -> Res<u64> {
        self.sync_schedule(st)?;
        match st.graph.steps.get(&node) {
            Some(&step) => Ok(step),
            None => fail(
                ERR_NOT_FOUND,
                format!(
                    "node {node} was never named in a dependency or a candidate \
                     (synapswap_register_dependency, synapswap_engine_register_candidate)"
                ),
            ),
        }
    }

    /// Re-declares the engine's schedule from the graph if it changed.
    fn sync_schedule(&self, st: &mut State) -> Res<()> {
        if !st.graph.dirty {
            return Ok(());
        }
        let order = st.graph.order();
        self.engine.clear_schedule()?;
        st.graph.steps.clear();
        for (step, node) in order.iter().enumerate() {
            st.graph.steps.insert(*node, step as u64);
            for &b in st.graph.uses.get(node).into_iter().flatten() {
                self.engine.declare(step as u64, b)?;
            }
            for &(b, p) in st.graph.candidates.get(node).into_iter().flatten() {
                if !st.graph.uses.get(node).is_some_and(|u| u.contains(&b)) {
                    self.engine.declare_candidate(step as u64, b, p)?;
                }
            }
        }
        st.graph.dirty = false;
        Ok(())
    }

    pub fn hint(&self, node: i32) -> Res<()> {
        let mut st = self.lock()?;
        let step = self.step_of(&mut st, node)?;
        // Moving past the node that took them ends the holds of wait/get_vram_ptr.
        let released: Vec<BlockId> = if st.current_node != Some(node) {
            st.current_node = Some(node);
            st.node_holds.drain().map(|(b, _)| b).collect()
        } else {
            Vec::new()
        };
        drop(st);
        self.engine.hint(step)?;
        for b in released {
            let _ = self.engine.unacquire(b);
        }
        Ok(())
    }

    /// Waits for the block and holds it until the hint moves on; returns its device address.
    pub fn device_ptr(&self, ptr: usize) -> Res<usize> {
        let st = self.lock()?;
        let id = Self::block_of(&st, ptr)?;
        if let Some(&addr) = st.node_holds.get(&id) {
            return Ok(addr as usize);
        }
        drop(st);
        // Not under the instance lock: a wait can take as long as a copy.
        let addr = self.engine.acquire(id)?;
        if let Err(e) = self.written(id) {
            let _ = self.engine.unacquire(id);
            return Err(e);
        }
        let mut st = self.lock()?;
        if st.node_holds.insert(id, addr).is_some() {
            // Another thread took the node hold meanwhile: keep one.
            drop(st);
            let _ = self.engine.unacquire(id);
        }
        Ok(addr as usize)
    }

    /// Ends this engine's holds on the block and the protection of the current hint.
    pub fn release(&self, ptr: usize) -> Res<()> {
        let mut st = self.lock()?;
        let id = Self::block_of(&st, ptr)?;
        let held = st.node_holds.remove(&id);
        drop(st);
        if let Some(addr) = held {
            if let Err(e) = self.engine.unacquire(id) {
                // Not released: the node hold stays.
                self.lock()?.node_holds.insert(id, addr);
                return Err(e.into());
            }
        }
        self.engine.release(id)?;
        Ok(())
    }

    /// A held mutable block may be written through its device pointer: mark it dirty.
    fn written(&self, id: BlockId) -> Res<()> {
        if self.lock()?.mutable.contains(&id) {
            self.engine.mark_dirty(id)?;
        }
        Ok(())
    }

    /// Stream-ordered acquire (see `Engine::acquire_on_stream`).
    pub fn acquire_on_stream(&self, ptr: usize, stream: u64) -> Res<usize> {
        let st = self.lock()?;
        let id = Self::block_of(&st, ptr)?;
        drop(st);
        let addr = self.engine.acquire_on_stream(id, stream)?;
        if let Err(e) = self.written(id) {
            let _ = self.engine.unacquire_on_stream(id, stream);
            return Err(e);
        }
        self.lock()?
            .stream_holds
            .entry(id)
            .or_default()
            .push(stream);
        Ok(addr as usize)
    }

    /// Stream-ordered release: the memory is reused only after the work queued on `stream` so
    /// far has completed (on sim: at once).
    pub fn release_on_stream(&self, ptr: usize, stream: u64) -> Res<()> {
        let mut st = self.lock()?;
        let id = Self::block_of(&st, ptr)?;
        // Which acquire this release ends does not matter (the fence goes on `stream`); prefer
        // one taken on the same stream.
        let acquired_on = match st.stream_holds.get_mut(&id) {
            Some(v) if !v.is_empty() => {
                let i = v.iter().rposition(|&x| x == stream).unwrap_or(v.len() - 1);
                let s = v.remove(i);
                if v.is_empty() {
                    st.stream_holds.remove(&id);
                }
                s
            }
            _ => {
                return fail(
                    ERR_INVALID_PTR,
                    "release_on_stream without a matching acquire_on_stream",
                )
            }
        };
        drop(st);
        if let Err(e) = self.engine.unacquire_on_stream(id, stream) {
            self.lock()?
                .stream_holds
                .entry(id)
                .or_default()
                .push(acquired_on);
            return Err(e.into());
        }
        Ok(())
    }

    pub fn stats(&self) -> Res<Stats> {
        self.check()?;
        Ok(self.engine.stats())
    }

    /// Stops the engine; every handle of it becomes invalid. Works on a poisoned instance.
    pub fn shutdown(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.blocks.clear();
        st.node_holds.clear();
        st.stream_holds.clear();
        drop(st);
        self.engine.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_order_is_topological_and_cuts_cycles() {
        let mut g = Graph::default();
        // 0 -> {1, 2, 3} -> 4, and 4 -> 0 (the decode loop).
        for (a, b) in [(0, 1), (0, 2), (0, 3), (1, 4), (2, 4), (3, 4), (4, 0)] {
            g.next.entry(a).or_default().insert(b);
        }
        assert_eq!(g.order(), vec![0, 1, 2, 3, 4]);
        let mut g = Graph::default();
        for (a, b) in [(10, 5), (5, 7)] {
            g.next.entry(a).or_default().insert(b);
        }
        g.uses.insert(3, Vec::new());
        assert_eq!(g.order(), vec![3, 10, 5, 7]);
    }

    /// How a test ends the C API's hold on block `a` while a kernel reading it is still queued.
    #[derive(Clone, Copy, Debug)]
    enum End {
        HintPast,
        Release,
        Free,
        /// `acquire_on_stream` on a stream of its own, kernel there, then `free`.
        FreeStreamHold,
    }

    /// Room for one 1 MiB block. A kernel on the default stream reads `a` 60 ms after it is
    /// queued; the hold ends (`end`); then `b` needs `a`'s memory. Returns whether the kernel
    /// saw `a`'s bytes.
    fn kernel_survives(end: End) -> bool {
        use engine::backend::{SimBackend, SimConfig};
        use engine::pattern;
        use std::sync::Arc;
        const MIB: usize = 1 << 20;
        let sim = Arc::new(SimBackend::new(SimConfig::unpaced()).unwrap());
        let e = Engine::builder()
            .budget(MIB as u64)
            .backend(sim.clone())
            .build()
            .unwrap();
        let inst = Instance::new(e, false);
        let a = inst.malloc(MIB, 5, 0, None, false).unwrap();
        let b = inst.malloc(MIB, 5, 0, None, false).unwrap();
        for (p, seed) in [(a, 1), (b, 2)] {
            // SAFETY: malloc handed out MIB writable host bytes at p, not yet loaded.
            let host = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, MIB) };
            pattern::fill(pattern::seed(seed), 0, host);
        }
        inst.register_dependency(0, a, 1).unwrap();
        inst.register_dependency(1, b, -1).unwrap();
        inst.hint(0).unwrap();
        let stream = match end {
            End::FreeStreamHold => sim.create_stream().unwrap(),
            _ => 0,
        };
        let dev = match end {
            End::FreeStreamHold => inst.acquire_on_stream(a, stream).unwrap(),
            _ => inst.device_ptr(a).unwrap(),
        } as u64;
        let ok = Arc::new(AtomicBool::new(false));
        let seen = ok.clone();
        sim.launch(stream, move |d| {
            std::thread::sleep(std::time::Duration::from_millis(60));
            let mut buf = vec![0u8; MIB];
            d.read(dev, &mut buf)?;
            seen.store(pattern::verify(pattern::seed(1), 0, &buf), Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        match end {
            End::HintPast => inst.hint(1).unwrap(),
            End::Release => inst.release(a).unwrap(),
            End::Free | End::FreeStreamHold => inst.free(a).unwrap(),
        }
        inst.device_ptr(b).unwrap();
        sim.synchronize(stream).unwrap();
        inst.shutdown();
        ok.load(Ordering::SeqCst)
    }

    #[test]
    fn hint_release_and_free_are_ordered_after_the_default_stream() {
        for end in [End::HintPast, End::Release, End::Free, End::FreeStreamHold] {
            assert!(
                kernel_survives(end),
                "{end:?}: the block's memory was reused before the kernel reading it ran"
            );
        }
    }
}
