//! Starting and stopping a node: its shards placed on executors (a pool of its own, one
//! pinned executor per shard, or one the embedder shares between nodes: `executors.rs`),
//! the bus between them, and the handle applications use.

use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use phalanx_net::{InboundSink, TransportFactory};

use super::bus::Bus;
use super::executors::Executors;
use super::shard::{Shard, ShardSetup};
use super::shared::NodeShared;
use crate::Error;
use crate::config::NodeConfig;
use crate::handle::NodeHandle;
use crate::state_machine::StateMachineFactory;

/// Name of the file that records what wrote a data directory.
const NODE_META_FILE: &str = "phalanx.node";
/// Layout version of the data directory.
const DATA_DIR_FORMAT: u32 = 1;
/// How often a node waiting for its shards to stop checks that their executors still run
/// (one that panicked never reports its shards' end).
const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// A running node.
pub struct Node {
    handle: NodeHandle,
    bus: Bus,
    /// One message per shard whose task ended (or was dropped).
    finished: std::sync::mpsc::Receiver<()>,
    /// The executor of each shard.
    placed: Vec<usize>,
    /// Held until every shard of this node has stopped.
    executors: Executors,
}

/// Reports the end of a shard's task, however it ends.
struct Finished(std::sync::mpsc::Sender<()>);

impl Drop for Finished {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl Node {
    /// Starts a node on executors of its own, one per shard, pinned to CPUs it claims when
    /// `cfg.pin_cores` (see [`Node::start_on`] for the rest).
    ///
    /// # Errors
    /// As [`Node::start_on`], and [`Error::Executor`] when a thread cannot be started.
    pub fn start<F: TransportFactory>(
        cfg: NodeConfig,
        transports: F,
        sms: StateMachineFactory,
    ) -> Result<Node, Error> {
        cfg.validate()?;
        let executors = Executors::start(cfg.cores, cfg.pin_cores, &format!("phalanx-n{}-s", cfg.node_id))?;
        Node::start_on(cfg, transports, sms, &executors, 0)
    }

    /// Starts a node whose shard *i* runs on executor `(first_executor + i) % executors.len()`
    /// of a pool that other nodes may share: checks the configuration and data directory,
    /// restores every partition from its WAL shard and snapshot, and returns once every
    /// shard is running (or the first error). `cfg.pin_cores` does not apply: the pool's
    /// executors are pinned (or not) when it starts.
    ///
    /// # Errors
    /// A configuration or data directory this node cannot use, or the first shard's error
    /// at open (its store, its transport, a partition that cannot recover).
    pub fn start_on<F: TransportFactory>(
        cfg: NodeConfig,
        transports: F,
        sms: StateMachineFactory,
        executors: &Executors,
        first_executor: usize,
    ) -> Result<Node, Error> {
        cfg.validate()?;
        check_data_dir(&cfg)?;
        let shards = cfg.cores;
        let (txs, rxs): (Vec<_>, Vec<_>) =
            (0..shards).map(|_| flume::bounded(cfg.shard_inbox_capacity)).unzip();
        let bus = Bus::new(txs);
        let shared = Arc::new(NodeShared::new(cfg.initial_partitions));
        let cfg = Arc::new(cfg);
        let transports = Arc::new(transports);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<usize, Error>>();
        let (finished_tx, finished) = std::sync::mpsc::channel();
        let placed: Vec<usize> = (0..shards).map(|i| (first_executor + i) % executors.len()).collect();
        for (i, inbox) in rxs.into_iter().enumerate() {
            let setup = ShardSetup {
                shard: i,
                shards,
                cfg: cfg.clone(),
                inbox,
                bus: bus.clone(),
                shared: shared.clone(),
                state_machines: sms.clone(),
            };
            let transports = transports.clone();
            let ready = ready_tx.clone();
            let finished = Finished(finished_tx.clone());
            let spawned = executors.spawn(placed[i], move || async move {
                let _finished = finished;
                let bus = setup.bus.clone();
                let sink: InboundSink =
                    Rc::new(move |inbound| bus.deliver_peer(i, inbound.from, inbound.batch.messages));
                let transport = match transports.start(i, shards, sink) {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = ready.send(Err(Error::Transport { shard: i, source: Arc::new(e) }));
                        return;
                    }
                };
                match Shard::open(setup, transport).await {
                    Ok(shard) => {
                        let _ = ready.send(Ok(i));
                        shard.run().await;
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            });
            if !spawned {
                let reason = format!("executor {} is gone", placed[i]);
                let _ = ready_tx.send(Err(Error::Executor { thread: format!("shard {i}"), reason }));
            }
        }
        drop(ready_tx);
        let mut first_error = None;
        for _ in 0..shards {
            match ready_rx.recv() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    let reason = "exited during start".to_string();
                    first_error.get_or_insert(Error::Executor { thread: "a shard".into(), reason });
                    break;
                }
            }
        }
        let handle = NodeHandle::new(cfg, bus.clone(), shared);
        let node = Node { handle, bus, finished, placed, executors: executors.clone() };
        if let Some(e) = first_error {
            node.stop();
            return Err(e);
        }
        Ok(node)
    }

    /// A handle to use the node from any thread or async runtime.
    #[must_use]
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops every shard (pending requests fail with `Errored`) and waits for them; so does
    /// dropping the node. Never from a task on an executor of the node's pool (it would wait
    /// for shards that need that executor).
    pub fn shutdown(self) {
        self.stop();
    }

    fn stop(&self) {
        self.bus.stop_all();
    }

    /// Waits until every shard's task has ended, or its executor is gone.
    fn wait_for_shards(&self) {
        let mut running = self.placed.len();
        while running > 0 {
            match self.finished.recv_timeout(STOP_CHECK_INTERVAL) {
                Ok(()) => running -= 1,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if self.placed.iter().any(|&e| !self.executors.alive(e)) {
                        return;
                    }
                }
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
        self.wait_for_shards();
    }
}

/// Creates the data directory, or checks that an existing one was written by this node with
/// the same core count and cluster: its WAL shards map partitions by core count.
fn check_data_dir(cfg: &NodeConfig) -> Result<(), Error> {
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mismatch = |reason: String| Error::DataDir { path: dir.clone(), reason };
    let path = dir.join(NODE_META_FILE);
    let want = format!(
        "format={DATA_DIR_FORMAT}\nnode_id={}\ncores={}\ncluster_id={}\n",
        cfg.node_id, cfg.cores, cfg.cluster_id
    );
    match std::fs::read_to_string(&path) {
        Ok(have) if have == want => Ok(()),
        Ok(have) => Err(mismatch(format!(
            "written by another configuration ({}); expected {}",
            one_line(&have),
            one_line(&want)
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if has_shards(dir) || cfg.wal_dir.as_deref().is_some_and(has_shards) {
                return Err(mismatch(format!("holds shards but no {NODE_META_FILE}")));
            }
            write_synced(&path, want.as_bytes()).map_err(|e| Error::io(&path, e))
        }
        Err(e) => Err(Error::io(&path, e)),
    }
}

fn one_line(s: &str) -> String {
    s.trim().replace('\n', ", ")
}

fn has_shards(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().starts_with("shard-")))
        .unwrap_or(false)
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
