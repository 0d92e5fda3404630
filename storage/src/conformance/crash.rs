//! Crash test: a child process (this test binary, re-invoked with [`CHILD_ENV`] set) runs a
//! deterministic workload and prints `ACK k` after operation `k` returns; the parent kills it
//! with SIGKILL at random moments, reopens the store, and checks that it holds exactly the
//! state after the last acknowledged operation — or after the one in flight, which may have
//! become durable before its acknowledgement was printed. Everything acknowledged is present
//! and intact; nothing is duplicated, reordered or half-applied.
//!
//! `PHALANX_CRASH_KILLS` sets the number of kills (default 200 per adapter); the `#[ignore]`d
//! soak runs 2000: `cargo test -p phalanx-storage --release -- --ignored soak`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::fixtures::{Phase, run, run_phased, set_phase};
use super::model::{Model, verify};
use super::workload::{OP_KEY, Op, Workload, decode_op};
use crate::any::{AnyStore, StorageKind};
use crate::store::{LogStore, StoreOptions};
use crate::wal::{WalOptions, WalStore};

/// Set in the child: `adapter|dir|seed|ops done`. The parent passes the number of operations
/// the store holds (it checked the store against its model), so the child rebuilds its model
/// from the store instead of replaying the whole history.
const CHILD_ENV: &str = "PHALANX_STORAGE_CRASH_CHILD";
/// Operations a child runs at most (it is normally killed long before).
const CHILD_OPS_MAX: u64 = 1_000_000;
/// How long the parent waits for a child to open its store.
const CHILD_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound of a whole crash loop.
const LOOP_TIMEOUT: Duration = Duration::from_secs(1200);

fn workload(seed: u64) -> Workload {
    Workload { seed, partitions: 8, compact_above: 150, payload_max: 5000 }
}

async fn open_store(adapter: &str, dir: &Path) -> crate::Result<AnyStore> {
    if adapter == "wal" {
        // Small segments so that rolling, recycling and relocation happen all the time.
        let opts = WalOptions {
            segment_bytes: 128 << 10,
            segments_soft_max: 4,
            gc_bytes_per_batch: 16 << 10,
            ..WalOptions::default()
        };
        return Ok(AnyStore::Wal(WalStore::open(dir, opts).await?));
    }
    let kind = StorageKind::parse(adapter).unwrap_or(StorageKind::Wal);
    AnyStore::open(kind, dir, StoreOptions::default()).await
}

