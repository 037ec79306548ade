//! Synchronisation primitives, swapped for loom's under `cfg(loom)` so the waiter / transfer-thread
//! hand-off can be model-checked. Everything in the runtime takes its locks from here.

#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Locks a mutex, recovering the data if a thread panicked while holding it. The engine's state is
/// kept consistent at every unlock point, so a poisoned lock carries no torn invariants; refusing
/// it would turn one bug into a cascade of panics.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Waits on a condition variable, recovering from poisoning like [`lock`].
pub(crate) fn wait<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    match cv.wait(g) {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Waits on a condition variable for at most `timeout`, recovering from poisoning like [`lock`].
pub(crate) fn wait_timeout<'a, T>(
    cv: &Condvar,
    g: MutexGuard<'a, T>,
    timeout: std::time::Duration,
) -> MutexGuard<'a, T> {
    match cv.wait_timeout(g, timeout) {
        Ok((g, _)) => g,
        Err(poisoned) => poisoned.into_inner().0,
    }
}

/// Threads: std's, or loom's under `cfg(loom)` (the transfer thread and the sim DMA thread are
/// part of the modelled hand-off).
pub(crate) mod thread {
    #[cfg(not(loom))]
    pub(crate) use std::thread::JoinHandle;

    #[cfg(loom)]
    pub(crate) use loom::thread::JoinHandle;

    /// Starts a named thread.
    pub(crate) fn spawn<F>(name: &str, f: F) -> std::io::Result<JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        #[cfg(not(loom))]
        {
            std::thread::Builder::new().name(name.into()).spawn(f)
        }
        #[cfg(loom)]
        {
            let _ = name;
            Ok(loom::thread::spawn(f))
        }
    }
}

/// The runtime's clock: `std::time::Instant`, or under `cfg(loom)` a clock that never moves. loom
/// replays each interleaving and needs every run of the model to take the same decisions; the
/// planner's only use of time is estimates (bandwidth, lookahead), which a frozen clock keeps
/// fixed.
#[cfg(not(loom))]
pub(crate) use std::time::Instant;

#[cfg(loom)]
pub(crate) use frozen::Instant;

#[cfg(loom)]
mod frozen {
    use std::time::Duration;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub(crate) struct Instant;

    impl Instant {
        pub(crate) fn now() -> Instant {
            Instant
        }
        pub(crate) fn elapsed(&self) -> Duration {
            Duration::ZERO
        }
    }

    impl std::ops::Add<Duration> for Instant {
        type Output = Instant;
        fn add(self, _: Duration) -> Instant {
            Instant
        }
    }

    impl std::ops::Sub for Instant {
        type Output = Duration;
        fn sub(self, _: Instant) -> Duration {
            Duration::ZERO
        }
    }
}

/// Sleeps until `deadline` (the sim backend's pacing); under `cfg(loom)` time does not pass, so
/// this returns at once.
pub(crate) fn sleep_until(deadline: Instant) {
    #[cfg(not(loom))]
    crate::os::sleep_until(deadline);
    #[cfg(loom)]
    let _ = deadline;
}
