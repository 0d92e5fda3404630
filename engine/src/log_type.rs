//! Log types as static buffers.
//!
//! Every entry carries its application's log type, and an entry is cloned for each follower,
//! for applying and for the state machine. A reference-counted buffer made each clone and
//! drop an atomic operation on a cache line that the leader's thread and, over the in-memory
//! transport, the followers' threads all wrote (measured on 256 clients over one partition:
//! `shared_clone`/`shared_drop` were 5% of the leader's thread and 13% of a follower's).
//! Applications use a handful of log types, so each distinct one is copied once into a
//! leaked `&'static` buffer, whose clones cost nothing. The table is bounded
//! ([`MAX_INTERNED`] types of at most [`MAX_INTERNED_BYTES`] bytes, 64 KiB in all): past
//! either bound a log type gets an ordinary buffer of its own, so a client inventing log
//! types cannot grow the process's memory.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;

/// Distinct log types kept for the life of the process.
pub const MAX_INTERNED: usize = 1024;
/// Longest log type kept (longer ones are copied per proposal).
pub const MAX_INTERNED_BYTES: usize = 64;

/// Every interned log type, shared by all threads.
static TABLE: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);

thread_local! {
    /// This thread's view of the table, so the common case takes no lock.
    static LOCAL: RefCell<HashSet<&'static str>> = RefCell::new(HashSet::new());
}

/// `log_type` as a buffer: a static one shared process-wide when the table holds it or has
/// room, a copy otherwise.
#[must_use]
pub fn intern(log_type: &str) -> Bytes {
    if let Some(s) = LOCAL.with(|l| l.borrow().get(log_type).copied()) {
        return Bytes::from_static(s.as_bytes());
    }
    if log_type.len() > MAX_INTERNED_BYTES {
        return Bytes::copy_from_slice(log_type.as_bytes());
    }
    let mut table = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    let table = table.get_or_insert_with(HashSet::new);
    let s: &'static str = match table.get(log_type) {
        Some(s) => s,
        None if table.len() < MAX_INTERNED => {
            let s: &'static str = Box::leak(log_type.to_owned().into_boxed_str());
            table.insert(s);
            s
        }
        None => return Bytes::copy_from_slice(log_type.as_bytes()),
    };
    LOCAL.with(|l| l.borrow_mut().insert(s));
    Bytes::from_static(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, in order: filling the process-wide table would make a test running beside
    /// it see copies.
    #[test]
    fn types_share_one_static_buffer_within_bounds() {
        let a = intern("orders");
        let b = std::thread::spawn(|| intern("orders")).join().expect("thread");
        assert_eq!(a, b);
        assert_eq!(a.as_ptr(), b.as_ptr(), "one buffer for every thread");
        let shared = a.as_ptr();
        assert_eq!(intern("").len(), 0);

        let long = "x".repeat(MAX_INTERNED_BYTES + 1);
        let (a, b) = (intern(&long), intern(&long));
        assert_eq!(a, b);
        assert_ne!(a.as_ptr(), b.as_ptr(), "a long type is not kept");

        for i in 0..MAX_INTERNED {
            let _ = intern(&format!("fill-{i}"));
        }
        let (c, d) = (intern("one-too-many"), intern("one-too-many"));
        assert_eq!(c, d);
        assert_ne!(c.as_ptr(), d.as_ptr(), "the table stays bounded");
        let kept = TABLE.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map_or(0, HashSet::len);
        assert_eq!(kept, MAX_INTERNED);
        assert_eq!(intern("orders").as_ptr(), shared, "kept types stay shared");
    }
}
