//! The fuzz targets (`phalanx_tests::fuzz_targets`) over their committed corpora
//! (`tests/fuzz/corpus/<target>/`), under the normal test command: every input the fuzzer
//! kept, and every crash it once found and was fixed, runs again on every change, without
//! libFuzzer.
//!
//! The seeds — valid inputs built from real messages, so the fuzzer starts from valid
//! structure — are made here too: `write_seeds` (ignored) writes them into the corpora, and
//! the other tests check that they really are valid, so the fuzzer's starting points do not
//! rot when a format changes.

// Test code: every value unwrapped is one this file made, and a failed unwrap fails the test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use phalanx::client::{AUTH_KIND, MAX_CLIENT_FRAME_BYTES, REQUEST_KIND};
use phalanx::raft::{Membership, Snapshot, SnapshotMeta};
use phalanx::runtime::snapshots::SnapshotStore;
use phalanx_net::frame::{DEFAULT_MAX_FRAME_BYTES, FrameKind, encode_frame};
use phalanx_net::handshake::{MAX_HANDSHAKE_FRAME_BYTES, unavailable};
use phalanx_proto::{
    AppendEntriesRequest, AppendRequest, AppendValueRequest, CasRequest, ClientAuth, ClientRequest,
    ConfState, DeleteRequest, EntryKind, GetRequest, Gossip, HardState, Heartbeat, HelloAck, HlcTimestamp,
    InstallSnapshotChunk, KvPair, KvSnapshot, LogEntry, Message, MessageBatch, NodeLiveness, PutRequest,
    RaftMessage, Roster, RosterMember, StatusRequest, SystemSnapshot, SystemState, VoteRequest,
    client_request, raft_message::Body,
};
use phalanx_storage::wal::format::{
    BATCH_HEADER_BYTES, BatchHeader, RecordWriter, SEGMENT_HEADER_BYTES, SegmentHeader, WAL_FORMAT_VERSION,
    align_up, kind,
};
use phalanx_storage::wal::replay_segment_image;
use phalanx_tests::fuzz_targets::{
    self, CLIENT_TOKEN_BIT, FUZZ_CLIENT_TOKEN, FUZZ_CLUSTER, FUZZ_LOCAL_NODE, FUZZ_PEER_NODE,
    FUZZ_PREVIOUS_SECRET, fuzz_auth, fuzz_dialer_hello, fuzz_identity, make_checksums_valid, snapshot_file,
};

/// The clock the handshake seeds were signed at (the target verifies relative to it).
const SIGNED_AT_MS: u64 = 1_800_000_000_000;