/// The child: runs the workload from where the store left off until killed.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let parts: Vec<&str> = spec.split('|').collect();
    let [adapter, dir, seed, done] = parts[..] else { panic!("bad {CHILD_ENV}: {spec}") };
    let (adapter, dir) = (adapter.to_string(), PathBuf::from(dir));
    let (seed, done) = (seed.parse::<u64>().expect("seed"), done.parse::<u64>().expect("ops"));
    run(move || async move {
        let mut s = open_store(&adapter, &dir).await.expect("child: open");
        let w = workload(seed);
        let r = decode_op(s.get_meta(OP_KEY).expect("meta").as_deref());
        // The op counter lags `done` only when the last operation was a removal.
        assert!(r <= done, "store at operation {r}, parent says {done}");
        let mut m = Model::load_partitions(&s).await.expect("child: load");
        let mut out = std::io::stdout().lock();
        // On its own line: libtest has printed "test … " without a newline.
        let _ = writeln!(out, "\nSTART {done}");
        let _ = out.flush();
        let mut reported = 0;
        for k in done + 1..done + CHILD_OPS_MAX {
            match w.advance(k, &mut m) {
                Op::Batch(b) => s.write(&b).await.expect("child: write"),
                Op::Remove(p) => s.remove_partition(p).await.expect("child: remove"),
            }
            let _ = writeln!(out, "ACK {k}");
            let relocated = s.stats().entries_relocated;
            if relocated > reported {
                reported = relocated;
                let _ = writeln!(out, "RELOCATED {relocated}");
            }
            let _ = out.flush();
        }
    });
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Kills a child `kills` times and checks the store after each kill.
fn crash_loop(adapter: &str, kills: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = 0x5EED_0000 + kills as u64;
    let w = workload(seed);
    let test_name = format!("{}::crash_child", module_path!().trim_start_matches("phalanx_storage::"));
    let exe = std::env::current_exe().expect("current exe");
    let mut rng = Rng(seed | 1);
    let mut acked = 0u64;
    let mut model = Model::default();
    let (mut unacked_durable, mut killed_before_start, mut relocated) = (0, 0, 0u64);
    let started = Instant::now();
    for round in 0..kills {
        assert!(started.elapsed() < LOOP_TIMEOUT, "crash loop over time after {round} kills");
        let mut child = Command::new(&exe)
            .args([test_name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{adapter}|{}|{seed}|{acked}", dir.path().display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        // One kill in ten lands at a random moment of start-up and recovery; the others a
        // random time after the store opened.
        if rng.below(10) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(80)));
        } else {
            let deadline = Instant::now() + CHILD_START_TIMEOUT;
            loop {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(l) if l.starts_with("START") => {
                        lines.push(l);
                        break;
                    }
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            std::thread::sleep(Duration::from_micros(rng.below(60_000)));
        }
        let _ = child.kill(); // SIGKILL
        let status = child.wait().expect("wait child");
        let _ = reader.join();
        lines.extend(rx.try_iter());
        if status.signal() != Some(libc::SIGKILL) {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("round {round}: child ended by itself ({status}):\n{err}\n{lines:?}");
        }
        if !lines.iter().any(|l| l.starts_with("START")) {
            killed_before_start += 1;
        }
        relocated +=
            lines.iter().filter_map(|l| l.strip_prefix("RELOCATED ")?.parse::<u64>().ok()).max().unwrap_or(0);
        let last_ack =
            lines.iter().filter_map(|l| l.strip_prefix("ACK ")?.parse::<u64>().ok()).max().unwrap_or(0);
        assert!(last_ack == 0 || last_ack >= acked, "round {round}: acknowledgements went back");
        while acked < last_ack {
            acked += 1;
            w.advance(acked, &mut model);
        }
        let mut next = model.clone();
        w.advance(acked + 1, &mut next);
        let (adapter, path) = (adapter.to_string(), dir.path().to_path_buf());
        let (m0, m1) = (model.clone(), next);
        let durable_extra = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = durable_extra.clone();
        let phase = Phase::default();
        let ph = phase.clone();
        run_phased(&phase, move || async move {
            set_phase(&ph, "opening");
            let s =
                open_store(&adapter, &path).await.unwrap_or_else(|e| panic!("round {round}: reopen: {e}"));
            set_phase(&ph, "verifying");
            let at = verify(&s, &m0).await;
            if at.is_err() {
                if let Err(e) = verify(&s, &m1).await {
                    panic!(
                        "round {round}: store matches neither the acknowledged state ({at:?}) nor the next ({e})"
                    );
                }
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            set_phase(&ph, "closing");
            s.close().await.expect("close");
            set_phase(&ph, "closed");
        });
        if durable_extra.load(std::sync::atomic::Ordering::SeqCst) {
            unacked_durable += 1;
            acked += 1;
            w.advance(acked, &mut model);
        }
    }
    eprintln!(
        "{adapter}: {kills} kills in {:.1} s, {acked} operations durable, {unacked_durable} durable before their \
         acknowledgement, {killed_before_start} kills during start-up, {relocated} entries relocated by GC",
        started.elapsed().as_secs_f64()
    );
    if adapter == "wal" && kills >= 100 {
        assert!(relocated > 0, "the workload never made the WAL relocate entries: GC went untested");
    }
}

fn kills(default: usize) -> usize {
    std::env::var("PHALANX_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn wal_survives_sigkill() {
    crash_loop("wal", kills(200));
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_survives_sigkill() {
    crash_loop("rocksdb", kills(200));
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_survives_sigkill() {
    crash_loop("sqlite", kills(200));
}

#[cfg(feature = "raft-engine")]
#[test]
fn raft_engine_survives_sigkill() {
    crash_loop("raft-engine", kills(200));
}

/// Soak: `cargo test -p phalanx-storage --release -- --ignored soak` (about 10 minutes).
#[test]
#[ignore]
fn wal_soak_sigkill() {
    crash_loop("wal", kills(2000));
}
