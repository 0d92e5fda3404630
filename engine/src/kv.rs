//! The built-in replicated key-value state machine of the `phalanx` node: put, get
//! (linearizable through the read barrier), compare-and-set and delete, one map per
//! partition. Commands are log entries of type [`KV_LOG_TYPE`] whose payload is a
//! `KvCommand`; other entry types are kept only as a count (they are the application's).

use std::collections::BTreeMap;

use bytes::Bytes;
use phalanx_proto::{
    AppendValueResponse, CasResponse, DeleteResponse, EntryKind, GetRequest, GetResponse, KvCommand, KvPair,
    KvSnapshot, LogEntry, Message, kv_command,
};

use crate::raft::Status;
use crate::state_machine::{PartitionId, StateMachine};

/// The log type of key-value commands.
pub const KV_LOG_TYPE: &str = "kv";
/// Longest key accepted (bytes).
pub const MAX_KEY_BYTES: usize = 4096;
/// Largest value a key may hold, in bytes: the largest entry payload. A value one put could
/// not carry cannot be built by appends either, so every value fits a get's answer in one
/// client frame (`client::MAX_CLIENT_FRAME_BYTES`) and a key's memory is bounded.
pub const MAX_VALUE_BYTES: usize = crate::config::MAX_ENTRY_PAYLOAD_BYTES;

/// One partition's key-value map.
#[derive(Debug, Default)]
pub struct KvStateMachine {
    map: BTreeMap<String, Bytes>,
    /// Entries of other log types applied (raw appends).
    other_entries: u64,
}

impl KvStateMachine {
    /// An empty map.
    #[must_use]
    pub fn new() -> Self {
        KvStateMachine::default()
    }

    /// The value of `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.map.get(key)
    }

    /// Number of keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the map is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries of other log types applied.
    #[must_use]
    pub fn other_entries(&self) -> u64 {
        self.other_entries
    }

    fn execute(&mut self, cmd: KvCommand) -> Bytes {
        match cmd.op {
            Some(kv_command::Op::Put(p)) => {
                self.map.insert(p.key, p.value);
                Bytes::new()
            }
            Some(kv_command::Op::AppendValue(a)) => {
                let current = self.map.get(&a.key).map_or(0, Bytes::len);
                // Every replica refuses the same append: the decision reads only the map.
                if current + a.value.len() > MAX_VALUE_BYTES {
                    let refused =
                        AppendValueResponse { length: current as u64, too_large: true, ..Default::default() };
                    return refused.encode_to_vec().into();
                }
                let v = self.map.entry(a.key).or_default();
                let mut joined = Vec::with_capacity(v.len() + a.value.len());
                joined.extend_from_slice(v);
                joined.extend_from_slice(&a.value);
                let length = joined.len() as u64;
                *v = Bytes::from(joined);
                AppendValueResponse { length, ..Default::default() }.encode_to_vec().into()
            }
            Some(kv_command::Op::Delete(d)) => {
                let existed = self.map.remove(&d.key).is_some();
                DeleteResponse { existed, ..Default::default() }.encode_to_vec().into()
            }
            Some(kv_command::Op::Cas(c)) => {
                let current = self.map.get(&c.key).cloned();
                let matches = match &current {
                    None => c.expect_absent,
                    Some(v) => !c.expect_absent && *v == c.expected,
                };
                if matches {
                    self.map.insert(c.key, c.value);
                }
                let found = current.is_some();
                CasResponse {
                    succeeded: matches,
                    current: current.unwrap_or_default(),
                    found,
                    ..Default::default()
                }
                .encode_to_vec()
                .into()
            }
            None => Bytes::new(),
        }
    }
}

impl StateMachine for KvStateMachine {
    fn apply(&mut self, _partition: PartitionId, entry: &LogEntry) -> Bytes {
        if entry.kind == EntryKind::Checkpoint as i32 {
            return Bytes::new();
        }
        if entry.log_type != KV_LOG_TYPE {
            self.other_entries += 1;
            return Bytes::new();
        }
        // Every replica decodes the same bytes the same way: a malformed command is a no-op
        // everywhere, never a crash (it came from a client through the leader).
        match KvCommand::decode(entry.payload.as_ref()) {
            Ok(cmd) => self.execute(cmd),
            Err(_) => Bytes::new(),
        }
    }

