//! Fault injection for tests: make the next write or sync fail as if the OS had reported an
//! error, so tests can prove that a failure poisons the store and that recovery is
//! all-or-nothing. An injector that is never armed costs one atomic load per write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A shared switchboard of faults to inject into a store. Clone it into the store's options
/// and keep a clone to arm faults from the test.
#[derive(Clone, Debug, Default)]
pub struct FaultInjector {
    inner: Arc<Faults>,
}

#[derive(Debug)]
struct Faults {
    fail_next_write: AtomicBool,
    fail_next_sync: AtomicBool,
    tear_next_write: AtomicBool,
    /// A partition whose writes are refused ([`NO_PARTITION`]: none).
    refuse_partition: AtomicU64,
}

/// `refuse_partition` when no partition's writes are refused.
const NO_PARTITION: u64 = u64::MAX;

impl Default for Faults {
    fn default() -> Self {
        Faults {
            fail_next_write: AtomicBool::new(false),
            fail_next_sync: AtomicBool::new(false),
            tear_next_write: AtomicBool::new(false),
            refuse_partition: AtomicU64::new(NO_PARTITION),
        }
    }
}

/// What the store must do at a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteFault {
    /// Fail before writing anything.
    Fail,
    /// Write only a prefix of the batch, then fail (a torn write, as a crash would leave).
    Tear,
}

impl FaultInjector {
    /// A new injector with nothing armed.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The next batch write fails with an I/O error before anything reaches the file.
    pub fn fail_next_write(&self) {
        self.inner.fail_next_write.store(true, Ordering::SeqCst);
    }

    /// The next sync fails with an I/O error after the data was handed to the OS (so it may or
    /// may not be durable — exactly the ambiguity of a real `fdatasync` failure).
    pub fn fail_next_sync(&self) {
        self.inner.fail_next_sync.store(true, Ordering::SeqCst);
    }

    /// The next batch write stores only part of the batch and then fails (native WAL only;
    /// other adapters treat it like [`FaultInjector::fail_next_write`]).
    pub fn tear_next_write(&self) {
        self.inner.tear_next_write.store(true, Ordering::SeqCst);
    }

    /// Every batch holding a write of `partition` is refused, as if it broke a limit, until
    /// called again with `None` (native WAL and in-memory store). A refusal writes nothing and
    /// leaves the store usable: what the contract promises for a batch over a limit.
    pub fn refuse_writes_of(&self, partition: Option<u64>) {
        self.inner.refuse_partition.store(partition.unwrap_or(NO_PARTITION), Ordering::SeqCst);
    }

    /// The refusal to report for `batch`, if it holds the partition whose writes are refused.
    pub(crate) fn refusal(&self, batch: &crate::types::WriteBatch) -> Option<crate::StorageError> {
        let p = self.inner.refuse_partition.load(Ordering::SeqCst);
        (p != NO_PARTITION && batch.partitions.iter().any(|w| w.partition == p)).then_some(
            crate::StorageError::LimitExceeded { what: "injected refusal of partition", value: p, max: p },
        )
    }

    pub(crate) fn take_write_fault(&self) -> Option<WriteFault> {
        if self.inner.tear_next_write.swap(false, Ordering::SeqCst) {
            Some(WriteFault::Tear)
        } else if self.inner.fail_next_write.swap(false, Ordering::SeqCst) {
            Some(WriteFault::Fail)
        } else {
            None
        }
    }

    pub(crate) fn take_sync_fault(&self) -> bool {
        self.inner.fail_next_sync.swap(false, Ordering::SeqCst)
    }
}

/// The error an injected fault reports.
pub(crate) fn injected(what: &str) -> std::io::Error {
    std::io::Error::other(format!("injected {what} failure"))
}
