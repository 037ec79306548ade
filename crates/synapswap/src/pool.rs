//! The device pool: one arena of `budget` bytes, sub-allocated by offset.
//!
//! A two-level segregated-fit allocator (TLSF): free regions sit in size-class lists found through
//! two bitmaps, so allocation and free are O(1); regions are also linked in address order, so frees
//! coalesce with their neighbours in O(1) and the planner can walk the arena to pick eviction windows
//! (see `planner.rs`). Everything is in units of [`GRANULE`] bytes. The pool never touches memory: it
//! hands out offsets into an arena the backend owns.

/// Allocation granule in bytes: every offset and size is a multiple of it.
pub const GRANULE: u64 = 256;

const SL_BITS: u32 = 4;
const SL_COUNT: usize = 1 << SL_BITS;
const FL_COUNT: usize = 64;
const NIL: u32 = u32::MAX;

/// Handle of one region of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegionId(u32);

/// A live allocation: where it is and how big (rounded up to the granule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// Byte offset into the arena.
    pub offset: u64,
    /// Size in bytes, a multiple of [`GRANULE`].
    pub size: u64,
    /// The region, to free it.
    pub region: RegionId,
}

/// One region in address order, as seen by [`Pool::regions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionView {
    /// The region.
    pub region: RegionId,
    /// Byte offset into the arena.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// `Some(tag)` for an allocated region (the tag given at allocation), `None` for free space.
    pub tag: Option<u32>,
}

#[derive(Debug, Clone)]
struct Node {
    offset: u64, // granules
    size: u64,   // granules
    used: bool,
    live: bool,
    tag: u32,
    prev_phys: u32,
    next_phys: u32,
    prev_free: u32,
    next_free: u32,
}

/// The offset allocator. Plain data; no I/O.
#[derive(Debug, Clone)]
pub struct Pool {
    capacity: u64, // granules
    nodes: Vec<Node>,
    spare: Vec<u32>,
    fl_bitmap: u64,
    sl_bitmap: [u32; FL_COUNT],
    heads: Vec<u32>,
    used: u64, // granules
    peak: u64, // granules
}

fn mapping(units: u64) -> (usize, usize) {
    if units < SL_COUNT as u64 {
        (0, units as usize)
    } else {
        let f = 63 - units.leading_zeros();
        let sl = (units >> (f - SL_BITS)) as usize ^ SL_COUNT;
        ((f - SL_BITS + 1) as usize, sl)
    }
}

/// Rounds `bytes` up to whole granules.
pub fn granules(bytes: u64) -> u64 {
    bytes.div_ceil(GRANULE)
}

impl Pool {
    /// A pool over `capacity_bytes` (rounded down to the granule).
    pub fn new(capacity_bytes: u64) -> Pool {
        let capacity = capacity_bytes / GRANULE;
        let mut pool = Pool {
            capacity,
            nodes: Vec::new(),
            spare: Vec::new(),
            fl_bitmap: 0,
            sl_bitmap: [0; FL_COUNT],
            heads: vec![NIL; FL_COUNT * SL_COUNT],
            used: 0,
            peak: 0,
        };
        if capacity > 0 {
            let n = pool.new_node(0, capacity);
            pool.insert_free(n);
        }
        pool
    }

