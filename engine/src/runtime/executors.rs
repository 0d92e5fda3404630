//! The executor threads shards run on: one glommio executor per thread, shared by any number
//! of shards, of one node or of several.
//!
//! A node started with [`Node::start`](super::Node::start) gets a pool of its own, one
//! executor per shard, pinned to CPUs it claims (`cpus.rs`). An embedder that runs several
//! nodes in one process (an in-process cluster, the benchmark's framework mode, tests) can
//! instead start one pool sized to the machine and place every node's shards on it with
//! [`Node::start_on`](super::Node::start_on): three nodes on two cores then run on two
//! threads, not three that the kernel time-slices, and a message between two shards of the
//! same executor is a task wake-up on that thread instead of a cross-thread wake-up (an
//! `eventfd` write, a context switch and the sleeper's return through `io_uring_enter`).
//!
//! A shard never moves: it runs on the executor it was placed on until it stops. Its tasks
//! (the shard loop, the WAL writer, the transport's) are ordinary local tasks there, so
//! everything a shard owns stays on one thread, as before.
//!
//! The contract:
//! - [`Executors::spawn`] hands a closure to one executor's thread, which builds the future
//!   there (it need not be `Send`) and runs it as a detached task.
//! - The pool's threads run until the last clone of the pool is dropped; tasks still running
//!   then are dropped with their executor. Every node placed on a pool holds a clone and
//!   waits for its own shards to finish before it lets go, so that happens only to tasks of
//!   nodes that were leaked.
//! - A panic in a task ends its executor's thread, and with it every shard placed there.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement, PoolPlacement};

use super::cpus::{self, CpuClaims};
use crate::Error;

/// glommio's registered IO memory per executor. Small, so non-root users (8 MiB `ulimit -l`
/// by default on many systems; 512 KiB minimum) can run several executors (DESIGN.md).
const EXECUTOR_IO_MEMORY_BYTES: usize = 1 << 20;

/// Most executors one pool starts: as many as a node may have shards (a node's own pool has
/// one per shard). A shared pool gains nothing from more threads than CPUs, and the most
/// shards a node runs is already more CPUs than one machine has; each executor costs rings and
/// registered memory.
pub const MAX_EXECUTORS: usize = crate::config::MAX_SHARDS;

/// Work handed to an executor: builds its future on the executor's thread.
type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A pool of executor threads that shards are placed on. Cloning it is cheap; the threads
/// stop when the last clone is dropped.
#[derive(Clone)]
pub struct Executors {
    inner: Arc<Inner>,
}

struct Inner {
    /// One job queue per executor.
    queues: Vec<flume::Sender<Job>>,
    /// The threads, joined when the pool goes.
    joins: Mutex<Vec<ExecutorJoinHandle<()>>>,
    /// The CPUs the executors are pinned to, held while they run.
    _cpus: CpuClaims,
}

impl std::fmt::Debug for Executors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executors").field("len", &self.len()).finish()
    }
}

