//! Nothing left behind on an interrupt: the embedded cluster's temporary directory is
//! removed when the cluster is dropped, which covers every return and error path; SIGINT
//! and SIGTERM would end the process before that, so a signal thread removes the
//! registered directories and exits (status 130) instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Exit status after an interrupt (128 + SIGINT, as shells report it).
const INTERRUPTED_EXIT: i32 = 130;

/// Removes `dir` if the process is interrupted.
pub fn register(dir: &Path) {
    DIRS.lock().unwrap_or_else(PoisonError::into_inner).push(dir.to_path_buf());
}

/// Forgets `dir` (its owner removed it).
pub fn unregister(dir: &Path) {
    DIRS.lock().unwrap_or_else(PoisonError::into_inner).retain(|d| d != dir);
}

/// Starts the signal thread. Without it (an error installing the handler), an interrupt
/// leaves the directory, which is logged.
pub fn install() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("no signal handler ({e}): an interrupted run may leave its temporary directory");
            return;
        }
    };
    let spawned = std::thread::Builder::new().name("bench-signals".into()).spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let dirs = std::mem::take(&mut *DIRS.lock().unwrap_or_else(PoisonError::into_inner));
            for d in dirs {
                // Shards may still be writing: a second pass removes what they created
                // during the first.
                for _ in 0..3 {
                    if std::fs::remove_dir_all(&d).is_ok() || !d.exists() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
            // Not eprintln!: with stderr gone (a closed pipe) it panics, and this thread would
            // die before the exit, leaving the process running.
            let _ = writeln!(
                std::io::stderr(),
                "\nphalanx-bench: interrupted (signal {sig}); temporary data removed"
            );
            std::process::exit(INTERRUPTED_EXIT);
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("no signal thread ({e}): an interrupted run may leave its temporary directory");
    }
}
