//! `phalanx ctl`: an etcdctl-like client of the nodes' client ports. Writes go to the leader
//! of the key's partition (following `NOT_LEADER` answers); reads go to any node (the read
//! barrier makes them linearizable everywhere). Failures print a typed error on stderr and
//! exit non-zero.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Subcommand};
use phalanx::client::{Client, ClientFailure};
use phalanx_proto::{
    AppendRequest, CasRequest, CheckpointRequest, ClientErrorCode, DeleteRequest, GetRequest, PutRequest,
    StatusRequest, StatusResponse, TransferLeaderRequest, client_request::Op, client_response::Result as R,
};

/// How long ctl keeps retrying while a partition has no leader or leadership moves.
const RETRY_FOR: Duration = Duration::from_secs(15);
/// Pause between retries.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Flags of `phalanx ctl`.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Client endpoints of the nodes, comma separated ("host:port,host:port").
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// Nodes, partitions, leaders, terms and commit indexes.
    Status {
        /// Print JSON: {"nodes":[…],"partitions":[{"id","leader","term","commit_index"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Stores VALUE under KEY.
    Put { key: String, value: String },
    /// Prints the value of KEY (linearizable).
    Get { key: String },
    /// Stores NEW under KEY if its value is EXPECTED (with --absent: if KEY does not exist).
    Cas {
        key: String,
        expected: String,
        new: String,
        /// Succeed only if KEY does not exist (EXPECTED is ignored).
        #[arg(long)]
        absent: bool,
    },
    /// Removes KEY.
    Delete { key: String },
    /// Appends a raw entry to a partition's log.
    Append {
        /// Partition id (default: the partition of --key).
        #[arg(long, default_value_t = 0)]
        partition: u64,
        /// Key whose partition to use when --partition is not given.
        #[arg(long, default_value = "")]
        key: String,
        /// Log type of the entry.
        #[arg(long, default_value = "append")]
        log_type: String,
        /// The entry's payload.
        payload: String,
    },
    /// Asks the leader of PARTITION to hand leadership to node TARGET.
    TransferLeader { partition: u64, target: u64 },
    /// Replicates a checkpoint on PARTITION: once applied, every replica snapshots the
    /// partition and compacts its log below the checkpoint.
    Checkpoint { partition: u64 },
}