impl Executors {
    /// Starts `count` executor threads named `{name}{i}`. With `pin`, each is pinned to a
    /// CPU it claims among those the process may use and no other Phalanx process of the host
    /// holds (`cpus.rs`); those that find none run unpinned.
    ///
    /// # Errors
    /// [`Error::Config`] for a count of 0 or above [`MAX_EXECUTORS`]; [`Error::Executor`]
    /// when a thread cannot be started (the ones already started are stopped).
    pub fn start(count: usize, pin: bool, name: &str) -> Result<Executors, Error> {
        if count == 0 || count > MAX_EXECUTORS {
            return Err(Error::Config(format!("executors: {count}; expected 1..={MAX_EXECUTORS}")));
        }
        let (pinned, claims) = if pin {
            cpus::claim(count, &cpus::allowed_cpus(), &cpus::default_lock_dir())
        } else {
            (vec![None; count], CpuClaims::default())
        };
        if pin {
            let unpinned: Vec<usize> = (0..count).filter(|&i| pinned[i].is_none()).collect();
            if unpinned.is_empty() {
                tracing::info!(name, cpus = ?pinned, "executors pinned");
            } else {
                tracing::warn!(
                    name,
                    executors = ?unpinned,
                    "no free CPU for these executors (other processes on this host hold the rest): they run unpinned"
                );
            }
        }
        let mut queues = Vec::with_capacity(count);
        let mut joins = Vec::with_capacity(count);
        for (i, cpu) in pinned.into_iter().enumerate() {
            let (tx, rx) = flume::unbounded::<Job>();
            let thread = format!("{name}{i}");
            let spawned = LocalExecutorBuilder::new(cpu.map_or(Placement::Unbound, Placement::Fixed))
                .name(&thread)
                .io_memory(EXECUTOR_IO_MEMORY_BYTES)
                // The blocking thread (snapshot saves, file operations, decoding the WAL at a
                // restart) may run on any CPU: bound to its executor's, as glommio does for a
                // pinned executor, it only took turns with the shard it was meant to relieve.
                .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
                .spawn(move || async move {
                    // Until every clone of the pool is gone.
                    while let Ok(job) = rx.recv_async().await {
                        glommio::spawn_local(job()).detach();
                    }
                });
            match spawned {
                Ok(j) => {
                    queues.push(tx);
                    joins.push(j);
                }
                Err(e) => {
                    // Dropping what was built closes the queues and joins the threads.
                    drop(Inner { queues, joins: Mutex::new(joins), _cpus: claims });
                    return Err(Error::Executor { thread, reason: format!("starting it: {e}") });
                }
            }
        }
        Ok(Executors { inner: Arc::new(Inner { queues, joins: Mutex::new(joins), _cpus: claims }) })
    }

    /// Number of executors.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner.queues.len()
    }

    /// Always false: a pool has at least one executor.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.inner.queues.is_empty()
    }

    /// Whether executor `executor % len()` still runs (its thread ends only when the pool
    /// goes or a task on it panics).
    #[must_use]
    pub fn alive(&self, executor: usize) -> bool {
        !self.inner.queues[executor % self.len()].is_disconnected()
    }

    /// Runs the future `make` builds on executor `executor % len()`, as a detached task.
    /// `false` if that executor's thread is gone (it panicked).
    ///
    /// A task here must not stop or drop a node placed on this pool: stopping waits for the
    /// node's shards, which may need this very executor to finish.
    pub fn spawn<F, Fut>(&self, executor: usize, make: F) -> bool
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let job: Job = Box::new(move || Box::pin(make()));
        self.inner.queues[executor % self.len()].send(job).is_ok()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queues.clear();
        let joins = std::mem::take(&mut *self.joins.lock().unwrap_or_else(PoisonError::into_inner));
        let me = std::thread::current().id();
        for j in joins {
            // The last clone may go on one of the pool's own threads (a task that held a
            // node): that thread ends when this task returns, it cannot wait for itself.
            if j.thread().id() != me {
                let _ = j.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_the_executor_they_are_placed_on() {
        let pool = Executors::start(2, false, "test-exec-").expect("a pool");
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..4 {
            let tx = tx.clone();
            assert!(pool.spawn(i, move || async move {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = tx.send((i, name));
            }));
        }
        let mut got: Vec<(usize, Option<String>)> = (0..4).map(|_| rx.recv().expect("a job ran")).collect();
        got.sort();
        // glommio names the thread `{name}-{its executor id}`: `test-exec-1-7` is executor 1.
        let executors: Vec<String> = got
            .into_iter()
            .map(|(_, n)| {
                let n = n.unwrap_or_default();
                n.strip_prefix("test-exec-").and_then(|r| r.split('-').next()).unwrap_or(&n).to_string()
            })
            .collect();
        assert_eq!(executors, ["0", "1", "0", "1"]);
    }

    #[test]
    fn a_pool_needs_one_executor_and_no_more_than_the_limit() {
        assert!(matches!(Executors::start(0, false, "x"), Err(Error::Config(_))));
        assert!(matches!(Executors::start(MAX_EXECUTORS + 1, false, "x"), Err(Error::Config(_))));
    }
}