    /// Usable capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity * GRANULE
    }
    /// Bytes currently allocated.
    pub fn used(&self) -> u64 {
        self.used * GRANULE
    }
    /// Highest `used()` ever seen.
    pub fn peak(&self) -> u64 {
        self.peak * GRANULE
    }
    /// Bytes currently free.
    pub fn free_bytes(&self) -> u64 {
        (self.capacity - self.used) * GRANULE
    }

    /// The largest free region in bytes.
    pub fn largest_free(&self) -> u64 {
        if self.fl_bitmap == 0 {
            return 0;
        }
        let fl = 63 - self.fl_bitmap.leading_zeros() as usize;
        let sl = 31 - self.sl_bitmap[fl].leading_zeros() as usize;
        let mut best = 0;
        let mut n = self.heads[fl * SL_COUNT + sl];
        while n != NIL {
            best = best.max(self.nodes[n as usize].size);
            n = self.nodes[n as usize].next_free;
        }
        best * GRANULE
    }

    /// Fragmentation in 0..=1: `1 - largest_free / free` (0 when all free space is one region).
    pub fn fragmentation(&self) -> f64 {
        let free = self.free_bytes();
        if free == 0 {
            0.0
        } else {
            1.0 - self.largest_free() as f64 / free as f64
        }
    }

    fn new_node(&mut self, offset: u64, size: u64) -> u32 {
        let node = Node {
            offset,
            size,
            used: false,
            live: true,
            tag: 0,
            prev_phys: NIL,
            next_phys: NIL,
            prev_free: NIL,
            next_free: NIL,
        };
        if let Some(i) = self.spare.pop() {
            self.nodes[i as usize] = node;
            i
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        }
    }

    fn retire(&mut self, n: u32) {
        self.nodes[n as usize].live = false;
        self.spare.push(n);
    }

    fn insert_free(&mut self, n: u32) {
        let (fl, sl) = mapping(self.nodes[n as usize].size);
        let idx = fl * SL_COUNT + sl;
        let head = self.heads[idx];
        {
            let node = &mut self.nodes[n as usize];
            node.used = false;
            node.prev_free = NIL;
            node.next_free = head;
        }
        if head != NIL {
            self.nodes[head as usize].prev_free = n;
        }
        self.heads[idx] = n;
        self.fl_bitmap |= 1 << fl;
        self.sl_bitmap[fl] |= 1 << sl;
    }

    fn remove_free(&mut self, n: u32) {
        let (size, prev, next) = {
            let node = &self.nodes[n as usize];
            (node.size, node.prev_free, node.next_free)
        };
        let (fl, sl) = mapping(size);
        let idx = fl * SL_COUNT + sl;
        if prev != NIL {
            self.nodes[prev as usize].next_free = next;
        } else {
            self.heads[idx] = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev_free = prev;
        }
        if self.heads[idx] == NIL {
            self.sl_bitmap[fl] &= !(1 << sl);
            if self.sl_bitmap[fl] == 0 {
                self.fl_bitmap &= !(1 << fl);
            }
        }
    }

    /// Finds a free region of at least `units` granules: first in a class whose every member fits
    /// (O(1)), else by scanning the one class that may hold a fit.
    fn find_free(&self, units: u64) -> Option<u32> {
        let (fl0, sl0) = mapping(units);
        let rounded = if units < SL_COUNT as u64 {
            units
        } else {
            let f = 63 - units.leading_zeros();
            units.saturating_add((1u64 << (f - SL_BITS)) - 1)
        };
        let (fl, sl) = mapping(rounded);
        if fl < FL_COUNT {
            let sl_map = self.sl_bitmap[fl] & (!0u32).checked_shl(sl as u32).unwrap_or(0);
            let found = if sl_map != 0 {
                Some((fl, sl_map.trailing_zeros() as usize))
            } else {
                let fl_map = self.fl_bitmap & (!0u64).checked_shl(fl as u32 + 1).unwrap_or(0);
                if fl_map != 0 {
                    let f = fl_map.trailing_zeros() as usize;
                    Some((f, self.sl_bitmap[f].trailing_zeros() as usize))
                } else {
                    None
                }
            };
            if let Some((f, s)) = found {
                return Some(self.heads[f * SL_COUNT + s]);
            }
        }
        // The exact class of `units` may still hold a region that is big enough.
        let mut n = self.heads[fl0 * SL_COUNT + sl0];
        while n != NIL {
            if self.nodes[n as usize].size >= units {
                return Some(n);
            }
            n = self.nodes[n as usize].next_free;
        }
        None
    }

    /// Allocates `bytes` (rounded up to the granule), labelling the region with `tag`.
    pub fn alloc(&mut self, bytes: u64, tag: u32) -> Option<Allocation> {
        let units = granules(bytes).max(1);
        let n = self.find_free(units)?;
        Some(self.take(n, units, tag))
    }

    /// Allocates `bytes` at the start of the free region that contains byte `offset`, if that
    /// region is big enough. The planner uses it to put a block exactly where it made room.
    pub fn alloc_containing(&mut self, offset: u64, bytes: u64, tag: u32) -> Option<Allocation> {
        let units = granules(bytes).max(1);
        let at = offset / GRANULE;
        let n = self.phys_order().find(|&n| {
            let node = &self.nodes[n as usize];
            node.offset <= at && at < node.offset + node.size
        })?;
        let node = &self.nodes[n as usize];
        (!node.used && node.size >= units).then(|| self.take(n, units, tag))
    }

    /// Allocates `bytes` exactly at `offset` (a multiple of [`GRANULE`]), if that whole range is
    /// free. The planner uses it to put blocks at the homes its layout gives them.
    pub fn alloc_at(&mut self, offset: u64, bytes: u64, tag: u32) -> Option<Allocation> {
        if offset % GRANULE != 0 {
            return None;
        }
        let units = granules(bytes).max(1);
        let at = offset / GRANULE;
        let n = self.phys_order().find(|&n| {
            let node = &self.nodes[n as usize];
            node.offset <= at && at < node.offset + node.size
        })?;
        let node = &self.nodes[n as usize];
        if node.used || node.offset + node.size < at + units {
            return None;
        }
        let front = at - node.offset;
        if front == 0 {
            return Some(self.take(n, units, tag));
        }
        self.remove_free(n);
        let tail = self.split_off(n, front);
        self.insert_free(n);
        if self.nodes[tail as usize].size > units {
            let rest = self.split_off(tail, units);
            self.insert_free(rest);
        }
        Some(self.claim(tail, tag))
    }

    /// Allocates `bytes` at the lowest address that fits (first fit in address order). The planner
    /// packs the blocks it keeps resident from the bottom with it. O(regions).
    pub fn alloc_low(&mut self, bytes: u64, tag: u32) -> Option<Allocation> {
        let units = granules(bytes).max(1);
        let n = self.phys_order().find(|&n| {
            let node = &self.nodes[n as usize];
            !node.used && node.size >= units
        })?;
        Some(self.take(n, units, tag))
    }

    /// Allocates `bytes` at the highest address that fits. Small blocks placed from the top keep
    /// the low addresses contiguous for large ones; a tiny block in the middle of the arena would
    /// otherwise split the largest free region in two. O(regions).
    pub fn alloc_high(&mut self, bytes: u64, tag: u32) -> Option<Allocation> {
        let units = granules(bytes).max(1);
        let best = self
            .phys_order()
            .filter(|&n| {
                let node = &self.nodes[n as usize];
                !node.used && node.size >= units
            })
            .last()?;
        let size = self.nodes[best as usize].size;
        if size == units {
            return Some(self.take(best, units, tag));
        }
        // `best` keeps the front, free; the tail becomes the allocation.
        self.remove_free(best);
        let tail = self.split_off(best, size - units);
        self.insert_free(best);
        Some(self.claim(tail, tag))
    }

    /// Allocates the front `units` of free region `n`; the rest stays free.
    fn take(&mut self, n: u32, units: u64, tag: u32) -> Allocation {
        self.remove_free(n);
        debug_assert!(self.nodes[n as usize].size >= units);
        if self.nodes[n as usize].size > units {
            let rest = self.split_off(n, units);
            self.insert_free(rest);
        }
        self.claim(n, tag)
    }

    /// Cuts region `n` (in no free list) after its first `front` granules; returns the new tail
    /// region, linked in address order and in no free list.
    fn split_off(&mut self, n: u32, front: u64) -> u32 {
        let (offset, size, next) = {
            let node = &self.nodes[n as usize];
            (node.offset, node.size, node.next_phys)
        };
        let tail = self.new_node(offset + front, size - front);
        self.nodes[tail as usize].prev_phys = n;
        self.nodes[tail as usize].next_phys = next;
        if next != NIL {
            self.nodes[next as usize].prev_phys = tail;
        }
        self.nodes[n as usize].next_phys = tail;
        self.nodes[n as usize].size = front;
        tail
    }

    /// Marks region `n` (in no free list) allocated.
    fn claim(&mut self, n: u32, tag: u32) -> Allocation {
        let node = &mut self.nodes[n as usize];
        node.used = true;
        node.tag = tag;
        let (offset, units) = (node.offset, node.size);
        self.used += units;
        self.peak = self.peak.max(self.used);
        Allocation {
            offset: offset * GRANULE,
            size: units * GRANULE,
            region: RegionId(n),
        }
    }

    /// Region indices in address order. Region 0 is created first and, being at offset 0, is
    /// never merged away into a predecessor, so it is always the head of the address list.
    fn phys_order(&self) -> impl Iterator<Item = u32> + '_ {
        let mut n = if self.capacity > 0 { 0 } else { NIL };
        std::iter::from_fn(move || {
            (n != NIL).then(|| {
                let id = n;
                n = self.nodes[n as usize].next_phys;
                id
            })
        })
    }

    /// Frees an allocation, merging it with free neighbours.
    ///
    /// # Panics
    /// Never for regions this pool returned; a foreign or already-freed region is ignored (debug
    /// builds assert), so a bookkeeping bug elsewhere cannot corrupt the free lists.
    pub fn free(&mut self, region: RegionId) {
        let mut n = region.0;
        let valid = self
            .nodes
            .get(n as usize)
            .is_some_and(|node| node.live && node.used);
        debug_assert!(valid, "free of a region that is not allocated");
        if !valid {
            return;
        }
        self.used -= self.nodes[n as usize].size;
        self.nodes[n as usize].used = false;
        let prev = self.nodes[n as usize].prev_phys;
        if prev != NIL && !self.nodes[prev as usize].used {
            self.remove_free(prev);
            self.absorb_next(prev);
            n = prev;
        }
        let next = self.nodes[n as usize].next_phys;
        if next != NIL && !self.nodes[next as usize].used {
            self.remove_free(next);
            self.absorb_next(n);
        }
        self.insert_free(n);
    }

    /// Merges `n`'s physical successor (which must be free and out of its list) into `n`.
    fn absorb_next(&mut self, n: u32) {
        let next = self.nodes[n as usize].next_phys;
        let (size, after) = {
            let node = &self.nodes[next as usize];
            (node.size, node.next_phys)
        };
        self.nodes[n as usize].size += size;
        self.nodes[n as usize].next_phys = after;
        if after != NIL {
            self.nodes[after as usize].prev_phys = n;
        }
        self.retire(next);
    }

    /// All regions in address order.
    pub fn regions(&self) -> impl Iterator<Item = RegionView> + '_ {
        self.phys_order().map(|id| {
            let node = &self.nodes[id as usize];
            RegionView {
                region: RegionId(id),
                offset: node.offset * GRANULE,
                size: node.size * GRANULE,
                tag: node.used.then_some(node.tag),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(pool: &Pool) {
        let mut off = 0;
        let mut used = 0;
        let mut prev_free = false;
        for r in pool.regions() {
            assert_eq!(r.offset, off, "regions must tile the arena");
            assert!(r.size > 0);
            if r.tag.is_none() {
                assert!(!prev_free, "adjacent free regions must be merged");
            } else {
                used += r.size;
            }
            prev_free = r.tag.is_none();
            off += r.size;
        }
        assert_eq!(off, pool.capacity());
        assert_eq!(used, pool.used());
    }

    #[test]
    fn alloc_free_coalesce() {
        let mut p = Pool::new(1 << 20);
        let a = p.alloc(1000, 1).unwrap();
        let b = p.alloc(300_000, 2).unwrap();
        let c = p.alloc(256, 3).unwrap();
        assert_eq!(a.offset, 0);
        assert_eq!(a.size, 1024);
        assert_eq!(b.offset, 1024);
        check(&p);
        p.free(b.region);
        check(&p);
        p.free(a.region);
        check(&p);
        assert_eq!(p.largest_free(), (1 << 20) - c.offset - 256);
        p.free(c.region);
        check(&p);
        assert_eq!(p.largest_free(), 1 << 20);
        assert_eq!(p.peak(), 1024 + 300_032 + 256);
        assert_eq!(p.fragmentation(), 0.0);
    }

    #[test]
    fn exact_fit_is_found() {
        // A free region of exactly the requested size lives in the same class as the request;
        // the rounded-up O(1) search skips that class, the fallback must find it.
        let mut p = Pool::new(64 * 1000 * GRANULE);
        let a = p.alloc(1000 * GRANULE, 0).unwrap();
        let _b = p.alloc(63 * 1000 * GRANULE, 0).unwrap();
        p.free(a.region);
        assert!(p.alloc(1000 * GRANULE, 0).is_some());
    }

    #[test]
    fn small_blocks_go_high() {
        let mut p = Pool::new(1 << 20);
        let small = p.alloc_high(1000, 1).unwrap();
        assert_eq!(small.offset + small.size, 1 << 20);
        let big = p.alloc(512 << 10, 2).unwrap();
        assert_eq!(big.offset, 0);
        check(&p);
        p.free(small.region);
        p.free(big.region);
        check(&p);
        assert_eq!(p.largest_free(), 1 << 20);
    }

    #[test]
    fn full_and_empty() {
        let mut p = Pool::new(4096);
        let a = p.alloc(4096, 0).unwrap();
        assert!(p.alloc(1, 0).is_none());
        assert_eq!(p.largest_free(), 0);
        p.free(a.region);
        assert_eq!(Pool::new(100).capacity(), 0);
        assert!(Pool::new(100).alloc(1, 0).is_none());
    }

    proptest! {
        #[test]
        fn random_ops_keep_invariants(ops in proptest::collection::vec((0u8..4, 1u64..50_000, 0u64..(1 << 22)), 1..300)) {
            let mut p = Pool::new(1 << 22);
            let mut live: Vec<Allocation> = Vec::new();
            for (op, size, at) in ops {
                if op == 3 {
                    let at = at / GRANULE * GRANULE;
                    let free_there = p.regions().any(|r| {
                        r.tag.is_none() && r.offset <= at && at + granules(size) * GRANULE <= r.offset + r.size
                    });
                    match p.alloc_at(at, size, 7) {
                        Some(a) => {
                            prop_assert!(free_there);
                            prop_assert_eq!(a.offset, at);
                            live.push(a);
                        }
                        None => prop_assert!(!free_there),
                    }
                } else if op < 2 {
                    let before = p.largest_free();
                    let a = match size % 3 {
                        0 => p.alloc_high(size, 7),
                        1 => p.alloc_low(size, 7),
                        _ => p.alloc(size, 7),
                    };
                    match a {
                        Some(a) => {
                            prop_assert!(a.offset + a.size <= p.capacity());
                            for l in &live {
                                prop_assert!(a.offset + a.size <= l.offset || l.offset + l.size <= a.offset);
                            }
                            live.push(a);
                        }
                        None => prop_assert!(before < granules(size) * GRANULE),
                    }
                } else if !live.is_empty() {
                    let a = live.swap_remove(size as usize % live.len());
                    p.free(a.region);
                }
                check(&p);
            }
        }
    }
}
