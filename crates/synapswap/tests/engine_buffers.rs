//! Caller buffers registered once (`Engine::register_buffer`): blocks cut from one buffer (the
//! tensors of one allocation) share its registration, copy as one where they are adjacent, and
//! every byte arrives; a mutable block writes back into the buffer; bad ranges are errors.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{Hooked, Hooks, KIB};
use synapswap::backend::Direction;
use synapswap::{pattern, BlockId, BlockSpec, Engine, Error, Result};

#[derive(Debug, Default)]
struct Count {
    registrations: AtomicU64,
    copies: AtomicU64,
}

impl Hooks for Count {
    fn register_host(&self) -> Result<()> {
        self.registrations.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn submit(&self) -> Result<()> {
        self.batch(1)
    }
    fn batch(&self, segments: usize) -> Result<()> {
        self.copies.fetch_add(segments as u64, Ordering::SeqCst);
        Ok(())
    }
}

fn counted(budget: u64) -> (Engine, Arc<Hooked<Count>>) {
    let backend = Arc::new(Hooked::unpaced(Count::default()));
    let engine = Engine::builder()
        .budget(budget)
        .backend(backend.clone())
        .build()
        .unwrap();
    (engine, backend)
}

/// 64 tensors of 16 KiB + 256 B packed end to end in one caller buffer (so they share pages:
/// registered one by one, all but the first would be refused), 16 used a step, through a budget
/// for half: registered once, every byte right at every use, and the copies of a step's
/// adjacent tensors merged (the size is a whole number of device granules, so they are adjacent
/// on the device too).
#[test]
fn the_tensors_of_one_buffer_share_one_registration_and_copy_as_one() {
    let size = 16 * KIB + 256;
    let n = 64u64;
    let mut buf = vec![0u8; (size * n) as usize];
    for i in 0..n {
        let at = (i * size) as usize;
        pattern::fill(pattern::seed(i), 0, &mut buf[at..at + size as usize]);
    }
    let (engine, backend) = counted(32 * 17 * KIB);
    // SAFETY: `buf` outlives the engine (shut down below) and is not written meanwhile.
    let buffer =
        unsafe { engine.register_buffer(buf.as_mut_ptr(), buf.len() as u64, true) }.unwrap();
    let ids: Vec<BlockId> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                engine
                    .alloc_in(&buffer, i * size, BlockSpec::new(size))
                    .unwrap()
            } else {
                // A range inside the registered buffer through `alloc_external`: no second
                // registration either.
                let ptr = buf[(i * size) as usize..].as_mut_ptr();
                // SAFETY: inside `buf`, as above.
                unsafe { engine.alloc_external(BlockSpec::new(size), ptr, true) }.unwrap()
            }
        })
        .collect();
    drop(buffer);
    for (i, &id) in ids.iter().enumerate() {
        engine.declare(i as u64 / 16, id).unwrap();
    }
    for _ in 0..3 {
        for step in 0..4u64 {
            engine.hint(step).unwrap();
            for k in 0..16 {
                let i = step * 16 + k;
                let g = engine.wait(ids[i as usize]).unwrap();
                assert!(
                    pattern::verify(pattern::seed(i), 0, g.as_slice().unwrap()),
                    "tensor {i} has wrong bytes"
                );
            }
        }
    }
    let loads = engine.stats().loads;
    engine.shutdown();
    assert_eq!(
        backend.hooks.registrations.load(Ordering::SeqCst),
        1,
        "one registration for the buffer"
    );
    let copies = backend.hooks.copies.load(Ordering::SeqCst);
    assert!(loads >= 64, "the streamed half loads every pass: {loads}");
    assert!(
        copies * 2 <= loads,
        "{copies} copies for {loads} loads: adjacent tensors of the buffer were not merged"
    );
}

