//! Joint placement: offsets for a set of blocks that must all be on the device at once (one
//! step's blocks), chosen so that placing one never leaves the others without room.
//!
//! A pure function over a map of the pool (the planner builds the map and applies the result; the
//! rule and when it runs are in `step.rs`, "Joint step placement"). The map tiles the arena with
//! spans that are free, clearable (a block that may be evicted, at a cost), or barriers (a block
//! that stays). A *gap* is a maximal run of spans without a barrier.
//!
//! Blocks are placed largest first. Each takes the first of its candidate offsets (its preferred
//! ones, then windows that evict the least valuable blocks, as the single-block eviction rule
//! ranks them) after which the blocks still to place pack into what is left, first-fit
//! decreasing into the gaps. That check is exact for packing blocks end to end in a gap, and the
//! candidate "start of the first gap that fits" always passes it once the whole set passed, so a
//! set that packs by first-fit decreasing is always placed, whatever the preferences; in
//! particular a set whose total fits the largest gap always is.
//!
//! Cost, with `r` spans, `n` blocks, `g` gaps and windows of `w` spans: each candidate tried
//! costs `O(r + n * g)`; a block's preferred offsets are tried first, and only when none passes
//! are its other windows listed, `O(r * w)` (as the single-block window search) plus a sort.
//! Usually a preferred offset passes; in the worst case every window is tried, `O(n * r * (r + n
//! * g))`. It runs only for blocks not on the device at their step's hint, and only when they
//! cannot all take their homes and ring slots (the fast path in `step.rs`).

use std::cmp::Reverse;

/// What occupies a span of the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind<K> {
    /// Free space.
    Free,
    /// A block that may be evicted to make room, at `cost` (lower is cheaper). `owner` is set
    /// when the block is itself one of those being placed: free space to it, a cost to others.
    Clear { cost: K, owner: Option<u32> },
    /// Stays where it is.
    Barrier,
}

/// A run of the arena, in bytes (offsets and sizes granule-aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span<K> {
    pub offset: u64,
    pub size: u64,
    pub kind: Kind<K>,
}

/// One block to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    pub block: u32,
    /// Granule-rounded size.
    pub size: u64,
    /// Offsets to try first, in order (its current offset, its home or ring slot).
    pub preferred: Vec<u64>,
    /// Among windows of equal cost, prefer high addresses (small and streamed blocks), else low.
    pub high: bool,
}

/// Offsets for every item, or `None` if they do not pack (first-fit decreasing) into the gaps.
pub(crate) fn layout<K: Ord + Copy>(spans: &[Span<K>], items: &[Item]) -> Option<Vec<(u32, u64)>> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| Reverse(items[i].size));
    let sizes: Vec<u64> = order.iter().map(|&i| items[i].size).collect();
    let mut spans = spans.to_vec();
    if !packs(&spans, &sizes) {
        return None;
    }
    let mut out = Vec::with_capacity(items.len());
    for (k, &i) in order.iter().enumerate() {
        let item = &items[i];
        let rest = &sizes[k + 1..];
        let try_at = |at: u64| {
            let carved = carve(&spans, at, item.size);
            packs(&carved, rest).then_some((at, carved))
        };
        // The windows are listed only when no preferred offset passes (they cost O(r x w)).
        let preferred = preferred(&spans, item);
        let at = preferred.iter().copied().find_map(try_at).or_else(|| {
            windows(&spans, item, &preferred)
                .into_iter()
                .find_map(try_at)
        });
        // Unreachable when the set packed (see the module docs); `None` keeps it honest.
        let (at, carved) = at?;
        spans = carved;
        out.push((item.block, at));
    }
    Some(out)
}

/// Whether `sizes` (largest first) pack end to end, first fit, into the gaps of `spans`.
fn packs<K>(spans: &[Span<K>], sizes: &[u64]) -> bool {
    if sizes.is_empty() {
        return true;
    }
    let mut gaps = Vec::new();
    let mut run = 0;
    for s in spans {
        if matches!(s.kind, Kind::Barrier) {
            if run > 0 {
                gaps.push(run);
            }
            run = 0;
        } else {
            run += s.size;
        }
    }
    if run > 0 {
        gaps.push(run);
    }
    sizes
        .iter()
        .all(|&size| match gaps.iter_mut().find(|g| **g >= size) {
            Some(g) => {
                *g -= size;
                true
            }
            None => false,
        })
}

