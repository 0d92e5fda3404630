//! `phalanx ctl`: an etcdctl-like client of the nodes' client ports. Writes go to the leader
//! of the key's partition (following `NOT_LEADER` answers); reads go to any node (the read
//! barrier makes them linearizable everywhere). Failures print a typed error on stderr and
//! exit non-zero.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Subcommand};
use phalanx::client::{CLIENT_CONNECT_TIMEOUT, Client, ClientFailure, ClientSecurity, ClientTimeouts};
use phalanx_proto::{
    AppendRequest, CasRequest, CheckpointRequest, ClientErrorCode, DeleteRequest, GetRequest, MemberAdd,
    MemberChangeRequest, MemberListRequest, MemberListResponse, PutRequest, StatusRequest, StatusResponse,
    TransferLeaderRequest, client_request::Op, client_response::Result as R,
};

/// Pause before another round over the endpoints, when every one was tried and none could
/// serve the request yet (no leader, or leadership moving).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Share of the whole timeout one attempt may take: a paused node (which the kernel still
/// lets connect) must leave time for the other endpoints.
const ATTEMPT_SHARE: u32 = 3;

/// Flags of `phalanx ctl`.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// Client endpoints of the nodes, comma separated ("host:port,host:port").
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// How long the command may take in all, retries included, in seconds (fractions
    /// allowed). Connecting to one endpoint takes at most 1 s of it, one attempt at most a
    /// third.
    #[arg(long, default_value_t = 5.0, value_parser = parse_timeout)]
    timeout: f64,
    #[command(flatten)]
    security: ClientSecurityArgs,
    #[command(subcommand)]
    command: CtlCommand,
}

/// How `ctl` reaches secured client ports.
#[derive(Args, Debug, Default)]
pub struct ClientSecurityArgs {
    /// Connect with TLS, trusting the CA certificates of this PEM file.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for ports that require one; needs --tls-key and --tls-ca.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Also require the node's certificate to have one of these SHA-256 fingerprints
    /// (comma separated; needs --tls-ca).
    #[arg(long)]
    tls_pin: Option<String>,
    /// The client port's token. Visible to other local users in the process list: prefer
    /// --token-file.
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the token (one trailing newline dropped).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// A secret from a flag or a file (one trailing newline, or CRLF, dropped); `None` if neither.
pub fn secret_arg(
    value: &Option<String>,
    file: &Option<PathBuf>,
    flag: &str,
) -> Result<Option<Vec<u8>>, String> {
    match (value, file) {
        (Some(v), _) => Ok(Some(v.as_bytes().to_vec())),
        (None, Some(path)) => {
            let mut b = std::fs::read(path).map_err(|e| format!("--{flag}-file {}: {e}", path.display()))?;
            if b.last() == Some(&b'\n') {
                b.pop();
                if b.last() == Some(&b'\r') {
                    b.pop();
                }
            }
            Ok(Some(b))
        }
        (None, None) => Ok(None),
    }
}

/// What a client needs to reach secured client ports: TLS trusting `ca` (presenting
/// `identity` when given, requiring `pins` when given) and a token.
pub fn client_security(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
    pins: Option<&str>,
    token: Option<Vec<u8>>,
) -> Result<ClientSecurity, String> {
    let pins = pins.map(phalanx_net::tls::parse_pins).transpose().map_err(|e| format!("--tls-pin: {e}"))?;
    let tls = match ca {
        Some(ca) => Some(
            phalanx_net::tls::client_config(ca, identity, pins.as_deref().unwrap_or(&[]))
                .map_err(|e| e.to_string())?,
        ),
        None if identity.is_some() => {
            return Err("--tls-cert and --tls-key need --tls-ca (the CA to trust)".into());
        }
        None if pins.is_some() => return Err("--tls-pin needs --tls-ca".into()),
        None => None,
    };
    Ok(ClientSecurity { tls, token })
}

impl ClientSecurityArgs {
    fn resolve(&self) -> Result<ClientSecurity, String> {
        let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
        let token = secret_arg(&self.token, &self.token_file, "token")?;
        client_security(self.tls_ca.as_deref(), identity, self.tls_pin.as_deref(), token)
    }
}

/// `--timeout`: a positive number of seconds, at most a day.
fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in (0, 86400]")),
    }
}

/// `host:port` with a numeric port; the host is resolved when connecting.
fn check_endpoint(e: &str) -> Result<(), String> {
    match e.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => Ok(()),
        _ => Err(format!("--endpoints: {e:?} is not host:port")),
    }
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
    /// The roster: who belongs to the cluster.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
}

