//! `phalanx node`: parse flags (named after the reference server's where they apply), start
//! the node, serve the client port, stop gracefully on SIGTERM/SIGINT.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use phalanx::client::security::ClientPortSecurity;
use phalanx::client::server::{ClientServer, Directory, ServerLimits};
use phalanx::kv::KvStateMachine;
use phalanx::{Node, NodeConfig, StateMachineFactory, derive_node_id};
use phalanx_net::{Discovery, DynamicDiscovery, TcpConfig, TcpFactory, parse_node_list};
use phalanx_storage::StorageKind;

use crate::ctl::secret_arg as secret;

/// Flags of `phalanx node`.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// This node's id (non-zero). Without it the id is derived from --raft-nodename, or from
    /// "raft-host:raft-port" (the same derivation --initial-cluster uses for entries without
    /// an id).
    #[arg(long)]
    raft_nodeid: Option<u64>,
    /// A stable node name to derive the id from when --raft-nodeid is not given.
    #[arg(long)]
    raft_nodename: Option<String>,
    /// Host other nodes use to reach this node's Raft port.
    #[arg(long, default_value = "127.0.0.1")]
    raft_host: String,
    /// Raft port (node-to-node traffic).
    #[arg(long)]
    raft_port: u16,
    /// The cluster's nodes, comma separated, as "id=host:port" or "host:port" (id derived
    /// from the address). This node is added if it is not listed.
    #[arg(long, default_value = "")]
    initial_cluster: String,
    /// Joins a running cluster instead, through the client ports of some of its members
    /// ("host:port,…"): asks the system partition's leader to add this node (following leader
    /// hints), then starts with the cluster's voters and partitions; every partition brings
    /// it up to date and the roster makes it a voter. Starts from an empty data directory;
    /// a node restarted with it asks again (an add of the same member changes nothing).
    #[arg(long, value_delimiter = ',', conflicts_with = "initial_cluster")]
    join: Vec<String>,
    /// How long --join may wait for the cluster to take the node in, in seconds.
    #[arg(long, default_value_t = 30)]
    join_timeout_secs: u64,
    /// On SIGTERM/SIGINT, leave the cluster before stopping: the node is removed from the
    /// roster, hands over its leaderships and is dropped from every partition (waiting at
    /// most --leave-timeout-secs), so the cluster is not left counting a voter that is gone.
    #[arg(long)]
    leave_on_shutdown: bool,
    /// How long --leave-on-shutdown may wait, in seconds.
    #[arg(long, default_value_t = 60)]
    leave_timeout_secs: u64,
    /// Client addresses of the cluster's nodes ("id=host:port", comma separated), used to
    /// point clients at the leader. Optional.
    #[arg(long, default_value = "")]
    initial_cluster_clients: String,
    /// Number of user partitions (1..=N; partition 0 is the system partition).
    #[arg(long, default_value_t = 8)]
    initial_cluster_partitions: u32,
    /// Log store: wal (native segment WAL, default), rocksdb, sqlite, memory.
    #[arg(long, default_value = "wal")]
    wal_adapter: String,
    /// Directory of the WAL shards (default: the data directory).
    #[arg(long)]
    wal_path: Option<PathBuf>,
    /// Data directory (identity, snapshots, and the WAL unless --wal-path).
    #[arg(long)]
    data_dir: PathBuf,
    /// Shards (cores) to run; default: every available core.
    #[arg(long)]
    cores: Option<usize>,
    /// Client port (framed protobuf: put/get/cas/delete/append/status).
    #[arg(long)]
    client_port: u16,
    /// Host the client port binds.
    #[arg(long, default_value = "127.0.0.1")]
    client_host: String,
    /// Cluster id; nodes of other clusters are refused at the handshake.
    #[arg(long, default_value = "phalanx")]
    cluster_id: String,
    /// Sync every WAL batch (default true). With false, acknowledged writes can be lost on a
    /// crash: benchmarks only.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    sync_writes: bool,
    /// Length of a Raft tick in milliseconds (heartbeat: 2 ticks, election: 10–20 ticks).
    #[arg(long, default_value_t = 50)]
    tick_ms: u64,
    /// Start even though the WAL's last batch is damaged and may hold acknowledged writes
    /// that no other node holds (this node is the only voter): drop it and accept the loss.
    /// Without it such a node refuses to start, naming the file and offset. Nodes with peers
    /// never need it: their partitions recover from the peers.
    #[arg(long)]
    truncate_damaged_wal_tail: bool,
    /// Pin each shard to a CPU of its own. Nodes on one host claim distinct CPUs (a lock
    /// file per CPU under the temporary directory); a shard that finds none free runs
    /// unpinned, with a warning. Restrict a node's CPUs with `taskset`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pin_cores: bool,
    /// Failure detector (SWIM): how often this node probes one member, in ms. Default 200,
    /// or twice the probe timeout if that is larger.
    #[arg(long)]
    swim_probe_interval_ms: Option<u64>,
    /// Failure detector: how long a direct probe may take before other members are asked to
    /// probe too, in ms; at least two ticks. Default 100, or two ticks if that is larger.
    #[arg(long)]
    swim_probe_timeout_ms: Option<u64>,
    /// Failure detector: how many members probe for this node when a direct probe fails.
    #[arg(long, default_value_t = 3)]
    swim_indirect_probes: usize,
    /// Failure detector: a suspected member is declared down after this many probe intervals
    /// (times ⌈log10 members⌉) without refuting.
    #[arg(long, default_value_t = 4)]
    swim_suspicion_mult: u32,
    /// Quiesce a partition idle for this many ms: its leader stops heartbeating and its
    /// followers stop their election timers while the failure detector holds the leader
    /// alive; a write, a read or a suspicion wakes it. 0 never quiesces.
    #[arg(long, default_value_t = phalanx::config::DEFAULT_QUIESCE_AFTER_MS)]
    quiesce_after_ms: u64,
    /// Remove from the roster a member the failure detector has held down for this many
    /// seconds (partition 0's leader does, one member at a time). 0 (the default): never; a
    /// down member is usually a restart or a repair in progress.
    #[arg(long, default_value_t = 0)]
    evict_dead_after_secs: u64,
    /// Shared secret every node of the cluster proves on the Raft port's handshake, both
    /// ways (HMAC-SHA256; 16 to 1,024 bytes). Visible to other local users in the process
    /// list: prefer --node-shared-secret-file.
    #[arg(long, conflicts_with = "node_shared_secret_file")]
    node_shared_secret: Option<String>,
    /// File holding the shared secret (its bytes; one trailing newline is dropped).
    #[arg(long)]
    node_shared_secret_file: Option<PathBuf>,
    /// The previous shared secret, still accepted while a new one rolls out: restart every
    /// node with the old secret as current and the new as previous, then every node with the
    /// new as current and the old as previous.
    #[arg(long, conflicts_with = "node_shared_secret_previous_file")]
    node_shared_secret_previous: Option<String>,
    /// File holding the previous shared secret.
    #[arg(long)]
    node_shared_secret_previous_file: Option<PathBuf>,
    /// Start even though a port is bound to a non-loopback address without authentication
    /// (the Raft port with neither a shared secret nor TLS; the client port without TLS and
    /// either client certificates or a token). Without it such a node refuses to start.
    #[arg(long)]
    allow_unauthenticated: bool,
    /// This node's certificate (PEM, leaf first), for TLS on both ports: mutual TLS between
    /// nodes (each presents its certificate and checks the other's against --tls-ca), TLS on
    /// the client port. Needs --tls-key and --tls-ca. The three files are reloaded when they
    /// change (checked at most once a second, on a new connection).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) other nodes' certificates, and client certificates, must chain to.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Also require other nodes' certificates to have one of these SHA-256 fingerprints
    /// (comma separated, as `openssl x509 -noout -fingerprint -sha256` prints them).
    #[arg(long)]
    tls_pin: Option<String>,
    /// Require client certificates from --tls-ca on the client port.
    #[arg(long)]
    client_cert_auth: bool,
    /// A token every client-port connection must present first (16 to 1,024 bytes).
    /// Visible to other local users in the process list: prefer --client-token-file.
    #[arg(long, conflicts_with = "client_token_file")]
    client_token: Option<String>,
    /// File holding the client token (one trailing newline dropped).
    #[arg(long)]
    client_token_file: Option<PathBuf>,
}