/// Runs a ctl command; the exit code says whether it succeeded.
pub fn run(a: CtlArgs) -> ExitCode {
    let endpoints: Vec<String> =
        a.endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
    if endpoints.is_empty() {
        eprintln!("error: --endpoints lists no endpoint");
        return ExitCode::from(2);
    }
    let mut ctl = Ctl { endpoints, ids: BTreeMap::new() };
    let outcome = match a.command {
        CtlCommand::Status { json } => ctl.status(json),
        CtlCommand::Put { key, value } => {
            ctl.write(Op::Put(PutRequest { key, value: Bytes::from(value.into_bytes()) })).map(|r| match r {
                R::Put(p) => format!("OK (partition {}, index {})", p.partition, p.log_index),
                other => format!("{other:?}"),
            })
        }
        CtlCommand::Get { key } => ctl.read(Op::Get(GetRequest { key })).map(|r| match r {
            R::Get(g) => String::from_utf8_lossy(&g.value).into_owned(),
            other => format!("{other:?}"),
        }),
        CtlCommand::Cas { key, expected, new, absent } => ctl
            .write(Op::Cas(CasRequest {
                key,
                expected: Bytes::from(expected.into_bytes()),
                expect_absent: absent,
                value: Bytes::from(new.into_bytes()),
            }))
            .and_then(|r| match r {
                R::Cas(c) if c.succeeded => {
                    Ok(format!("OK (partition {}, index {})", c.partition, c.log_index))
                }
                R::Cas(c) => Err(format!(
                    "CAS_FAILED: current value is {}",
                    if c.found {
                        format!("{:?}", String::from_utf8_lossy(&c.current))
                    } else {
                        "absent".into()
                    }
                )),
                other => Ok(format!("{other:?}")),
            }),
        CtlCommand::Delete { key } => ctl.write(Op::Delete(DeleteRequest { key })).map(|r| match r {
            R::Delete(d) => format!(
                "{} (partition {}, index {})",
                if d.existed { "OK" } else { "OK (absent)" },
                d.partition,
                d.log_index
            ),
            other => format!("{other:?}"),
        }),
        CtlCommand::Append { partition, key, log_type, payload } => ctl
            .write(Op::Append(AppendRequest {
                partition,
                key,
                log_type,
                payload: Bytes::from(payload.into_bytes()),
            }))
            .map(|r| match r {
                R::Append(x) => format!("OK (partition {}, index {})", x.partition, x.log_index),
                other => format!("{other:?}"),
            }),
        CtlCommand::TransferLeader { partition, target } => ctl
            .write(Op::TransferLeader(TransferLeaderRequest { partition, target }))
            .map(|_| "OK".to_string()),
        CtlCommand::Checkpoint { partition } => {
            ctl.write(Op::Checkpoint(CheckpointRequest { partition })).map(|r| match r {
                R::Checkpoint(c) => format!("OK (partition {}, index {})", c.partition, c.log_index),
                other => format!("{other:?}"),
            })
        }
    };
    match outcome {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Ctl {
    endpoints: Vec<String>,
    /// node id → endpoint, learned from status answers.
    ids: BTreeMap<u64, String>,
}

impl Ctl {
    fn call(&self, endpoint: &str, op: Op) -> Result<R, ClientFailure> {
        Client::connect(endpoint)?.call(op)
    }

    fn learn_ids(&mut self) {
        for e in self.endpoints.clone() {
            if let Ok(R::Status(s)) = self.call(&e, Op::Status(StatusRequest {})) {
                self.ids.insert(s.node_id, e);
            }
        }
    }

    /// Sends a write to the leader, following NOT_LEADER hints and retrying while no leader
    /// is known.
    fn write(&mut self, op: Op) -> Result<R, String> {
        let deadline = Instant::now() + RETRY_FOR;
        let mut target = self.endpoints[0].clone();
        let mut next = 0usize;
        let mut last_err = String::new();
        while Instant::now() < deadline {
            match self.call(&target, op.clone()) {
                Ok(r) => return Ok(r),
                Err(ClientFailure::Server(e)) if e.code == ClientErrorCode::NotLeader as i32 => {
                    last_err = ClientFailure::Server(e.clone()).to_string();
                    if !e.leader_address.is_empty() {
                        target = e.leader_address.clone();
                        continue;
                    }
                    if e.leader_id != 0 {
                        if !self.ids.contains_key(&e.leader_id) {
                            self.learn_ids();
                        }
                        if let Some(ep) = self.ids.get(&e.leader_id) {
                            target = ep.clone();
                            continue;
                        }
                    }
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(ClientFailure::Server(e))
                    if e.code == ClientErrorCode::Busy as i32
                        || e.code == ClientErrorCode::Timeout as i32 =>
                {
                    last_err = ClientFailure::Server(e).to_string();
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(f @ ClientFailure::Server(_)) => return Err(f.to_string()),
                Err(f) => {
                    // Unreachable endpoint: try the next one.
                    last_err = f.to_string();
                    next += 1;
                    target = self.endpoints[next % self.endpoints.len()].clone();
                    if next % self.endpoints.len() == 0 {
                        std::thread::sleep(RETRY_PAUSE);
                    }
                }
            }
        }
        Err(last_err)
    }

    /// Sends a read to the first endpoint that answers.
    fn read(&mut self, op: Op) -> Result<R, String> {
        let deadline = Instant::now() + RETRY_FOR;
        let mut last_err = String::new();
        while Instant::now() < deadline {
            for e in &self.endpoints {
                match self.call(e, op.clone()) {
                    Ok(r) => return Ok(r),
                    Err(ClientFailure::Server(err))
                        if err.code == ClientErrorCode::NotLeader as i32
                            || err.code == ClientErrorCode::Busy as i32
                            || err.code == ClientErrorCode::Timeout as i32 =>
                    {
                        last_err = ClientFailure::Server(err).to_string();
                    }
                    Err(f @ ClientFailure::Server(_)) => return Err(f.to_string()),
                    Err(f) => last_err = f.to_string(),
                }
            }
            std::thread::sleep(RETRY_PAUSE);
        }
        Err(last_err)
    }

    fn status(&mut self, json: bool) -> Result<String, String> {
        let mut answers: Vec<(String, Result<StatusResponse, String>)> = Vec::new();
        for e in &self.endpoints {
            let r = match self.call(e, Op::Status(StatusRequest {})) {
                Ok(R::Status(s)) => Ok(s),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(f) => Err(f.to_string()),
            };
            answers.push((e.clone(), r));
        }
        if answers.iter().all(|(_, r)| r.is_err()) {
            let why: Vec<String> = answers
                .iter()
                .map(|(e, r)| format!("{e}: {}", r.as_ref().err().cloned().unwrap_or_default()))
                .collect();
            return Err(format!("no endpoint answered ({})", why.join("; ")));
        }
        // Per partition, the leader's own view is authoritative; otherwise the newest term.
        let mut best: BTreeMap<u64, (bool, phalanx_proto::PartitionInfo)> = BTreeMap::new();
        for (_, r) in &answers {
            let Ok(s) = r else { continue };
            for p in &s.partitions {
                let own = p.leader == s.node_id;
                let better = match best.get(&p.id) {
                    None => true,
                    Some((b_own, b)) => (own, p.term, p.commit_index) > (*b_own, b.term, b.commit_index),
                };
                if better {
                    best.insert(p.id, (own, *p));
                }
            }
        }
        if json {
            let nodes: Vec<serde_json::Value> = answers
                .iter()
                .map(|(e, r)| match r {
                    Ok(s) => serde_json::json!({"id": s.node_id, "endpoint": e, "reachable": true,
                        "raft_address": s.nodes.iter().find(|n| n.id == s.node_id).map(|n| n.raft_address.clone()).unwrap_or_default()}),
                    Err(err) => serde_json::json!({"id": null, "endpoint": e, "reachable": false, "error": err}),
                })
                .collect();
            let partitions: Vec<serde_json::Value> = best
                .values()
                .map(|(_, p)| {
                    serde_json::json!({"id": p.id, "leader": if p.leader == 0 { serde_json::Value::Null } else { p.leader.into() },
                        "term": p.term, "commit_index": p.commit_index, "applied_index": p.applied_index, "last_index": p.last_index})
                })
                .collect();
            return Ok(serde_json::json!({"nodes": nodes, "partitions": partitions}).to_string());
        }
        let mut out = String::new();
        for (e, r) in &answers {
            match r {
                Ok(s) => out.push_str(&format!("node {} at {e}: up\n", s.node_id)),
                Err(err) => out.push_str(&format!("node at {e}: unreachable ({err})\n")),
            }
        }
        out.push_str(&format!("{:>9}  {:>20}  {:>6}  {:>10}\n", "partition", "leader", "term", "commit"));
        for (_, p) in best.values() {
            let leader = if p.leader == 0 { "-".to_string() } else { p.leader.to_string() };
            out.push_str(&format!("{:>9}  {:>20}  {:>6}  {:>10}\n", p.id, leader, p.term, p.commit_index));
        }
        Ok(out.trim_end().to_string())
    }
}
