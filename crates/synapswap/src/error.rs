//! The one error type of the engine. Every fallible call returns [`Result`].

use crate::size::format_bytes;
use crate::BlockId;

/// Everything that can go wrong in SynapSwap. Each cause has its own variant so that the C ABI and
/// Python can map it to a distinct code or exception.
///
/// Not `#[non_exhaustive]`: the C ABI and Python match it exhaustively, so a new variant does not
/// build until each surface has decided what it means there.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[allow(missing_docs)] // variant fields are named for what they hold
pub enum Error {
    /// The handle was never issued by this engine.
    #[error("unknown block handle {0}")]
    UnknownBlock(BlockId),
    /// The handle was issued, but its block has since been freed.
    #[error("stale block handle {0}: that block was freed")]
    StaleBlock(BlockId),
    /// A block of zero bytes was requested.
    #[error("block size must be greater than zero")]
    ZeroSize,
    /// A single block cannot fit in the device budget.
    #[error("block of {size} bytes is larger than the device budget of {budget} bytes")]
    BlockTooLarge { size: u64, budget: u64 },
    /// Blocks with `Policy::Pinned` stay on the device once loaded; together they must fit.
    #[error("pinned blocks would total {total} bytes, over the device budget of {budget} bytes")]
    PinnedOverBudget { total: u64, budget: u64 },
    /// Priorities run from 0 (evict first) to 10 (keep longest).
    #[error("priority {0} is out of range 0..=10")]
    InvalidPriority(u8),
    /// `unacquire` of a block that no `acquire` holds.
    #[error("block {0:?} is not held by acquire")]
    NotHeld(BlockId),
    /// A declared use's probability must lie in (0, 1].
    #[error("probability {0} is out of range (0, 1]")]
    InvalidProbability(f64),
    /// `hint_choice` names a step that is not declared (`block: None`), or a block that is not
    /// declared at that step.
    #[error("{}", match block {
        Some(b) => format!("block {b} is not declared at step {step}: a choice hint names the step's declared candidates"),
        None => format!("step {step} is not declared: a choice hint names a declared step"),
    })]
    NotACandidate { step: u64, block: Option<BlockId> },
    /// The device budget must be at least one allocation granule.
    #[error("device budget of {0} bytes is too small (minimum {min} bytes)", min = crate::pool::GRANULE)]
    InvalidBudget(u64),
    /// A read or write outside the block.
    #[error("range {offset}..{end} is outside the block of {size} bytes", end = offset.saturating_add(*len))]
    OutOfBounds { offset: u64, len: u64, size: u64 },
    /// A block's range outside the registered buffer it is to be cut from.
    #[error("range {offset}..{end} is outside the registered buffer of {size} bytes", end = offset.saturating_add(*len))]
    OutsideBuffer { offset: u64, len: u64, size: u64 },
    /// The operation needs the block not to be held by a guard.
    #[error("block {0} is in use: a guard holds it")]
    BlockInUse(BlockId),
    /// Device writes through a guard are only allowed on blocks allocated as mutable.
    #[error("block {0} is not mutable")]
    NotMutable(BlockId),
    /// Everything that could make room is held, pinned or protected by the current step.
    #[error("out of device memory: {needed} bytes needed, but the {budget}-byte budget is held by blocks in use (held {held} bytes, pinned {pinned} bytes)")]
    OutOfDeviceMemory {
        needed: u64,
        budget: u64,
        held: u64,
        pinned: u64,
    },
    /// Host memory that would be allocated (anonymous and page-locked: host copies, the sim
    /// backend's arena) exceeds what this process can get: the smallest of `MemAvailable`, the
    /// memory cgroup's headroom and `RLIMIT_AS` (see [`crate::os::available_memory`]); `limit`
    /// names that one. Memory-mapped files do not count: they page.
    #[error(
        "not enough host memory: {needed} bytes ({}) needed, {available} bytes ({}) available ({limit})",
        format_bytes(*.needed),
        format_bytes(*.available)
    )]
    HostMemory {
        needed: u64,
        available: u64,
        limit: &'static str,
    },
    /// The device pool does not fit in the device's free memory less a margin
    /// (`backend::cuda::vram_margin`), checked before it is allocated: near the limit a Windows
    /// (WDDM) driver may silently back device memory with system RAM instead of failing.
    #[error(
        "not enough free device memory: a {needed}-byte pool ({}) needs free memory plus a {margin}-byte margin ({}), but {free} of {total} bytes ({} of {}) are free",
        format_bytes(*.needed),
        format_bytes(*.margin),
        format_bytes(*.free),
        format_bytes(*.total)
    )]
    DeviceMemory {
        needed: u64,
        margin: u64,
        free: u64,
        total: u64,
    },
    /// An allocation of host memory (a host copy, page-locked memory, the sim backend's arena)
    /// failed.
    #[error("out of host memory: cannot allocate {bytes} bytes ({})", format_bytes(*.0), bytes = .0)]
    OutOfHostMemory(u64),
    /// The budget cannot hold one step's blocks at once together with the pinned blocks. Every
    /// budget of at least `minimum` runs the schedule (see the planner's joint step placement).
    #[error("device budget of {budget} bytes is too small: step {step} needs {minimum} bytes ({}) on the device at once (its blocks and every pinned block, granule-rounded); the budget must be at least that", crate::size::format_bytes(*minimum))]
    BudgetTooSmall {
        budget: u64,
        minimum: u64,
        step: u64,
    },
    /// A copy between host and device failed.
    #[error("transfer of block {block} failed: {reason}")]
    Transfer { block: BlockId, reason: String },
    /// The device backend reported an error.
    #[error("backend error: {0}")]
    Backend(String),
    /// The device context is lost (a sticky error: an illegal address, a dead driver, an ECC
    /// error). Every later call fails with it; shut the engine down.
    #[error("the device is lost (sticky error; shut the engine down): {0}")]
    DeviceLost(String),
    /// The host range shares a page with a range already registered with the device (CUDA
    /// refuses overlapping `cuMemHostRegister` ranges).
    #[error("host range {addr:#x}+{len} overlaps a range already registered with the device")]
    AlreadyRegistered { addr: u64, len: u64 },
    /// The requested backend is not available on this machine.
    #[error("backend '{name}' is unavailable: {reason}")]
    BackendUnavailable { name: String, reason: String },
    /// A size or bandwidth string could not be parsed.
    #[error("invalid {what} '{input}': {reason}")]
    Parse {
        what: &'static str,
        input: String,
        reason: String,
    },
    /// A model file (or directory) that cannot be read as a model: the message names the file.
    #[error("invalid model: {0}")]
    Model(String),
    /// A workload description is inconsistent.
    #[error("invalid workload: {0}")]
    Workload(String),
    /// The engine was shut down; only dropping it is still allowed.
    #[error("the engine is shut down")]
    ShutDown,
}

/// `Result` with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