/// `spans` with `[at, at + size)` taken: that range becomes a barrier, and what is left of a
/// cleared block around it becomes free space (the block is evicted whole).
fn carve<K: Copy>(spans: &[Span<K>], at: u64, size: u64) -> Vec<Span<K>> {
    let end = at + size;
    let mut out = Vec::with_capacity(spans.len() + 2);
    let push = |out: &mut Vec<Span<K>>, offset: u64, size: u64, kind: Kind<K>| {
        if size == 0 {
            return;
        }
        if let (Some(last), Kind::Free) = (out.last_mut(), kind) {
            if matches!(last.kind, Kind::Free) {
                last.size += size;
                return;
            }
        }
        out.push(Span { offset, size, kind });
    };
    for s in spans {
        let s_end = s.offset + s.size;
        if s_end <= at || s.offset >= end {
            push(&mut out, s.offset, s.size, s.kind);
            continue;
        }
        let left = match s.kind {
            Kind::Clear { .. } => Kind::Free,
            k => k,
        };
        push(&mut out, s.offset, at.saturating_sub(s.offset), left);
        if s.offset <= at {
            push(&mut out, at, size, Kind::Barrier);
        }
        push(&mut out, end, s_end.saturating_sub(end), left);
    }
    out
}

/// The range `[at, at + size)` lies in the arena and crosses no barrier (for `block`, its own
/// spans are free). Returns the worst cost and the bytes of the blocks it would clear.
fn window_cost<K: Ord + Copy>(
    spans: &[Span<K>],
    at: u64,
    size: u64,
    block: u32,
) -> Option<(Option<K>, u64)> {
    let end = at + size;
    let arena_end = spans.last().map_or(0, |s| s.offset + s.size);
    if end > arena_end {
        return None;
    }
    let first = spans.partition_point(|s| s.offset + s.size <= at);
    let mut worst = None;
    let mut bytes = 0;
    for s in spans[first..].iter().take_while(|s| s.offset < end) {
        match s.kind {
            Kind::Free => {}
            Kind::Clear { owner, .. } if owner == Some(block) => {}
            Kind::Clear { cost, .. } => {
                worst = worst.max(Some(cost));
                bytes += s.size;
            }
            Kind::Barrier => return None,
        }
    }
    Some((worst, bytes))
}

/// The first candidate offsets for `item`: its preferred offsets that cross no barrier, in its
/// order.
fn preferred<K: Ord + Copy>(spans: &[Span<K>], item: &Item) -> Vec<u64> {
    item.preferred
        .iter()
        .copied()
        .filter(|&at| window_cost(spans, at, item.size, item.block).is_some())
        .collect()
}