/// A mutable block cut from a writable buffer writes its device bytes back into the buffer.
#[test]
fn a_mutable_block_writes_back_into_its_buffer() {
    let mut buf = vec![0u8; 64 * KIB as usize];
    let (engine, _) = counted(64 * KIB);
    // SAFETY: `buf` outlives the engine (shut down below); only read after that.
    let buffer =
        unsafe { engine.register_buffer(buf.as_mut_ptr(), buf.len() as u64, false) }.unwrap();
    let id = engine
        .alloc_in(&buffer, 4 * KIB, BlockSpec::new(8 * KIB).mutable(true))
        .unwrap();
    {
        let g = engine.wait(id).unwrap();
        g.write_device(0, &[7u8; 8 * 1024]).unwrap();
    }
    engine.shutdown();
    assert!(
        buf[..4096].iter().all(|&b| b == 0),
        "before the block: untouched"
    );
    assert!(
        buf[4096..4096 + 8192].iter().all(|&b| b == 7),
        "written back in place"
    );
    assert!(
        buf[4096 + 8192..].iter().all(|&b| b == 0),
        "after the block: untouched"
    );
}

#[test]
fn a_block_outside_its_buffer_or_mutable_in_a_read_only_one_is_an_error() {
    let mut buf = vec![0u8; 16 * KIB as usize];
    let (engine, _) = counted(64 * KIB);
    let (other, _) = counted(64 * KIB);
    // SAFETY: `buf` outlives both engines and is not written.
    let buffer =
        unsafe { engine.register_buffer(buf.as_mut_ptr(), buf.len() as u64, true) }.unwrap();
    assert!(matches!(
        engine.alloc_in(&buffer, 12 * KIB, BlockSpec::new(8 * KIB)),
        Err(Error::OutsideBuffer { offset, len, size })
            if (offset, len, size) == (12 * KIB, 8 * KIB, 16 * KIB)
    ));
    assert!(matches!(
        engine.alloc_in(&buffer, u64::MAX, BlockSpec::new(1)),
        Err(Error::OutsideBuffer { .. })
    ));
    let err = engine
        .alloc_in(&buffer, 0, BlockSpec::new(4 * KIB).mutable(true))
        .unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    let err = other
        .alloc_in(&buffer, 0, BlockSpec::new(4 * KIB))
        .unwrap_err();
    assert!(err.to_string().contains("another engine"), "{err}");
    // SAFETY: a null pointer is refused before anything is registered.
    assert!(unsafe { engine.register_buffer(std::ptr::null_mut(), 4096, true) }.is_err());
    // A second registration of pages already registered is refused, as CUDA refuses it.
    // SAFETY: as above.
    let again = unsafe { engine.register_buffer(buf.as_mut_ptr(), 4096, true) };
    assert!(
        matches!(again, Err(Error::AlreadyRegistered { .. })),
        "{again:?}"
    );
    // Nothing was lost: the buffer still serves blocks.
    let id = engine
        .alloc_in(&buffer, 0, BlockSpec::new(4 * KIB))
        .unwrap();
    engine.free(id).unwrap();
    engine.shutdown();
    other.shutdown();
}

/// Refuses every registration, as a driver without read-only registration does.
#[derive(Debug, Default)]
struct Refuse;

impl Hooks for Refuse {
    fn register_host(&self) -> Result<()> {
        Err(Error::Backend(
            "read-only registration is not supported".into(),
        ))
    }
}

/// A buffer the backend will not page-lock is used pageable: its blocks still load every byte
/// right, and `pinned` says what happened.
#[test]
fn a_buffer_the_device_will_not_page_lock_is_used_pageable() {
    let mut buf = vec![0u8; 64 * KIB as usize];
    pattern::fill(pattern::seed(9), 0, &mut buf);
    let backend = Arc::new(Hooked::unpaced(Refuse));
    let engine = Engine::builder()
        .budget(16 * KIB)
        .backend(backend)
        .build()
        .unwrap();
    // SAFETY: `buf` outlives the engine (shut down below) and is not written meanwhile.
    let buffer =
        unsafe { engine.register_buffer(buf.as_mut_ptr(), buf.len() as u64, true) }.unwrap();
    assert!(!buffer.pinned());
    let ids: Vec<BlockId> = (0..8)
        .map(|i| {
            engine
                .alloc_in(&buffer, i * 8 * KIB, BlockSpec::new(8 * KIB))
                .unwrap()
        })
        .collect();
    for _ in 0..2 {
        for (i, &id) in ids.iter().enumerate() {
            let g = engine.wait(id).unwrap();
            assert!(pattern::verify(
                pattern::seed(9),
                i as u64 * 8 * KIB,
                g.as_slice().unwrap()
            ));
        }
    }
    engine.shutdown();
}