#[derive(Subcommand, Debug)]
enum MemberCommand {
    /// Every member: id, role, liveness (up, suspect or down, by the answering node's SWIM detector),
    /// addresses.
    List {
        /// Print JSON: {"version":N,"members":[{"id","raft_address","client_address","role","liveness"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Adds node ID, reachable for Raft at RAFT_ADDRESS, as a learner: every partition brings
    /// it up to date, then the roster makes it a voter.
    Add {
        id: u64,
        raft_address: String,
        /// Its client port ("host:port"), for leader hints.
        #[arg(long, default_value = "")]
        client_address: String,
        /// The roster version the change expects (default: the one the answering node holds).
        #[arg(long, default_value_t = 0)]
        expected_version: u64,
    },
    /// Confirms learner ID is a voter (refused until every partition reported it caught up,
    /// which makes it a voter by itself).
    Promote {
        id: u64,
        /// The roster version the change expects (default: the one the answering node holds).
        #[arg(long, default_value_t = 0)]
        expected_version: u64,
    },
    /// Removes member ID: a learner at once; a voter hands over its leaderships, leaves every
    /// partition, then the roster. Replacing a dead node: remove it, then start a new one.
    Remove {
        id: u64,
        /// The roster version the change expects (default: the one the answering node holds).
        #[arg(long, default_value_t = 0)]
        expected_version: u64,
    },
}

/// Runs a ctl command; the exit code says whether it succeeded.
pub fn run(a: CtlArgs) -> ExitCode {
    let endpoints: Vec<String> =
        a.endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
    if endpoints.is_empty() {
        eprintln!("error: --endpoints lists no endpoint");
        return ExitCode::from(2);
    }
    if let Some(bad) = endpoints.iter().find_map(|e| check_endpoint(e).err()) {
        eprintln!("error: {bad}");
        return ExitCode::from(2);
    }
    let security = match a.security.resolve() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut ctl = Ctl::new(endpoints, Duration::from_secs_f64(a.timeout), security);
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
        CtlCommand::Member { command } => member(&mut ctl, command),
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

/// `phalanx ctl member …`.
fn member(ctl: &mut Ctl, command: MemberCommand) -> Result<String, String> {
    use phalanx_proto::member_change_request::Change as C;
    let (expected_version, change) = match command {
        MemberCommand::List { json } => {
            let l = match ctl.newest_roster() {
                Some(l) => l,
                // No endpoint answered: the usual retries and the failure naming each one.
                None => match ctl.read(Op::MemberList(MemberListRequest {}))? {
                    R::MemberList(l) => l,
                    other => return Err(format!("unexpected answer to a member list: {other:?}")),
                },
            };
            return Ok(member_list(&l, json));
        }
        MemberCommand::Add { id, raft_address, client_address, expected_version } => {
            check_endpoint(&raft_address).map_err(|e| e.replace("--endpoints", "RAFT_ADDRESS"))?;
            if !client_address.is_empty() {
                check_endpoint(&client_address).map_err(|e| e.replace("--endpoints", "--client-address"))?;
            }
            (expected_version, C::Add(MemberAdd { id, raft_address, client_address }))
        }
        MemberCommand::Promote { id, expected_version } => (expected_version, C::Promote(id)),
        MemberCommand::Remove { id, expected_version } => (expected_version, C::Remove(id)),
    };
    match ctl.write(Op::MemberChange(MemberChangeRequest { expected_version, change: Some(change) }))? {
        R::MemberChange(c) if c.changed => Ok(format!("OK (roster version {})", c.version)),
        R::MemberChange(c) => Ok(format!("OK (already so; roster version {})", c.version)),
        other => Err(format!("unexpected answer to a member change: {other:?}")),
    }
}

/// `phalanx node --join`: asks the cluster behind `endpoints` to add node `id` (as a learner),
/// through the system partition's leader (following hints), and returns the roster once it
/// has the node — all within `timeout`. While another member is joining or leaving it waits
/// (one change at a time); a refused add (the id or an address already another member's)
/// fails at once, saying why.
pub fn join(
    endpoints: Vec<String>,
    timeout: Duration,
    id: u64,
    raft_address: String,
    client_address: String,
    security: &ClientSecurity,
) -> Result<MemberListResponse, String> {
    use phalanx_proto::member_change_request::Change as C;
    if let Some(bad) = endpoints.iter().find_map(|e| check_endpoint(e).err()) {
        return Err(bad.replace("--endpoints", "--join"));
    }
    let mut ctl = Ctl::new(endpoints, timeout, security.clone());
    ctl.change_member_waiting(C::Add(MemberAdd { id, raft_address, client_address }))
        .map_err(|e| format!("the cluster did not add node {id}: {e}"))?;
    ctl.wait_for_roster(|l| l.members.iter().any(|m| m.id == id)).ok_or_else(|| {
        format!("node {id} was added, but no endpoint showed it in the roster within {timeout:?}")
    })
}

/// `phalanx node --leave-on-shutdown`: asks the cluster behind `endpoints` to remove node
/// `id` (waiting while another member is in transition), then waits until the roster no
/// longer has it — every partition dropped it — all within `timeout`. Returns the roster
/// version without it.
pub fn leave(
    endpoints: Vec<String>,
    timeout: Duration,
    id: u64,
    security: &ClientSecurity,
) -> Result<u64, String> {
    use phalanx_proto::member_change_request::Change as C;
    let mut ctl = Ctl::new(endpoints, timeout, security.clone());
    ctl.change_member_waiting(C::Remove(id))
        .map_err(|e| format!("the cluster did not take node {id}'s leave: {e}"))?;
    ctl.wait_for_roster(|l| !l.members.iter().any(|m| m.id == id))
        .map(|l| l.version)
        .ok_or_else(|| format!("node {id} is leaving, but the roster still had it after {timeout:?}"))
}

/// A member list as a table or as JSON (the JSON's fields are an interface: checks outside
/// the repository read them).
fn member_list(l: &MemberListResponse, json: bool) -> String {
    if json {
        let members: Vec<serde_json::Value> = l
            .members
            .iter()
            .map(|m| {
                let lag: BTreeMap<String, u64> = m.partition_lag.iter().map(|(p, l)| (p.to_string(), *l)).collect();
                serde_json::json!({"id": m.id, "raft_address": m.raft_address, "client_address": m.client_address,
                    "role": m.role, "liveness": m.liveness, "partition_lag": lag})
            })
            .collect();
        return serde_json::json!({"version": l.version, "members": members}).to_string();
    }
    let mut out = format!(
        "roster version {}\n{:<20} {:<8} {:<8} {:<16} {:<24} CLIENT",
        l.version, "ID", "ROLE", "LIVENESS", "LAG (MAX/PARTS)", "RAFT"
    );
    for m in &l.members {
        // The largest lag over the partitions whose leaders answered, and how many those are.
        let lag = match m.partition_lag.values().max() {
            Some(max) => format!("{max}/{}", m.partition_lag.len()),
            None => "-".into(),
        };
        out.push_str(&format!(
            "\n{:<20} {:<8} {:<8} {:<16} {:<24} {}",
            m.id, m.role, m.liveness, lag, m.raft_address, m.client_address
        ));
    }
    out
}

/// What ctl knows of one endpoint during this command.
#[derive(Default)]
struct EndpointState {
    /// Unreachable (refused, timed out, unresolvable): tried again only when every other
    /// endpoint failed too.
    failed: bool,
    /// The last thing that went wrong there, for the final message.
    last_error: Option<String>,
}

struct Ctl {
    endpoints: Vec<String>,
    state: BTreeMap<String, EndpointState>,
    /// node id → endpoint, learned from status answers.
    ids: BTreeMap<u64, String>,
    deadline: Instant,
    timeout: Duration,
    security: ClientSecurity,
}

impl Ctl {
    fn new(endpoints: Vec<String>, timeout: Duration, security: ClientSecurity) -> Self {
        Ctl {
            security,
            endpoints,
            state: BTreeMap::new(),
            ids: BTreeMap::new(),
            deadline: Instant::now() + timeout,
            timeout,
        }
    }

    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// One request to one endpoint, within this attempt's share of the time left. An
    /// unreachable endpoint is remembered as failed.
    fn call(&mut self, endpoint: &str, op: Op) -> Result<R, ClientFailure> {
        let left = self.left();
        let attempt = (self.timeout / ATTEMPT_SHARE).min(left);
        let timeouts = ClientTimeouts { connect: CLIENT_CONNECT_TIMEOUT.min(attempt), request: attempt };
        let r = Client::connect_secure(endpoint, timeouts, &self.security).and_then(|mut c| c.call(op));
        let st = self.state.entry(endpoint.to_string()).or_default();
        match &r {
            Ok(_) => st.failed = false,
            // IO and protocol failures name the endpoint themselves.
            Err(ClientFailure::Io(e) | ClientFailure::Protocol(e)) => {
                st.failed = true;
                st.last_error = Some(e.clone());
            }
            Err(f @ ClientFailure::Server(_)) => st.last_error = Some(format!("{endpoint}: {f}")),
        }
        r
    }

    /// The endpoints to try in one round: every one not known to have failed, in the given
    /// order, or all of them when every one failed (one may have come back).
    fn round(&self) -> Vec<String> {
        let ok: Vec<String> = self
            .endpoints
            .iter()
            .filter(|e| !self.state.get(*e).is_some_and(|s| s.failed))
            .cloned()
            .collect();
        if ok.is_empty() { self.endpoints.clone() } else { ok }
    }

    /// The failure to report when time ran out: every endpoint and what it last said.
    fn exhausted(&self) -> String {
        let why: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| match self.state.get(e).and_then(|s| s.last_error.clone()) {
                Some(err) => err,
                None => format!("{e}: not tried"),
            })
            .collect();
        format!(
            "no endpoint served the request within {:.1} s: {}",
            self.timeout.as_secs_f64(),
            why.join("; ")
        )
    }

    /// The failure to report at once when no endpoint could be reached at all: retrying
    /// for the rest of the timeout would only repeat it.
    fn unreachable(&self) -> String {
        let why: Vec<String> = self
            .endpoints
            .iter()
            .filter_map(|e| self.state.get(e).and_then(|s| s.last_error.clone()))
            .collect();
        format!("no endpoint is reachable: {}", why.join("; "))
    }

    /// Whether every endpoint failed at the connection level in the last round.
    fn all_unreachable(&self) -> bool {
        self.endpoints.iter().all(|e| self.state.get(e).is_some_and(|s| s.failed))
    }

    /// Every reachable endpoint's roster, the newest winning (a node that left the cluster,
    /// or lags, holds an older one), with the lags each endpoint knows (of the partitions it
    /// leads) merged into it. `None` when no endpoint answered.
    fn newest_roster(&mut self) -> Option<MemberListResponse> {
        let mut newest: Option<MemberListResponse> = None;
        let mut lags: BTreeMap<u64, BTreeMap<u32, u64>> = BTreeMap::new();
        for e in self.round() {
            if let Ok(R::MemberList(l)) = self.call(&e, Op::MemberList(MemberListRequest {})) {
                for m in &l.members {
                    lags.entry(m.id).or_default().extend(m.partition_lag.iter().map(|(p, lag)| (*p, *lag)));
                }
                if newest.as_ref().is_none_or(|n| l.version > n.version) {
                    newest = Some(l);
                }
            }
        }
        let mut l = newest?;
        for m in &mut l.members {
            if let Some(all) = lags.remove(&m.id) {
                m.partition_lag = all.into_iter().collect();
            }
        }
        Some(l)
    }

    /// The newest roster once `done` holds of it, asking again until the time is up.
    fn wait_for_roster(&mut self, done: impl Fn(&MemberListResponse) -> bool) -> Option<MemberListResponse> {
        while !self.left().is_zero() {
            if let Some(l) = self.newest_roster().filter(|l| done(l)) {
                return Some(l);
            }
            std::thread::sleep(RETRY_PAUSE.min(self.left()));
        }
        None
    }

    /// A roster change against the answering node's version, asked again while another
    /// member is in transition or that node's roster was behind the leader's, until the time
    /// is up.
    fn change_member_waiting(
        &mut self,
        change: phalanx_proto::member_change_request::Change,
    ) -> Result<(), String> {
        loop {
            let op =
                Op::MemberChange(MemberChangeRequest { expected_version: 0, change: Some(change.clone()) });
            match self.write(op) {
                Ok(R::MemberChange(_)) => return Ok(()),
                Ok(other) => return Err(format!("unexpected answer: {other:?}")),
                Err(e)
                    if (e.starts_with("CONCURRENT_MEMBERSHIP_CHANGE")
                        || e.starts_with("STALE_MEMBERSHIP"))
                        && !self.left().is_zero() =>
                {
                    tracing::info!("{e}; asking again");
                    std::thread::sleep(RETRY_PAUSE.min(self.left()));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn learn_ids(&mut self) {
        for e in self.round() {
            if self.left().is_zero() {
                break;
            }
            if let Ok(R::Status(s)) = self.call(&e, Op::Status(StatusRequest {})) {
                self.ids.insert(s.node_id, e);
            }
        }
    }

    /// Sends a write to the partition's leader: follows NOT_LEADER hints, moves on at once
    /// from an unreachable endpoint or one that knows no leader, and pauses only after a
    /// whole round found none able to serve it.
    fn write(&mut self, op: Op) -> Result<R, String> {
        while !self.left().is_zero() {
            let mut queue: std::collections::VecDeque<String> = self.round().into();
            let mut hops = 0usize;
            while let Some(target) = queue.pop_front() {
                if self.left().is_zero() {
                    break;
                }
                match self.call(&target, op.clone()) {
                    Ok(r) => return Ok(r),
                    Err(ClientFailure::Server(e)) if e.code == ClientErrorCode::NotLeader as i32 => {
                        // A hint to follow (bounded, so two nodes that name each other during
                        // an election cannot loop us).
                        let hinted = if !e.leader_address.is_empty() {
                            Some(e.leader_address.clone())
                        } else if e.leader_id != 0 {
                            if !self.ids.contains_key(&e.leader_id) {
                                self.learn_ids();
                            }
                            self.ids.get(&e.leader_id).cloned()
                        } else {
                            None
                        };
                        if let Some(h) = hinted.filter(|h| *h != target && check_endpoint(h).is_ok())
                            && hops < 2 * self.endpoints.len()
                        {
                            hops += 1;
                            queue.retain(|q| *q != h);
                            queue.push_front(h);
                        }
                    }
                    Err(ClientFailure::Server(e))
                        if e.code == ClientErrorCode::Busy as i32
                            || e.code == ClientErrorCode::Timeout as i32 => {}
                    Err(f @ ClientFailure::Server(_)) => return Err(f.to_string()),
                    Err(_) => {} // unreachable: remembered, next endpoint at once
                }
            }
            if self.all_unreachable() {
                return Err(self.unreachable());
            }
            std::thread::sleep(RETRY_PAUSE.min(self.left()));
        }
        Err(self.exhausted())
    }

    /// Sends a read to the first endpoint that can serve it (any node can: the read barrier
    /// makes it linearizable).
    fn read(&mut self, op: Op) -> Result<R, String> {
        while !self.left().is_zero() {
            for e in self.round() {
                if self.left().is_zero() {
                    break;
                }
                match self.call(&e, op.clone()) {
                    Ok(r) => return Ok(r),
                    Err(ClientFailure::Server(err))
                        if err.code == ClientErrorCode::NotLeader as i32
                            || err.code == ClientErrorCode::Busy as i32
                            || err.code == ClientErrorCode::Timeout as i32 => {}
                    Err(f @ ClientFailure::Server(_)) => return Err(f.to_string()),
                    Err(_) => {}
                }
            }
            if self.all_unreachable() {
                return Err(self.unreachable());
            }
            std::thread::sleep(RETRY_PAUSE.min(self.left()));
        }
        Err(self.exhausted())
    }

    fn status(&mut self, json: bool) -> Result<String, String> {
        let mut answers: Vec<(String, Result<StatusResponse, String>)> = Vec::new();
        for e in self.endpoints.clone() {
            let r = match self.call(&e, Op::Status(StatusRequest {})) {
                Ok(R::Status(s)) => Ok(s),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(f) => Err(f.to_string()),
            };
            answers.push((e, r));
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
                    best.insert(p.id, (own, p.clone()));
                }
            }
        }
        if json {
            let nodes: Vec<serde_json::Value> = answers
                .iter()
                .map(|(e, r)| match r {
                    Ok(s) => {
                        let port = s.client_port.as_deref().copied().unwrap_or_default();
                        serde_json::json!({"id": s.node_id, "endpoint": e, "reachable": true,
                        "raft_address": s.nodes.iter().find(|n| n.id == s.node_id).map(|n| n.raft_address.clone()).unwrap_or_default(),
                        "client_port": {"connections_open": port.connections_open,
                            "connections_accepted": port.connections_accepted,
                            "connections_refused": port.connections_refused, "closed_idle": port.closed_idle,
                            "closed_frame_timeout": port.closed_frame_timeout,
                            "closed_bad_input": port.closed_bad_input, "requests": port.requests,
                            "inflight_request_bytes": port.inflight_request_bytes}})
                    }
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