/// What secures the node's ports, from the flags.
struct Security {
    node_auth: Option<Arc<phalanx_net::auth::NodeAuth>>,
    tls: Option<Arc<phalanx_net::tls::TlsContext>>,
    client_port: ClientPortSecurity,
    /// How this node reaches other nodes' client ports (--join, --leave-on-shutdown).
    as_client: phalanx::client::ClientSecurity,
}

/// The TLS context from --tls-cert/--tls-key/--tls-ca/--tls-pin: all three files or none.
fn tls_context(a: &NodeArgs) -> Result<Option<Arc<phalanx_net::tls::TlsContext>>, String> {
    let files = match (&a.tls_cert, &a.tls_key, &a.tls_ca) {
        (None, None, None) => {
            if a.tls_pin.is_some() || a.client_cert_auth {
                return Err(
                    "--tls-pin and --client-cert-auth need TLS (--tls-cert, --tls-key, --tls-ca)".into()
                );
            }
            return Ok(None);
        }
        (Some(cert), Some(key), Some(ca)) => phalanx_net::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
            pins: match &a.tls_pin {
                Some(p) => phalanx_net::tls::parse_pins(p).map_err(|e| format!("--tls-pin: {e}"))?,
                None => Vec::new(),
            },
        },
        _ => {
            return Err(
                "TLS needs all of --tls-cert, --tls-key and --tls-ca (mutual TLS between nodes checks both sides)"
                    .into(),
            );
        }
    };
    let pins = files.pins.clone();
    let ctx = phalanx_net::tls::TlsContext::load(files).map_err(|e| format!("TLS: {e}"))?;
    if !pins.is_empty() {
        // Nodes usually share one pin list: one that leaves this node's own certificate out
        // makes every other node refuse it. Said at start, not found later in peers' logs.
        let own =
            phalanx_net::tls::load_certs("certificate", &ctx.files().cert).map_err(|e| e.to_string())?;
        if let Some(leaf) = own.first()
            && !pins.contains(&phalanx_net::tls::CertPin::of(leaf))
        {
            tracing::warn!(
                own = %phalanx_net::tls::CertPin::of(leaf),
                "--tls-pin does not list this node's own certificate: other nodes pinning the same list will refuse it"
            );
        }
    }
    Ok(Some(ctx))
}

