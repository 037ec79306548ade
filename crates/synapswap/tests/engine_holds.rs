//! Holds that share one use: `acquire_held` (Python's DLPack export of a held view) keeps the
//! block resident like any hold, but it is not a wait, so `waits` and `hits` count each use once.

mod common;

use common::{engine, KIB};
use synapswap::{BlockSpec, Error, Residency};

#[test]
fn a_second_hold_on_a_held_block_is_not_a_wait() {
    let (e, _) = engine(256 * KIB);
    let a = e.alloc(BlockSpec::new(256 * KIB)).unwrap();
    let b = e.alloc(BlockSpec::new(256 * KIB)).unwrap();
    assert_eq!(
        e.acquire_held(a),
        Err(Error::NotHeld(a)),
        "nothing holds it yet"
    );
    let ptr = e.acquire(a).unwrap();
    assert_eq!(e.acquire_held(a).unwrap(), ptr);
    assert_eq!(e.acquire_held(a).unwrap(), ptr);
    let s = e.stats();
    assert_eq!((s.waits, s.hits), (1, 0), "one use, one (missed) wait");
    // Three holds: the block stays until the last is dropped.
    e.unacquire(a).unwrap();
    e.unacquire(a).unwrap();
    assert_eq!(e.residency(a).unwrap(), Residency::Resident);
    e.unacquire(a).unwrap();
    assert_eq!(e.unacquire(a), Err(Error::NotHeld(a)));
    assert_eq!(e.acquire_held(a), Err(Error::NotHeld(a)));
    // With every hold gone, b can take a's place.
    drop(e.wait(b).unwrap());
    assert_eq!(e.residency(a).unwrap(), Residency::Host);
    assert_eq!(e.stats().waits, 2);
    e.free(a).unwrap();
    assert_eq!(e.acquire_held(a), Err(Error::StaleBlock(a)));
}
