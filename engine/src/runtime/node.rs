//! Starting and stopping a node: one glommio executor per shard (pinned to a CPU it claimed,
//! see `cpus.rs`), the bus between them, and the handle applications use.

use std::path::Path;
use std::rc::Rc;

use phalanx_net::{InboundSink, TransportFactory};
use std::sync::Arc;

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use super::bus::Bus;
use super::cpus::{self, CpuClaims};
use super::shard::{Shard, ShardSetup};
use super::shared::NodeShared;
use crate::Error;
use crate::config::NodeConfig;
use crate::handle::NodeHandle;
use crate::state_machine::StateMachineFactory;

/// glommio's registered IO memory per shard. Small, so non-root users (8 MiB `ulimit -l` by
/// default on many systems; 512 KiB minimum) can run several shards (DESIGN.md).
const SHARD_IO_MEMORY_BYTES: usize = 1 << 20;
/// Name of the file that records what wrote a data directory.
const NODE_META_FILE: &str = "phalanx.node";
/// Layout version of the data directory.
const DATA_DIR_FORMAT: u32 = 1;

/// A running node.
pub struct Node {
    handle: NodeHandle,
    bus: Bus,
    joins: Vec<ExecutorJoinHandle<()>>,
    /// The CPUs this node's shards are pinned to, held until the node is dropped.
    _cpus: CpuClaims,
}

impl Node {
    /// Starts a node: checks the configuration and data directory, starts one executor per
    /// shard, restores every partition from its WAL shard and snapshot, and returns once
    /// every shard is running (or the first error).
    pub fn start<F: TransportFactory>(
        cfg: NodeConfig,
        transports: F,
        sms: StateMachineFactory,
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
        let (pinned, cpu_claims) = if cfg.pin_cores {
            cpus::claim(shards, &cpus::allowed_cpus(), &cpus::default_lock_dir())
        } else {
            (vec![None; shards], CpuClaims::default())
        };
        if cfg.pin_cores {
            let unpinned: Vec<usize> = (0..shards).filter(|&i| pinned[i].is_none()).collect();
            if unpinned.is_empty() {
                tracing::info!(node = cfg.node_id, cpus = ?pinned, "shards pinned");
            } else {
                tracing::warn!(
                    node = cfg.node_id,
                    shards = ?unpinned,
                    "no free CPU for these shards (other processes on this host hold the rest): they run unpinned"
                );
            }
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<usize, Error>>();
        let mut joins = Vec::with_capacity(shards);
        for (i, inbox) in rxs.into_iter().enumerate() {
            let placement = pinned[i].map_or(Placement::Unbound, Placement::Fixed);
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
            let spawned = LocalExecutorBuilder::new(placement)
                .name(&format!("phalanx-n{}-s{i}", cfg.node_id))
                .io_memory(SHARD_IO_MEMORY_BYTES)
                .spawn(move || async move {
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
            match spawned {
                Ok(j) => joins.push(j),
                Err(e) => {
                    let reason = format!("starting its executor: {e}");
                    let _ = ready_tx.send(Err(Error::Executor { thread: format!("shard {i}"), reason }));
                }
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
        let node = Node { handle, bus, joins, _cpus: cpu_claims };
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

    /// Stops every shard (pending requests fail with `Errored`) and waits for them.
    pub fn shutdown(self) {
        self.stop();
    }

    fn stop(&self) {
        self.bus.stop_all();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
        for j in self.joins.drain(..) {
            let _ = j.join();
        }
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
