//! The threads and single-threaded runtimes the load's clients run on.
//!
//! Remote targets need glommio (their connections are glommio TCP streams). Embedded
//! targets only await the `NodeHandle`'s futures, which work on any runtime, so their
//! drivers run on a tokio current-thread runtime with only its timer enabled: it parks on a
//! futex. A glommio executor that parks arms its preemption timers and issues a process-wide
//! `membarrier` on every sleep, and a closed-loop driver sleeps thousands of times a second;
//! in an embedded run those costs land on the same two cores as the nodes under test
//! (measured: ~40% of all `io_uring_enter` calls of an embedded run were the drivers').
//! A real client does not share the servers' cores; the lighter driver gets closer to that.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

/// Which runtime a driver thread runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// A glommio executor (needed for glommio sockets).
    Glommio,
    /// A tokio current-thread runtime with a `LocalSet`, timer only.
    Tokio,
}

thread_local! {
    /// The flavor of the driver running on this thread (glommio unless a tokio driver set it).
    static FLAVOR: Cell<Flavor> = const { Cell::new(Flavor::Glommio) };
}

/// A driver thread; [`Driver::join`] waits for its result.
pub enum Driver<T: Send + 'static> {
    /// A glommio executor's thread.
    Glommio(glommio::ExecutorJoinHandle<T>),
    /// A plain thread running a tokio runtime.
    Tokio(std::thread::JoinHandle<Result<T, String>>),
}

impl<T: Send + 'static> Driver<T> {
    /// Waits for the driver's result.
    pub fn join(self) -> Result<T, String> {
        match self {
            Driver::Glommio(j) => j.join().map_err(|e| e.to_string()),
            Driver::Tokio(j) => j.join().map_err(|_| "driver thread panicked".to_string())?,
        }
    }
}

/// Starts a thread named `name` that runs `body`'s future to completion on a `flavor`
/// runtime.
pub fn spawn<F, Fut, T>(name: &str, flavor: Flavor, body: F) -> Result<Driver<T>, String>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    match flavor {
        Flavor::Glommio => glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name(name)
            .io_memory(1 << 20)
            .spawn(body)
            .map(Driver::Glommio)
            .map_err(|e| format!("{name}: {e}")),
        Flavor::Tokio => std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                FLAVOR.with(|f| f.set(Flavor::Tokio));
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(|e| format!("runtime: {e}"))?;
                let local = tokio::task::LocalSet::new();
                Ok(local.block_on(&rt, body()))
            })
            .map(Driver::Tokio)
            .map_err(|e| format!("{name}: {e}")),
    }
}

/// A task spawned on the current driver.
pub enum LocalTask<T> {
    /// On a glommio executor.
    Glommio(glommio::Task<T>),
    /// On a tokio `LocalSet`.
    Tokio(tokio::task::JoinHandle<T>),
}

impl<T> LocalTask<T> {
    /// Waits for the task; `None` if it panicked.
    pub async fn join(self) -> Option<T> {
        match self {
            LocalTask::Glommio(t) => Some(t.await),
            LocalTask::Tokio(t) => t.await.ok(),
        }
    }
}

/// Spawns `fut` on this thread's driver.
pub fn spawn_local<Fut>(fut: Fut) -> LocalTask<Fut::Output>
where
    Fut: Future + 'static,
    Fut::Output: 'static,
{
    match FLAVOR.with(Cell::get) {
        Flavor::Glommio => LocalTask::Glommio(glommio::spawn_local(fut)),
        Flavor::Tokio => LocalTask::Tokio(tokio::task::spawn_local(fut)),
    }
}

/// Sleeps on this thread's driver.
pub async fn sleep(d: Duration) {
    match FLAVOR.with(Cell::get) {
        Flavor::Glommio => {
            glommio::timer::sleep(d).await;
        }
        Flavor::Tokio => tokio::time::sleep(d).await,
    }
}
