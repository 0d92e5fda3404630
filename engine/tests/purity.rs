//! The Raft core and the shard core must stay deterministic: no IO, no clock reads, no
//! unseeded randomness, no iteration over randomly seeded hash maps. This test scans
//! `engine/src/raft/`, `engine/src/shard/` and `engine/src/swim/` and fails on anything that could break that
//! (see ARCHITECTURE.md, "Layers and crates").

use std::path::Path;

/// Patterns that must appear in neither core, with the reason.
const FORBIDDEN: &[(&str, &str)] = &[
    ("Instant::now", "clock reads: time is an input"),
    ("SystemTime", "clock reads: time is an input"),
    ("std::fs", "file IO belongs to the storage layer"),
    ("std::net", "network IO belongs to the transport"),
    ("std::io", "IO belongs to the runtime shell"),
    ("std::thread", "threads belong to the runtime"),
    ("std::env", "configuration arrives through Config"),
    ("std::process", "process control belongs to the binary"),
    ("thread_rng", "unseeded randomness: use SeededRng"),
    ("rand::", "randomness comes only from SeededRng"),
    ("getrandom", "unseeded randomness: use SeededRng"),
    ("RandomState", "hash maps with random seeds iterate nondeterministically"),
    ("HashMap::new", "std HashMap uses a random seed: use BTreeMap or a fixed hasher"),
    ("HashSet::new", "std HashSet uses a random seed: use BTreeSet or a fixed hasher"),
    ("glommio", "the runtime lives in engine/src/runtime"),
    ("tokio", "the core is runtime-agnostic"),
    ("println!", "the core reports through its output, not stdout"),
    ("eprintln!", "the core reports through its output, not stderr"),
];

/// What the Raft core must not use beyond [`FORBIDDEN`]: time enters only as ticks.
const FORBIDDEN_IN_RAFT: &[(&str, &str)] =
    &[("std::time", "time enters through ticks"), ("Instant", "time enters through ticks")];

/// What the shard core must not use beyond [`FORBIDDEN`]: its IO happens in its driver
/// (`runtime/shard.rs`), which moves inputs in and carries out the output.
const FORBIDDEN_IN_SHARD: &[(&str, &str)] = &[
    ("flume", "channels belong to the driver: answers and jobs are output"),
    ("oneshot", "callers are answered through the output"),
    ("futures", "the core never awaits"),
    ("async ", "the core never awaits"),
    ("Mutex", "shared state belongs to the driver"),
    ("NodeShared", "shared views are updated by the driver from the output"),
    ("runtime::shared", "shared views are updated by the driver from the output"),
    ("runtime::bus", "bus messages are output"),
    ("Transport", "frames are output"),
    ("AnyStore", "writes are output (write jobs)"),
    ("LogStore", "writes are output (write jobs)"),
    ("SnapshotStore", "snapshot files are saved by the writer"),
];

/// Files compiled only for unit tests (`#[cfg(test)] mod tests;`), which may read the clock.
const TEST_ONLY: &[&str] = &["tests.rs"];

fn scan(dir: &str, extra: &[(&str, &str)], min_files: usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut found = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("the core's directory exists") {
        let path = entry.expect("readable dir entry").path();
        if path.extension().is_none_or(|e| e != "rs")
            || path.file_name().is_some_and(|f| TEST_ONLY.iter().any(|t| f == *t))
        {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (pat, why) in FORBIDDEN.iter().chain(extra) {
                if code.contains(pat) {
                    found.push(format!("{}:{}: `{pat}` ({why}): {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(files >= min_files, "expected the core's files in {}", dir.display());
    assert!(found.is_empty(), "the core must stay pure:\n{}", found.join("\n"));
}

#[test]
fn raft_core_is_deterministic_and_io_free() {
    scan("src/raft", FORBIDDEN_IN_RAFT, 10);
}

#[test]
fn shard_core_is_deterministic_and_io_free() {
    scan("src/shard", FORBIDDEN_IN_SHARD, 10);
}

#[test]
fn failure_detector_is_deterministic_and_io_free() {
    scan("src/swim", FORBIDDEN_IN_SHARD, 2);
}