    fn snapshot(&mut self, _partition: PartitionId) -> Bytes {
        let pairs = self.map.iter().map(|(k, v)| KvPair { key: k.clone(), value: v.clone() }).collect();
        KvSnapshot { pairs }.encode_to_vec().into()
    }

    fn restore(&mut self, partition: PartitionId, image: &[u8]) {
        match KvSnapshot::decode(image) {
            Ok(s) => self.map = s.pairs.into_iter().map(|p| (p.key, p.value)).collect(),
            Err(e) => tracing::error!(partition, "undecodable key-value snapshot: {e}"),
        }
    }

    fn query(&self, _partition: PartitionId, query: &[u8]) -> Result<Bytes, Status> {
        let q = GetRequest::decode(query).map_err(|_| Status::InvalidRequest)?;
        let found = self.map.get(&q.key);
        let resp =
            GetResponse { partition: 0, value: found.cloned().unwrap_or_default(), found: found.is_some() };
        Ok(resp.encode_to_vec().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phalanx_proto::{CasRequest, DeleteRequest, PutRequest};

    fn entry(op: kv_command::Op) -> LogEntry {
        LogEntry {
            kind: EntryKind::Normal as i32,
            log_type: KV_LOG_TYPE.into(),
            payload: KvCommand { op: Some(op) }.encode_to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn put_cas_delete_and_snapshot() {
        let mut sm = KvStateMachine::new();
        sm.apply(1, &entry(kv_command::Op::Put(PutRequest { key: "a".into(), value: "1".into() })));
        let r = sm.apply(
            1,
            &entry(kv_command::Op::Cas(CasRequest {
                key: "a".into(),
                expected: "0".into(),
                expect_absent: false,
                value: "2".into(),
            })),
        );
        let r = CasResponse::decode(r).unwrap();
        assert!(!r.succeeded && r.found && r.current == "1");
        let r = sm.apply(
            1,
            &entry(kv_command::Op::Cas(CasRequest {
                key: "a".into(),
                expected: "1".into(),
                expect_absent: false,
                value: "2".into(),
            })),
        );
        assert!(CasResponse::decode(r).unwrap().succeeded);
        let r = sm.apply(
            1,
            &entry(kv_command::Op::Cas(CasRequest {
                key: "b".into(),
                expected: Bytes::new(),
                expect_absent: true,
                value: "x".into(),
            })),
        );
        assert!(CasResponse::decode(r).unwrap().succeeded);
        let image = sm.snapshot(1);
        let r = sm.apply(1, &entry(kv_command::Op::Delete(DeleteRequest { key: "a".into() })));
        assert!(DeleteResponse::decode(r).unwrap().existed);
        assert!(sm.get("a").is_none());
        let mut other = KvStateMachine::new();
        other.restore(1, &image);
        assert_eq!(other.get("a").map(|v| v.as_ref()), Some(&b"2"[..]));
        assert_eq!(other.len(), 2);
        let q = GetRequest { key: "b".into() }.encode_to_vec();
        assert!(other.query(1, &q).is_ok());
        let q = GetRequest { key: "zz".into() }.encode_to_vec();
        assert!(!GetResponse::decode(other.query(1, &q).unwrap()).unwrap().found);
        assert_eq!(other.query(1, b"\xff\xff"), Err(Status::InvalidRequest));
    }

    #[test]
    fn garbage_commands_are_no_ops() {
        let mut sm = KvStateMachine::new();
        let e = LogEntry {
            log_type: KV_LOG_TYPE.into(),
            payload: Bytes::from_static(b"\xff\x01"),
            ..Default::default()
        };
        assert!(sm.apply(1, &e).is_empty());
        assert!(sm.is_empty());
    }
}