/// The candidates after `preferred`, best first: every window that starts at a span's start or
/// ends at a span's end, cheapest first (no cost before any cost; then fewer bytes cleared; then
/// by address, high or low as the item prefers), each once and none of `preferred`.
fn windows<K: Ord + Copy>(spans: &[Span<K>], item: &Item, preferred: &[u64]) -> Vec<u64> {
    let mut windows: Vec<((Option<K>, u64), u64)> = Vec::new();
    for s in spans.iter().filter(|s| !matches!(s.kind, Kind::Barrier)) {
        let ends = [Some(s.offset), (s.offset + s.size).checked_sub(item.size)];
        for at in ends.into_iter().flatten() {
            if let Some(cost) = window_cost(spans, at, item.size, item.block) {
                windows.push((cost, at));
            }
        }
    }
    if item.high {
        windows.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    } else {
        windows.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    }
    let mut out: Vec<u64> = Vec::with_capacity(windows.len());
    let mut seen: std::collections::HashSet<u64> = preferred.iter().copied().collect();
    for (_, at) in windows {
        if seen.insert(at) {
            out.push(at);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn free(offset: u64, size: u64) -> Span<u8> {
        Span {
            offset,
            size,
            kind: Kind::Free,
        }
    }
    fn clear(offset: u64, size: u64, cost: u8) -> Span<u8> {
        Span {
            offset,
            size,
            kind: Kind::Clear { cost, owner: None },
        }
    }
    fn barrier(offset: u64, size: u64) -> Span<u8> {
        Span {
            offset,
            size,
            kind: Kind::Barrier,
        }
    }
    fn item(block: u32, size: u64) -> Item {
        Item {
            block,
            size,
            preferred: Vec::new(),
            high: false,
        }
    }

    #[test]
    fn a_cheap_window_in_the_middle_is_not_taken_if_it_splits_the_room() {
        // 100 units, all clearable; the cheapest victim sits in the middle. The 60-unit block
        // would evict it alone, but then the 40-unit one has no room: it goes to an edge.
        let spans = [clear(0, 20, 5), clear(20, 60, 1), clear(80, 20, 5)];
        let l = layout(&spans, &[item(1, 40), item(0, 60)]).unwrap();
        let at = |b: u32| l.iter().find(|x| x.0 == b).unwrap().1;
        assert!(at(0) == 0 || at(0) == 40, "{l:?}");
        assert!(at(1) + 40 <= at(0) || at(0) + 60 <= at(1), "{l:?}");
        // On its own, the 60-unit block takes the cheap window.
        assert_eq!(layout(&spans, &[item(0, 60)]).unwrap(), vec![(0, 20)]);
    }

    #[test]
    fn preferred_offsets_win_when_the_rest_still_fits() {
        let spans = [free(0, 100)];
        let mut a = item(0, 30);
        a.preferred = vec![50];
        let l = layout(&spans, &[a.clone(), item(1, 50)]).unwrap();
        // 30 at 50 leaves 0..50 for the 50: both fit, so the preference holds.
        assert!(l.contains(&(0, 50)), "{l:?}");
        a.preferred = vec![40];
        let l = layout(&spans, &[a, item(1, 50)]).unwrap();
        assert!(!l.contains(&(0, 40)), "{l:?}");
    }

    #[test]
    fn barriers_split_gaps_and_owners_clear_for_themselves() {
        let spans = [free(0, 10), barrier(10, 10), free(20, 10)];
        assert!(layout(&spans, &[item(0, 15)]).is_none());
        assert!(layout(&spans, &[item(0, 10), item(1, 10)]).is_some());
        let own = [
            free(0, 10),
            Span {
                offset: 10,
                size: 10,
                kind: Kind::Clear {
                    cost: 9,
                    owner: Some(7),
                },
            },
        ];
        let mut stay = item(7, 10);
        stay.preferred = vec![10];
        assert_eq!(layout(&own, &[stay]).unwrap(), vec![(7, 10)]);
    }

    fn spans_strategy() -> impl Strategy<Value = Vec<Span<u8>>> {
        proptest::collection::vec((1u64..40, 0u8..3, 0u8..10), 1..20).prop_map(|v| {
            let mut at = 0;
            v.into_iter()
                .map(|(size, kind, cost)| {
                    let s = Span {
                        offset: at,
                        size,
                        kind: match kind {
                            0 => Kind::Free,
                            1 => Kind::Clear { cost, owner: None },
                            _ => Kind::Barrier,
                        },
                    };
                    at += size;
                    s
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn layouts_are_disjoint_and_avoid_barriers(
            spans in spans_strategy(),
            sizes in proptest::collection::vec(1u64..60, 1..6),
            prefs in proptest::collection::vec(0u64..400, 6),
        ) {
            let items: Vec<Item> = sizes.iter().enumerate().map(|(i, &s)| Item {
                block: i as u32,
                size: s,
                preferred: vec![prefs[i]],
                high: i % 2 == 0,
            }).collect();
            let sorted = {
                let mut v = sizes.clone();
                v.sort_unstable_by(|a, b| b.cmp(a));
                v
            };
            let fits = packs(&spans, &sorted);
            let l = layout(&spans, &items);
            prop_assert_eq!(l.is_some(), fits);
            if let Some(l) = l {
                prop_assert_eq!(l.len(), items.len());
                for (k, &(b, at)) in l.iter().enumerate() {
                    let size = sizes[b as usize];
                    prop_assert!(window_cost(&spans, at, size, b).is_some());
                    for &(b2, at2) in &l[k + 1..] {
                        let s2 = sizes[b2 as usize];
                        prop_assert!(at + size <= at2 || at2 + s2 <= at);
                    }
                }
            }
        }
    }
}