type Target = fn(&[u8]);
/// Named inputs of one target.
type Seeds = Vec<(&'static str, Vec<u8>)>;

const TARGETS: [(&str, Target); 5] = [
    ("frame", fuzz_targets::frame),
    ("handshake", fuzz_targets::handshake),
    ("client_request", fuzz_targets::client_request),
    ("wal", fuzz_targets::wal),
    ("snapshot", fuzz_targets::snapshot),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

#[test]
fn every_corpus_input_runs_clean() {
    for (name, target) in TARGETS {
        let dir = corpus_dir(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "the {name} corpus ({}) is empty", dir.display());
        for f in &files {
            let data = std::fs::read(f).unwrap();
            // A panic names the input, so it can be run alone (`tests/fuzz/README.md`).
            eprintln!("{name}: {}", f.display());
            target(&data);
        }
        eprintln!("{name}: {} inputs", files.len());
    }
}

/// Prefixes the target's first byte (chunking pattern, clock offset or mode).
fn with(first: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    v.extend_from_slice(rest);
    v
}

fn entry(index: u64, term: u64, payload: &'static [u8]) -> LogEntry {
    LogEntry {
        index,
        term,
        kind: EntryKind::Normal as i32,
        log_type: Bytes::from_static(b"kv"),
        payload: Bytes::from_static(payload),
        ticket: Some(HlcTimestamp {
            physical_ms: SIGNED_AT_MS,
            logical: index as u32,
            node_id: FUZZ_PEER_NODE,
        }),
    }
}

fn msg(group: u64, body: Body) -> RaftMessage {
    RaftMessage { group, from: FUZZ_PEER_NODE, to: FUZZ_LOCAL_NODE, body: Some(body) }
}

fn frame_seeds() -> Seeds {
    let batch = MessageBatch {
        messages: vec![
            msg(1, Body::Heartbeat(Heartbeat { term: 3, commit: 7, read_ctx: 1, quiesce: false })),
            msg(
                2,
                Body::AppendRequest(AppendEntriesRequest {
                    term: 3,
                    prev_log_index: 4,
                    prev_log_term: 2,
                    entries: vec![entry(5, 3, b"a"), entry(6, 3, b"bc")],
                    leader_commit: 4,
                    commit_only: false,
                }),
            ),
            msg(
                3,
                Body::VoteRequest(VoteRequest {
                    term: 4,
                    last_log_index: 9,
                    last_log_term: 3,
                    ..Default::default()
                }),
            ),
            msg(
                4,
                Body::Snapshot(Box::new(InstallSnapshotChunk {
                    term: 3,
                    last_included_index: 10,
                    last_included_term: 2,
                    conf_state: Some(ConfState { voters: vec![1, 2, 3], learners: vec![4] }),
                    data: Bytes::from_static(b"image"),
                    done: true,
                    total_size: 5,
                    ..Default::default()
                })),
            ),
            msg(
                0,
                Body::Gossip(Gossip {
                    seq: 1,
                    incarnation: 2,
                    roster_version: 3,
                    updates: vec![NodeLiveness { node: 3, ..Default::default() }],
                    ..Default::default()
                }),
            ),
        ],
    };
    let mut stream = Vec::new();
    encode_frame(FrameKind::Batch, &batch, DEFAULT_MAX_FRAME_BYTES, &mut stream).unwrap();
    encode_frame(FrameKind::Batch, &MessageBatch::default(), DEFAULT_MAX_FRAME_BYTES, &mut stream).unwrap();
    let mut hello = Vec::new();
    encode_frame(FrameKind::Hello, &fuzz_dialer_hello(), DEFAULT_MAX_FRAME_BYTES, &mut hello).unwrap();
    let ack = HelloAck { node_id: FUZZ_LOCAL_NODE, shards: 4, shard: 1, ..Default::default() };
    encode_frame(FrameKind::HelloAck, &ack, DEFAULT_MAX_FRAME_BYTES, &mut hello).unwrap();
    encode_frame(FrameKind::HelloReject, &unavailable("busy"), DEFAULT_MAX_FRAME_BYTES, &mut hello).unwrap();
    vec![
        ("batches-whole", with(0, &stream)),
        ("batches-chunked", with(7, &stream)),
        ("handshake-kinds", with(1, &hello)),
    ]
}

fn handshake_seeds() -> Seeds {
    let hello_frame = |h: &phalanx_proto::Hello| {
        let mut v = Vec::new();
        encode_frame(FrameKind::Hello, h, MAX_HANDSHAKE_FRAME_BYTES, &mut v).unwrap();
        v
    };
    let base = phalanx_net::handshake::hello(
        &phalanx_net::handshake::LocalIdentity {
            cluster_id: FUZZ_CLUSTER.into(),
            node_id: FUZZ_PEER_NODE,
            shards: 2,
            auth: None,
        },
        1,
        FUZZ_LOCAL_NODE,
    );
    let mut signed = base.clone();
    fuzz_auth().sign_hello(&mut signed, SIGNED_AT_MS).unwrap();
    let mut by_previous = base.clone();
    phalanx_net::auth::NodeAuth::new(FUZZ_PREVIOUS_SECRET.to_vec(), None)
        .unwrap()
        .sign_hello(&mut by_previous, SIGNED_AT_MS)
        .unwrap();
    let mut ack = HelloAck { node_id: FUZZ_LOCAL_NODE, shards: 4, shard: 1, ..Default::default() };
    fuzz_auth().sign_ack(&mut ack, &fuzz_dialer_hello(), FUZZ_CLUSTER, SIGNED_AT_MS).unwrap();
    let mut ack_frame = Vec::new();
    encode_frame(FrameKind::HelloAck, &ack, MAX_HANDSHAKE_FRAME_BYTES, &mut ack_frame).unwrap();
    let mut reject = Vec::new();
    encode_frame(
        FrameKind::HelloReject,
        &unavailable("shard 3 not running"),
        MAX_HANDSHAKE_FRAME_BYTES,
        &mut reject,
    )
    .unwrap();
    vec![
        ("hello-signed", with(0, &hello_frame(&signed))),
        ("hello-signed-late", with(200, &hello_frame(&signed))),
        ("hello-signed-previous-secret", with(0, &hello_frame(&by_previous))),
        ("hello-unsigned", with(0, &hello_frame(&base))),
        ("ack-signed", with(0, &ack_frame)),
        ("reject", with(0, &reject)),
    ]
}

fn client_request_seeds() -> Seeds {
    use client_request::Op;
    let ops = [
        Op::Put(PutRequest { key: "k".into(), value: Bytes::from_static(b"v1") }),
        Op::Get(GetRequest { key: "k".into() }),
        Op::Cas(CasRequest {
            key: "k".into(),
            expected: Bytes::from_static(b"v1"),
            value: Bytes::from_static(b"v2"),
            ..Default::default()
        }),
        Op::AppendValue(AppendValueRequest { key: "k".into(), value: Bytes::from_static(b"+") }),
        Op::Delete(DeleteRequest { key: "k".into() }),
        Op::Append(AppendRequest {
            partition: 3,
            log_type: "log".into(),
            payload: Bytes::from_static(b"raw"),
            ..Default::default()
        }),
        Op::Status(StatusRequest {}),
    ];
    let mut stream = Vec::new();
    for (id, op) in ops.into_iter().enumerate() {
        let req = ClientRequest { id: id as u64 + 1, op: Some(op) };
        encode_frame(FrameKind::App(REQUEST_KIND), &req, MAX_CLIENT_FRAME_BYTES, &mut stream).unwrap();
    }
    let mut with_token = Vec::new();
    let auth = ClientAuth { token: Bytes::from_static(FUZZ_CLIENT_TOKEN) };
    encode_frame(FrameKind::App(AUTH_KIND), &auth, MAX_CLIENT_FRAME_BYTES, &mut with_token).unwrap();
    with_token.extend_from_slice(&stream);
    vec![
        ("kv-session", with(0, &stream)),
        ("kv-session-chunked", with(5, &stream)),
        ("kv-session-token", with(CLIENT_TOKEN_BIT | 3, &with_token)),
    ]
}

/// A segment image of `segment_bytes` (blocks of 512) holding one batch per element of
/// `batches`, each written by its closure, with valid checksums.
fn segment(seq: u64, segment_bytes: u64, batches: &[&dyn Fn(&mut RecordWriter<'_>)]) -> Vec<u8> {
    const BLOCK: u64 = 512;
    let mut img = vec![0u8; segment_bytes as usize];
    SegmentHeader { version: WAL_FORMAT_VERSION, seq, segment_bytes, block_bytes: BLOCK as u32 }
        .encode(&mut img);
    let mut pos = SEGMENT_HEADER_BYTES as usize;
    for (i, write) in batches.iter().enumerate() {
        let body_start = pos + BATCH_HEADER_BYTES;
        let mut w = RecordWriter::new(&mut img[body_start..]);
        write(&mut w);
        let (len, count) = (w.position(), w.count());
        let body_crc = crc32c::crc32c(&img[body_start..body_start + len]);
        BatchHeader {
            segment_seq: seq,
            batch_seq: i as u64 + 1,
            body_len: len as u32,
            record_count: count,
            body_crc,
        }
        .encode(&mut img[pos..]);
        pos = align_up((body_start + len) as u64, BLOCK) as usize;
    }
    img
}

fn put_entry(w: &mut RecordWriter<'_>, partition: u64, e: &LogEntry) {
    let proto = e.encode_to_vec();
    w.entry(kind::ENTRY, partition, e.index, e.term, proto.len(), |b| b.copy_from_slice(&proto));
}

fn wal_seeds() -> Seeds {
    let hs = HardState { term: 2, vote: 1, commit: 2, recovering: false };
    let first: &dyn Fn(&mut RecordWriter<'_>) = &|w| {
        put_entry(w, 1, &entry(1, 1, b"one"));
        put_entry(w, 1, &entry(2, 2, b"two"));
        w.hard_state(1, &hs);
        put_entry(w, 7, &entry(1, 1, b"seven"));
        w.meta_set(b"node", b"2");
    };
    let second: &dyn Fn(&mut RecordWriter<'_>) = &|w| {
        put_entry(w, 1, &entry(3, 2, b"three"));
        w.compact(1, phalanx_storage::LogPosition::new(1, 1));
        w.hard_state(7, &HardState { recovering: true, ..hs });
        w.snapshot(9, phalanx_storage::LogPosition::new(10, 3), false);
        w.meta_delete(b"node");
    };
    let third: &dyn Fn(&mut RecordWriter<'_>) = &|w| {
        w.remove(7);
        put_entry(w, 9, &entry(11, 3, b"after the snapshot"));
    };
    let log = segment(1, 8192, &[first, second, third]);
    // The last batch torn: its body's second half never reached the disk.
    let mut torn = log.clone();
    let third_at = 4096 + 2 * 512;
    torn[third_at + 60..third_at + 512].fill(0);
    vec![
        ("segment-three-batches", with(0, &log)),
        ("segment-three-batches-fixup", with(1, &log)),
        ("segment-torn-tail", with(0, &torn)),
        ("segment-empty", with(0, &segment(3, 4608, &[]))),
    ]
}

fn snapshot_seeds() -> Seeds {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let kv = KvSnapshot {
        pairs: vec![
            KvPair { key: "a".into(), value: Bytes::from_static(b"1") },
            KvPair { key: "b".into(), value: Bytes::from_static(b"22") },
        ],
    };
    let system = SystemSnapshot {
        system: Some(SystemState {
            nodes: vec![],
            roster: Some(Roster {
                version: 3,
                members: vec![RosterMember {
                    node_id: 1,
                    raft_address: "127.0.0.1:7001".into(),
                    client_address: "127.0.0.1:8001".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }),
        application: kv.encode_to_vec().into(),
    };
    let save = |p: u64, data: Vec<u8>| {
        let s = Snapshot {
            meta: SnapshotMeta {
                index: 9,
                term: 2,
                membership: Membership::with_voters([1, 2, 3]),
                pending_two_step: vec![entry(8, 2, b"two-step")],
            },
            data: data.into(),
        };
        store.save(p, &s).unwrap();
        std::fs::read(dir.path().join(format!("p{p}.snap"))).unwrap()
    };
    let kv_file = save(1, kv.encode_to_vec());
    let system_file = save(0, system.encode_to_vec());
    // Mode 1: the body alone, wrapped by the target.
    let body = kv_file[16..kv_file.len() - 4].to_vec();
    vec![("kv", with(0, &kv_file)), ("system", with(0, &system_file)), ("kv-body", with(1, &body))]
}

fn seeds() -> Vec<(&'static str, Seeds)> {
    vec![
        ("frame", frame_seeds()),
        ("handshake", handshake_seeds()),
        ("client_request", client_request_seeds()),
        ("wal", wal_seeds()),
        ("snapshot", snapshot_seeds()),
    ]
}

#[test]
fn seeds_run_clean() {
    for ((name, target), (seed_name, seeds)) in TARGETS.into_iter().zip(seeds()) {
        assert_eq!(name, seed_name);
        for (_, s) in seeds {
            target(&s);
        }
    }
}

/// The seeds reach the paths behind the checks: a fuzzer starting from rejected inputs
/// would spend its time rediscovering the format.
#[test]
fn seeds_are_valid() {
    // Handshake: the signed Hello passes the acceptor's checks and verifies at its clock.
    let local = fuzz_identity();
    for (name, s) in handshake_seeds() {
        if !name.starts_with("hello-signed") || name.ends_with("late") {
            continue;
        }
        let mut d = phalanx_net::FrameDecoder::new(MAX_HANDSHAKE_FRAME_BYTES);
        d.push(&s[1..]);
        let h: phalanx_proto::Hello = d.next_frame().unwrap().unwrap().decode().unwrap();
        phalanx_net::handshake::check_hello(&h, &local).unwrap();
        fuzz_auth().verify_hello(&h, SIGNED_AT_MS).unwrap();
    }
    // WAL: the whole log replays, and each of its partitions is what was written.
    let seeds = wal_seeds();
    let img = replay_segment_image(Path::new("seed.seg"), &seeds[0].1[1..]).unwrap();
    assert_eq!(img.batches, 3);
    let parts: Vec<u64> = img.partitions.iter().map(|(p, _)| *p).collect();
    assert_eq!(parts, [1, 9]);
    assert_eq!(img.partitions[0].1.floor, (1, 1));
    assert_eq!(img.partitions[0].1.entries.iter().map(|e| e.index).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(img.partitions[1].1.entries[0].payload, Bytes::from_static(b"after the snapshot"));
    // The fix-up leaves a valid image as it is.
    let mut fixed = seeds[0].1[1..].to_vec();
    make_checksums_valid(&mut fixed);
    assert_eq!(fixed, seeds[0].1[1..]);
    // The torn tail is dropped, not an error; the empty segment has no batch.
    assert_eq!(replay_segment_image(Path::new("seed.seg"), &seeds[2].1[1..]).unwrap().batches, 2);
    assert_eq!(replay_segment_image(Path::new("seed.seg"), &seeds[3].1[1..]).unwrap().batches, 0);
    // Snapshots: the store's files decode, and the target's wrapper is the store's layout.
    for (name, s) in snapshot_seeds() {
        let file = if s[0] % 2 == 1 { snapshot_file(&s[1..]) } else { s[1..].to_vec() };
        let snap = phalanx::runtime::snapshots::decode(Path::new(name), &file).unwrap();
        assert_eq!(snap.meta.index, 9);
        assert!(InstallSnapshotChunk::decode(&file[16..file.len() - 4]).is_ok());
    }
    let kv = &snapshot_seeds()[0].1;
    assert_eq!(snapshot_file(&kv[17..kv.len() - 4]), kv[1..]);
    // Client requests: every frame is a request the server decodes (after the token the
    // port requires, when it requires one).
    let token = phalanx::client::security::ClientToken::new(FUZZ_CLIENT_TOKEN).unwrap();
    let security = phalanx::client::security::ClientPortSecurity { tls: None, token: Some(token) };
    for (_, s) in client_request_seeds() {
        let mut d = phalanx_net::FrameDecoder::new(MAX_CLIENT_FRAME_BYTES);
        d.push(&s[1..]);
        let mut n = 0;
        while let Some(f) = d.next_frame().unwrap() {
            if f.kind == FrameKind::App(AUTH_KIND) {
                assert!(s[0] & CLIENT_TOKEN_BIT != 0);
                phalanx::client::server::check_token(&security, &f).unwrap();
                continue;
            }
            phalanx::client::server::decode_request(&f).unwrap();
            n += 1;
        }
        assert_eq!(n, 7);
    }
    // Frames: every batch decodes and passes the reader's check.
    let mut d = phalanx_net::FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    d.push(&frame_seeds()[0].1[1..]);
    while let Some(f) = d.next_frame().unwrap() {
        let b: MessageBatch = f.decode().unwrap();
        phalanx_net::transport::check_batch(&b, FUZZ_PEER_NODE, FUZZ_LOCAL_NODE).unwrap();
    }
}

/// Writes the seeds into the corpora: `cargo test -p phalanx-tests --test fuzz_corpus --
/// --ignored write_seeds` (then minimise, see `tests/fuzz/README.md`).
#[test]
#[ignore = "writes into the repository: run by hand when the seeds change"]
fn write_seeds() {
    for (target, seeds) in seeds() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, s) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), s).unwrap();
        }
    }
}
