//! The background tasks of one shard's transport, so shutdown can stop every one of them.
//!
//! Tasks are detached glommio tasks whose join handles are kept here. A task removes its own
//! handle when it finishes; shutdown cancels the rest and awaits them, which drops their
//! futures and with them every socket they own.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::{Rc, Weak};

use glommio::task::JoinHandle;

/// Identifies a task of a [`TaskSet`].
pub(crate) type TaskId = u64;

#[derive(Default)]
pub(crate) struct TaskSet {
    next_id: Cell<TaskId>,
    tasks: RefCell<HashMap<TaskId, JoinHandle<()>>>,
    closed: Cell<bool>,
}

impl TaskSet {
    pub(crate) fn new() -> Rc<Self> {
        Rc::new(TaskSet::default())
    }

    /// Spawns `fut` on the current executor; `None` once the set is closed.
    pub(crate) fn spawn(self: &Rc<Self>, fut: impl Future<Output = ()> + 'static) -> Option<TaskId> {
        if self.closed.get() {
            return None;
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let set: Weak<TaskSet> = Rc::downgrade(self);
        let handle = glommio::spawn_local(async move {
            fut.await;
            if let Some(set) = set.upgrade() {
                set.tasks.borrow_mut().remove(&id);
            }
        })
        .detach();
        // The task cannot have run yet (spawning only schedules it), so it will find its entry.
        self.tasks.borrow_mut().insert(id, handle);
        Some(id)
    }

    /// Cancels one task (its future is dropped at the executor's next turn).
    pub(crate) fn cancel(&self, id: TaskId) {
        let handle = self.tasks.borrow_mut().remove(&id);
        if let Some(h) = handle {
            h.cancel();
        }
    }

    /// Whether the set refuses new tasks.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Refuses new tasks and cancels every running one without waiting.
    pub(crate) fn close_now(&self) {
        self.closed.set(true);
        let all: Vec<_> = self.tasks.borrow_mut().drain().map(|(_, h)| h).collect();
        for h in &all {
            h.cancel();
        }
    }

    /// Refuses new tasks, cancels every running one and waits until all are gone.
    pub(crate) async fn shutdown(&self) {
        self.closed.set(true);
        let all: Vec<_> = self.tasks.borrow_mut().drain().map(|(_, h)| h).collect();
        for h in &all {
            h.cancel();
        }
        for h in all {
            let _ = h.await;
        }
    }
}