/// Refuses every registration and records the host range of every copy.
#[derive(Debug, Default)]
struct RefuseAndWatch {
    ranges: std::sync::Mutex<Vec<(Direction, u64, u64)>>,
}

impl Hooks for RefuseAndWatch {
    fn register_host(&self) -> Result<()> {
        Refuse.register_host()
    }
    fn host_range(&self, dir: Direction, host: u64, len: u64) {
        self.ranges.lock().unwrap().push((dir, host, len));
    }
}

/// A pageable buffer's copies go through the staging ring: no copy reads or writes the buffer
/// itself (on CUDA such a copy would be staged by the driver, synchronously), every byte of every
/// load is right, and a mutable block's write-back still lands in the buffer.
#[test]
fn a_pageable_buffer_is_copied_through_the_staging_ring() {
    let mut buf = vec![0u8; 64 * KIB as usize];
    pattern::fill(pattern::seed(11), 0, &mut buf);
    let (start, end) = (buf.as_ptr() as u64, buf.as_ptr() as u64 + buf.len() as u64);
    let backend = Arc::new(Hooked::unpaced(RefuseAndWatch::default()));
    let engine = Engine::builder()
        .budget(16 * KIB)
        .backend(backend.clone())
        .build()
        .unwrap();
    // SAFETY: `buf` outlives the engine (shut down below); it is read only after that.
    let buffer =
        unsafe { engine.register_buffer(buf.as_mut_ptr(), buf.len() as u64, false) }.unwrap();
    assert!(!buffer.pinned());
    let ids: Vec<BlockId> = (0..7)
        .map(|i| {
            engine
                .alloc_in(&buffer, i * 8 * KIB, BlockSpec::new(8 * KIB))
                .unwrap()
        })
        .collect();
    let written = engine
        .alloc_in(&buffer, 56 * KIB, BlockSpec::new(8 * KIB).mutable(true))
        .unwrap();
    for pass in 0..2 {
        for (i, &id) in ids.iter().enumerate() {
            let g = engine.wait(id).unwrap();
            assert!(pattern::verify(
                pattern::seed(11),
                i as u64 * 8 * KIB,
                g.as_slice().unwrap()
            ));
        }
        let g = engine.wait(written).unwrap();
        if pass == 1 {
            // Evicted since (the budget holds two blocks): it came back from the buffer.
            let mut back = vec![0u8; 8 * 1024];
            g.read_device(0, &mut back).unwrap();
            assert!(back.iter().all(|&b| b == 7), "written back");
        }
        g.write_device(0, &[7u8; 8 * 1024]).unwrap();
    }
    engine.shutdown();
    assert!(
        buf[56 * 1024..].iter().all(|&b| b == 7),
        "written back in place"
    );
    let ranges = backend.hooks.ranges.lock().unwrap();
    let (mut loads, mut writebacks) = (0, 0);
    for &(dir, host, len) in ranges.iter() {
        assert!(
            host + len <= start || host >= end,
            "a {dir:?} copy of {len} bytes at {host:#x} used the pageable buffer itself"
        );
        match dir {
            Direction::HostToDevice => loads += 1,
            Direction::DeviceToHost => writebacks += 1,
        }
    }
    assert!(
        loads >= 8 && writebacks >= 1,
        "{loads} loads, {writebacks} write-backs"
    );
}

/// A handle that outlives its engine cannot be used with a later one, even one whose state
/// lands at the same address (review found the check compared addresses).
#[test]
fn a_buffer_of_a_dropped_engine_is_refused_by_a_new_one() {
    let mut buf = vec![0u8; 16 * KIB as usize];
    let (first, _) = counted(64 * KIB);
    // SAFETY: `buf` outlives both engines and is not written.
    let buffer =
        unsafe { first.register_buffer(buf.as_mut_ptr(), buf.len() as u64, true) }.unwrap();
    first.shutdown();
    drop(first);
    for _ in 0..8 {
        let (next, _) = counted(64 * KIB);
        let err = next
            .alloc_in(&buffer, 0, BlockSpec::new(4 * KIB))
            .unwrap_err();
        assert!(err.to_string().contains("another engine"), "{err}");
        next.shutdown();
    }
}
