//! Stream-ordered release: a block's memory is not reused before the fence recorded on the
//! consumer's stream has completed. A backend whose fences complete only when the test says so.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{Hooked, Hooks};
use synapswap::backend::{Backend, Fence, SimBackend};
use synapswap::{BlockSpec, Engine, Error, Residency};

/// Fences that complete only once the test sets `done` (stand-ins: no sim event behind them).
#[derive(Debug)]
struct Fenced {
    done: Arc<AtomicBool>,
}

impl Hooks for Fenced {
    fn record_fence(&self, _sim: &SimBackend, stream: u64) -> synapswap::Result<Option<Fence>> {
        Ok(Some(Fence(stream)))
    }
    fn fence_done(&self, _sim: &SimBackend, _fence: &Fence) -> synapswap::Result<bool> {
        Ok(self.done.load(Ordering::SeqCst))
    }
    fn drop_fence(&self, _sim: &SimBackend, _fence: Fence) {}
}

#[test]
fn memory_is_reused_only_after_the_consumer_stream_finished() {
    let done = Arc::new(AtomicBool::new(false));
    let backend: Arc<dyn Backend> = Arc::new(Hooked::unpaced(Fenced { done: done.clone() }));
    // Room for one block: loading b must evict a.
    let engine = Engine::builder()
        .budget(1 << 20)
        .backend(backend)
        .build()
        .unwrap();
    let a = engine.alloc(BlockSpec::new(1 << 20)).unwrap();
    let b = engine.alloc(BlockSpec::new(1 << 20)).unwrap();
    assert!(matches!(
        engine.unacquire_on_stream(a, 7),
        Err(Error::NotHeld(_))
    ));
    engine.acquire_on_stream(a, 7).unwrap();
    engine.unacquire_on_stream(a, 7).unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| engine.acquire(b));
        // While the consumer's stream has not passed the fence, a keeps its memory.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(engine.residency(a).unwrap(), Residency::Resident);
        assert!(
            !waiter.is_finished(),
            "b was placed over memory still in use"
        );
        done.store(true, Ordering::SeqCst);
        let t = Instant::now();
        while !waiter.is_finished() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        waiter.join().unwrap().unwrap();
    });
    assert_eq!(engine.residency(a).unwrap(), Residency::Host);
    engine.unacquire(b).unwrap();
    engine.free(a).unwrap();
    engine.free(b).unwrap();
    engine.shutdown();
}

#[test]
fn cuda_backend_or_a_clear_skip() {
    match synapswap::backend::cuda::available() {
        Err(why) => eprintln!("skipping the CUDA test: {why}"),
        Ok(_) => {
            // A real device: byte-exact streaming through a small pool.
            let backend: Arc<dyn Backend> =
                Arc::new(synapswap::backend::CudaBackend::new(0).unwrap());
            let engine = Engine::builder()
                .budget(8 << 20)
                .backend(backend)
                .build()
                .unwrap();
            let ids: Vec<_> = (0..6u8)
                .map(|i| {
                    let id = engine.alloc(BlockSpec::new(3 << 20)).unwrap();
                    engine.write(id, 0, &vec![i; 3 << 20]).unwrap();
                    id
                })
                .collect();
            let mut buf = vec![0u8; 3 << 20];
            for round in 0..50 {
                let i = (round * 5) % ids.len();
                let g = engine.wait(ids[i]).unwrap();
                g.read_device(0, &mut buf).unwrap();
                assert!(buf.iter().all(|&x| x == i as u8));
            }
            engine.shutdown();
        }
    }
}