/// Whether every address `host` resolves to is a loopback address.
fn is_loopback_only(host: &str) -> Result<bool, String> {
    let addrs: Vec<SocketAddr> = (host, 0).to_socket_addrs().map_err(|e| format!("{host}: {e}"))?.collect();
    Ok(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()))
}

/// The node's shared secrets, TLS and client-port token, and the fail-closed check: a port
/// bound beyond loopback without authentication is refused unless --allow-unauthenticated.
fn security(a: &NodeArgs) -> Result<Security, String> {
    let current = secret(&a.node_shared_secret, &a.node_shared_secret_file, "node-shared-secret")?;
    let previous = secret(
        &a.node_shared_secret_previous,
        &a.node_shared_secret_previous_file,
        "node-shared-secret-previous",
    )?;
    let auth = match (current, previous) {
        (None, Some(_)) => {
            return Err(
                "--node-shared-secret-previous needs --node-shared-secret (the one to sign with)".into()
            );
        }
        (None, None) => None,
        (Some(c), p) => Some(Arc::new(phalanx_net::auth::NodeAuth::new(c, p).map_err(|e| e.to_string())?)),
    };
    let tls = tls_context(a)?;
    let token = secret(&a.client_token, &a.client_token_file, "client-token")?;
    let client_token = token
        .as_deref()
        .map(phalanx::client::security::ClientToken::new)
        .transpose()
        .map_err(|e| format!("--client-token: {e}"))?;
    if !a.allow_unauthenticated {
        if auth.is_none()
            && tls.is_none()
            && !is_loopback_only(&a.raft_host).map_err(|e| format!("--raft-host {e}"))?
        {
            return Err(format!(
                "--raft-host {} is not a loopback address and neither --node-shared-secret nor TLS \
                 (--tls-cert/--tls-key/--tls-ca) is set: any host that reaches the port could join the \
                 cluster. Set one, or pass --allow-unauthenticated to run open",
                a.raft_host
            ));
        }
        let client_authenticated = tls.is_some() && (a.client_cert_auth || client_token.is_some());
        if !client_authenticated
            && !is_loopback_only(&a.client_host).map_err(|e| format!("--client-host {e}"))?
        {
            return Err(format!(
                "--client-host {} is not a loopback address and the client port does not authenticate \
                 clients: it needs TLS and either --client-cert-auth or --client-token (a token over \
                 plaintext is readable on the way). Bind it to loopback, or pass \
                 --allow-unauthenticated to run open",
                a.client_host
            ));
        }
    }
    let client_port = ClientPortSecurity {
        tls: tls.clone().map(|t| {
            let certs = if a.client_cert_auth {
                phalanx_net::tls::ClientCerts::Required
            } else {
                phalanx_net::tls::ClientCerts::NotAsked
            };
            (t, certs)
        }),
        token: client_token,
    };
    // This node reaches other client ports as a client of the same cluster: trusting its CA,
    // presenting its own certificate, with the cluster's token.
    let as_client = crate::ctl::client_security(
        a.tls_ca.as_deref(),
        a.tls_cert.as_deref().zip(a.tls_key.as_deref()),
        a.tls_pin.as_deref(),
        token,
    )?;
    Ok(Security { node_auth: auth, tls, client_port, as_client })
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))
}

