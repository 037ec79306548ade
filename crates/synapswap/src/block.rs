//! Block handles and descriptions, shared by the planner, the runtime and every surface.

use std::fmt;

/// A handle to one block: an index plus a generation, so a handle kept after `free` is detected
/// as stale instead of silently naming whatever block reused the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl BlockId {
    /// The raw parts, for foreign surfaces (C ABI, Python) that must round-trip a handle.
    pub fn to_raw(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }
    /// Rebuilds a handle from [`BlockId::to_raw`]. Any value is accepted; a forged one is rejected
    /// by the engine with [`crate::Error::UnknownBlock`] or [`crate::Error::StaleBlock`].
    pub fn from_raw(raw: u64) -> BlockId {
        BlockId {
            index: raw as u32,
            generation: (raw >> 32) as u32,
        }
    }
    /// The slot index (stable for the block's lifetime).
    pub fn index(self) -> u32 {
        self.index
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.index, self.generation)
    }
}

/// How the engine treats a block when it must choose what stays on the device.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Predicted from the declared schedule: evicted by farthest next use (Belady). A block with
    /// no declared use falls back to least-recently-used.
    #[default]
    Auto,
    /// Stays on the device once loaded, until freed. Pinned blocks together must fit the budget.
    Pinned,
    /// Ignores the schedule: never prefetched, evicted least-recently-used first.
    Lru,
    /// Evicted before anything else once it has been used (scratch data, one-shot inputs).
    Volatile,
}

impl std::str::FromStr for Policy {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Policy> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Policy::Auto),
            "pinned" | "strict_vram" => Ok(Policy::Pinned),
            "lru" => Ok(Policy::Lru),
            "volatile" => Ok(Policy::Volatile),
            _ => Err(crate::Error::Parse {
                what: "policy",
                input: s.to_string(),
                reason: "expected auto, pinned, lru or volatile".into(),
            }),
        }
    }
}

/// Highest priority: blocks of higher priority are kept in preference to lower ones.
pub const MAX_PRIORITY: u8 = 10;
/// The priority blocks get when the caller does not care.
pub const DEFAULT_PRIORITY: u8 = 5;

/// What a block is: its size and how the engine should treat it.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSpec {
    /// Size in bytes, greater than zero and at most the device budget.
    pub size: u64,
    /// 0 (evicted first) ..= 10 (kept longest). Among blocks that are all safe to evict (needed
    /// later than what is being loaded), lower priority goes first; ties go by farthest next use.
    pub priority: u8,
    /// See [`Policy`].
    pub policy: Policy,
    /// A label for statistics, traces and errors.
    pub name: String,
    /// Mutable blocks (a KV cache) are written back to the host before eviction.
    pub mutable: bool,
}

impl BlockSpec {
    /// An immutable `Auto` block of default priority.
    pub fn new(size: u64) -> BlockSpec {
        BlockSpec {
            size,
            priority: DEFAULT_PRIORITY,
            policy: Policy::Auto,
            name: String::new(),
            mutable: false,
        }
    }
    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// Sets the priority (validated on allocation).
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }
    /// Sets the policy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
    /// Marks the block mutable.
    pub fn mutable(mut self, mutable: bool) -> Self {
        self.mutable = mutable;
        self
    }
}

/// Where a block's bytes are right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// Only the host copy exists.
    Host,
    /// A host-to-device copy is queued or running.
    Loading,
    /// On the device.
    Resident,
    /// Being copied back to the host before eviction.
    WritingBack,
}
