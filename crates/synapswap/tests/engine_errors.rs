//! Every error the API promises, each distinct and clear, and no panic from bad input.

mod common;

use common::*;
use synapswap::{BlockId, BlockSpec, Engine, Error, Policy};

#[test]
fn each_bad_input_has_its_own_error() {
    let (engine, _b) = engine(MIB);
    assert_eq!(engine.alloc(BlockSpec::new(0)), Err(Error::ZeroSize));
    assert!(matches!(
        engine.alloc(BlockSpec::new(MIB + 1)),
        Err(Error::BlockTooLarge { size, budget }) if size == MIB + 1 && budget == MIB
    ));
    assert_eq!(
        engine.alloc(BlockSpec::new(10).priority(11)),
        Err(Error::InvalidPriority(11))
    );
    engine
        .alloc(BlockSpec::new(600 * KIB).policy(Policy::Pinned))
        .unwrap();
    assert!(matches!(
        engine.alloc(BlockSpec::new(600 * KIB).policy(Policy::Pinned)),
        Err(Error::PinnedOverBudget { .. })
    ));

    let forged = BlockId::from_raw(12345);
    assert_eq!(engine.wait(forged).err(), Some(Error::UnknownBlock(forged)));
    let a = engine.alloc(BlockSpec::new(100)).unwrap();
    engine.free(a).unwrap();
    assert_eq!(engine.wait(a).err(), Some(Error::StaleBlock(a)));
    assert_eq!(engine.free(a), Err(Error::StaleBlock(a)));
    assert_eq!(engine.declare(0, a), Err(Error::StaleBlock(a)));
    // The slot is reused: the old handle stays stale, the new one works.
    let b = engine.alloc(BlockSpec::new(100)).unwrap();
    assert_eq!(b.index(), a.index());
    assert_eq!(engine.write(a, 0, &[1]), Err(Error::StaleBlock(a)));
    engine.write(b, 0, &[1]).unwrap();

    assert!(matches!(
        engine.write(b, 99, &[1, 2]),
        Err(Error::OutOfBounds {
            offset: 99,
            len: 2,
            size: 100
        })
    ));
    assert!(matches!(
        engine.read(b, u64::MAX, &mut [0u8; 2]),
        Err(Error::OutOfBounds { .. })
    ));
    let g = engine.wait(b).unwrap();
    assert_eq!(engine.write(b, 0, &[1]), Err(Error::BlockInUse(b)));
    assert_eq!(engine.free(b), Err(Error::BlockInUse(b)));
    assert_eq!(g.write_device(0, &[1]), Err(Error::NotMutable(b)));
    assert!(matches!(
        g.read_device(50, &mut [0u8; 51]),
        Err(Error::OutOfBounds { .. })
    ));
    drop(g);
    engine.free(b).unwrap();

    assert!(matches!(
        Engine::builder().budget(100).build(),
        Err(Error::InvalidBudget(100))
    ));
    assert!(Engine::builder().build().is_err(), "a budget is required");
    // Messages say what is wrong.
    assert!(Error::BlockTooLarge { size: 5, budget: 4 }
        .to_string()
        .contains("larger than the device budget"));
}

#[test]
fn out_of_device_memory_when_everything_is_held() {
    let (engine, _b) = engine(256 * KIB);
    let blocks: Vec<_> = (0..3)
        .map(|i| filled(&engine, BlockSpec::new(100 * KIB), i))
        .collect();
    let g0 = engine.wait(blocks[0]).unwrap();
    let g1 = engine.wait(blocks[1]).unwrap();
    let e = engine.wait(blocks[2]).unwrap_err();
    assert!(
        matches!(e, Error::OutOfDeviceMemory { needed, .. } if needed == 100 * KIB),
        "{e}"
    );
    drop(g0);
    // Room again: the same wait now succeeds, and the engine was not harmed.
    check(&engine, blocks[2], 2);
    drop(g1);
    check(&engine, blocks[0], 0);
}

#[test]
fn every_call_after_shutdown_is_an_error() {
    let (engine, _b) = engine(MIB);
    let a = filled(&engine, BlockSpec::new(1000), 1);
    engine.declare(0, a).unwrap();
    engine.shutdown();
    engine.shutdown(); // idempotent
    assert!(engine.is_shut_down());
    assert_eq!(engine.alloc(BlockSpec::new(10)), Err(Error::ShutDown));
    assert_eq!(engine.wait(a).err(), Some(Error::ShutDown));
    assert_eq!(engine.hint(0), Err(Error::ShutDown));
    assert_eq!(engine.declare(0, a), Err(Error::ShutDown));
    assert_eq!(engine.release(a), Err(Error::ShutDown));
    assert_eq!(engine.write(a, 0, &[0]), Err(Error::ShutDown));
    assert_eq!(engine.read(a, 0, &mut [0]), Err(Error::ShutDown));
    assert_eq!(engine.free(a), Err(Error::ShutDown));
    assert_eq!(engine.clear_schedule(), Err(Error::ShutDown));
    assert_eq!(engine.residency(a), Err(Error::ShutDown));
    // Statistics still answer.
    assert_eq!(engine.stats().blocks, 1);
}