/// Starts the node and blocks until SIGTERM or SIGINT.
pub fn run(a: NodeArgs) -> Result<(), String> {
    let raft_addr = format!("{}:{}", a.raft_host, a.raft_port);
    let security = security(&a)?;
    let node_id = match (a.raft_nodeid, &a.raft_nodename) {
        (Some(0), _) => return Err("--raft-nodeid must be non-zero".into()),
        (Some(id), _) => id,
        (None, Some(name)) => derive_node_id(name),
        (None, None) => derive_node_id(&raft_addr),
    };
    if a.initial_cluster_partitions == 0 && a.join.is_empty() {
        return Err(
            "--initial-cluster-partitions must be at least 1 (partition 0 is the system's own)".into()
        );
    }
    let wal = StorageKind::parse(&a.wal_adapter).ok_or_else(|| {
        let built: Vec<&str> = StorageKind::built().into_iter().map(StorageKind::name).collect();
        format!("--wal-adapter {:?}: unknown; this build has {}", a.wal_adapter, built.join(", "))
    })?;
    if !StorageKind::built().contains(&wal) {
        return Err(format!("--wal-adapter {}: not compiled into this build", a.wal_adapter));
    }
    let client_addr = format!("{}:{}", a.client_host, a.client_port);
    let joining = !a.join.is_empty();
    let mut partitions = a.initial_cluster_partitions;
    // Joining: the cluster's voters are the partitions' first members; every member's
    // address is the transport's to dial (this node's too, for its own listing).
    let (mut cluster, mut voters): (Vec<phalanx_net::NodeAddr>, Vec<(u64, String)>) = if joining {
        if a.join_timeout_secs == 0 || a.join_timeout_secs > 86_400 {
            return Err("--join-timeout-secs must be in 1..=86400".into());
        }
        let timeout = std::time::Duration::from_secs(a.join_timeout_secs);
        let endpoints: Vec<String> =
            a.join.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
        let roster = crate::ctl::join(
            endpoints,
            timeout,
            node_id,
            raft_addr.clone(),
            client_addr.clone(),
            &security.as_client,
        )
        .map_err(|e| format!("--join: {e}"))?;
        tracing::info!(node_id, version = roster.version, "the cluster added this node");
        if roster.partitions != a.initial_cluster_partitions {
            tracing::info!(partitions = roster.partitions, "taking the cluster's partition count");
        }
        partitions = roster.partitions;
        let all: Vec<phalanx_net::NodeAddr> =
            roster.members.iter().map(|m| phalanx_net::NodeAddr::new(m.id, m.raft_address.clone())).collect();
        let voters = roster
            .members
            .iter()
            .filter(|m| m.role == "voter")
            .map(|m| (m.id, m.raft_address.clone()))
            .collect();
        (all, voters)
    } else {
        let cluster = parse_node_list(&a.initial_cluster).map_err(|e| format!("--initial-cluster: {e}"))?;
        let voters = cluster.iter().map(|n| (n.id, n.addr.clone())).collect();
        (cluster, voters)
    };
    if !cluster.iter().any(|n| n.id == node_id) {
        cluster.push(phalanx_net::NodeAddr::new(node_id, raft_addr.clone()));
    }
    if !joining && !voters.iter().any(|(id, _)| *id == node_id) {
        voters.push((node_id, raft_addr.clone()));
    }
    let clients =
        parse_node_list(&a.initial_cluster_clients).map_err(|e| format!("--initial-cluster-clients: {e}"))?;
    if let Some(stranger) = clients.iter().find(|c| !cluster.iter().any(|n| n.id == c.id)) {
        return Err(format!(
            "--initial-cluster-clients: node {} ({}) is not in --initial-cluster",
            stranger.id, stranger.addr
        ));
    }

    let mut cfg = NodeConfig::new(node_id, &a.data_dir);
    cfg.cluster_id = a.cluster_id.clone();
    cfg.raft_host = a.raft_host.clone();
    cfg.raft_port = a.raft_port;
    cfg.initial_cluster = voters;
    cfg.joining = joining;
    cfg.initial_partitions = partitions;
    if let Some(c) = a.cores {
        cfg.cores = c;
    }
    cfg.pin_cores = a.pin_cores;
    cfg.truncate_damaged_wal_tail = a.truncate_damaged_wal_tail;
    cfg.wal = wal;
    cfg.wal_dir = a.wal_path.clone();
    cfg.sync_writes = a.sync_writes;
    cfg.tick_interval_ms = a.tick_ms;
    cfg.set_quiesce_after_ms(a.quiesce_after_ms);
    // Unset: derived from the tick (`SwimConfig::resolved`).
    cfg.swim.probe_timeout_ms = a.swim_probe_timeout_ms.unwrap_or(0);
    cfg.swim.probe_interval_ms = a.swim_probe_interval_ms.unwrap_or(0);
    cfg.swim.indirect_probes = a.swim_indirect_probes;
    cfg.swim.suspicion_mult = a.swim_suspicion_mult;
    cfg.swim.eviction_grace_ms = a.evict_dead_after_secs.saturating_mul(1000);
    cfg.client_address = Some(client_addr.clone());
    cfg.validate().map_err(|e| e.to_string())?;

    // The transport dials what the roster says: members added later are reached without a
    // restart (see `follow_roster`).
    let discovery = Arc::new(
        DynamicDiscovery::with_nodes(cluster.clone()).map_err(|e| format!("--initial-cluster: {e}"))?,
    );
    let mut tcp_cfg = TcpConfig::new(node_id, a.cluster_id.clone(), raft_addr.clone());
    tcp_cfg.node_auth = security.node_auth.clone();
    tcp_cfg.tls = security.tls.clone();
    let tcp = TcpFactory::bind(tcp_cfg, discovery.clone()).map_err(|e| format!("raft port: {e}"))?;
    let client_sock = resolve(&client_addr).map_err(|e| format!("--client-port: {e}"))?;
    // Both ports are bound before anything starts: a port in use stops the node here.
    let client_listener = ClientServer::bind(client_sock).map_err(|e| e.to_string())?;
    let sms: StateMachineFactory = Arc::new(|_p| Box::new(KvStateMachine::new()));
    let node = Node::start(cfg, tcp, sms).map_err(|e| e.to_string())?;
    let mut directory = Directory::default();
    for n in &cluster {
        directory.raft.insert(n.id, n.addr.clone());
    }
    for n in &clients {
        directory.client.insert(n.id, n.addr.clone());
    }
    directory.client.insert(node_id, client_addr.clone());
    let server = match ClientServer::serve_secure(
        node.handle(),
        client_listener,
        directory,
        ServerLimits::default(),
        security.client_port.clone(),
    ) {
        Ok(s) => s,
        Err(e) => {
            node.shutdown();
            return Err(e.to_string());
        }
    };
    tracing::info!(
        node_id,
        raft = %raft_addr,
        client = %server.local_addr(),
        partitions,
        wal = wal.name(),
        "node started"
    );

    if let Some(reason) = wait_for_stop(&node.handle(), &discovery)? {
        // A storage failure is fatal (an fsync is never retried): stop serving and exit
        // non-zero so a supervisor restarts the node, which recovers from its WAL.
        tracing::error!(node_id, "stopping: {reason}");
        server.shutdown();
        node.shutdown();
        return Err(format!("node {node_id} failed: {reason}"));
    }
    if a.leave_on_shutdown {
        leave(&node.handle(), &client_addr, a.leave_timeout_secs, &security.as_client);
    }
    tracing::info!(node_id, "stopping: handing over leadership");
    // Stepping down is answered by each shard at once; no timer is needed.
    if let Err(e) = futures_lite::future::block_on(node.handle().hand_over_leadership()) {
        tracing::warn!("leaving: {e}");
    }
    // Then the client port drains: requests in flight are answered (a proposal the new
    // leader overwrote as NOT_LEADER, one it committed as done, once applied here), clients
    // now pointed at the new leaders are told nothing they sent afterwards was executed.
    // Leadership first, so clients stop coming here while it drains.
    tracing::info!(node_id, "stopping: draining the client port");
    server.shutdown();
    node.shutdown();
    tracing::info!(node_id, "stopped");
    Ok(())
}

/// `--leave-on-shutdown`: leaves the cluster through the members' client ports (this node's
/// first) before the node stops; a failure is logged, and the node stops anyway.
fn leave(
    node: &phalanx::NodeHandle,
    own_client: &str,
    timeout_secs: u64,
    security: &phalanx::client::ClientSecurity,
) {
    let id = node.node_id();
    // The other members' client ports, as the roster and their announcements give them.
    let mut others: std::collections::BTreeSet<String> =
        node.roster().members.into_values().filter(|m| m.id != id).map(|m| m.client_address).collect();
    others.extend(
        node.cluster_directory().nodes.values().filter(|n| n.node_id != id).map(|n| n.client_address.clone()),
    );
    others.remove("");
    others.remove(own_client);
    let endpoints: Vec<String> = std::iter::once(own_client.to_string()).chain(others).collect();
    tracing::info!(node_id = id, "leaving the cluster");
    match crate::ctl::leave(endpoints, std::time::Duration::from_secs(timeout_secs.max(1)), id, security) {
        Ok(version) => tracing::info!(node_id = id, version, "left the cluster"),
        Err(e) => tracing::error!(node_id = id, "leaving: {e}"),
    }
}

/// Points the transport's discovery at the roster's members once the roster is past version
/// `followed` (the initial cluster until it is seeded); returns the version followed. Members
/// that left are forgotten: the transport stops dialling them.
fn follow_roster(node: &phalanx::NodeHandle, discovery: &DynamicDiscovery, followed: u64) -> u64 {
    let roster = node.roster();
    if roster.version <= followed {
        return followed;
    }
    let mut nodes: Vec<phalanx_net::NodeAddr> =
        roster.members.values().map(|m| phalanx_net::NodeAddr::new(m.id, m.raft_address.clone())).collect();
    if !roster.members.contains_key(&node.node_id())
        && let Some(me) = discovery.address(node.node_id())
    {
        nodes.push(phalanx_net::NodeAddr::new(node.node_id(), me));
    }
    match discovery.replace_all(nodes) {
        Ok(()) => {
            tracing::info!(version = roster.version, members = roster.members.len(), "following the roster")
        }
        // An address the transport cannot use (the roster checks only its length): keep the
        // addresses in use and say why.
        Err(e) => tracing::warn!(version = roster.version, "roster addresses not taken: {e}"),
    }
    roster.version
}

/// How often the main thread looks for a stop signal or a failed shard.
const STOP_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Waits for SIGTERM / SIGINT (`None`) or for a shard of the node to fail (its reason);
/// meanwhile keeps the transport's discovery on the roster.
fn wait_for_stop(node: &phalanx::NodeHandle, discovery: &DynamicDiscovery) -> Result<Option<String>, String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    let mut followed = 0;
    loop {
        followed = follow_roster(node, discovery, followed);
        if let Some(sig) = signals.pending().next() {
            tracing::info!(signal = sig, "signal received");
            return Ok(None);
        }
        if let Some(reason) = node.failure() {
            return Ok(Some(reason.to_string()));
        }
        std::thread::sleep(STOP_POLL);
    }
}
