//! The Raft core must stay deterministic: no IO, no clock reads, no unseeded randomness, no
//! iteration over randomly seeded hash maps. This test scans `engine/src/raft/` and fails on
//! anything that could break that (see DESIGN.md, "Layers and crates").

use std::path::Path;

/// Patterns that must not appear in the core, with the reason.
const FORBIDDEN: &[(&str, &str)] = &[
    ("std::time", "clock reads: time enters through tick_to"),
    ("Instant", "clock reads: time enters through tick_to"),
    ("SystemTime", "clock reads: time enters through tick_to"),
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
    ("println!", "the core reports through Ready, not stdout"),
    ("eprintln!", "the core reports through Ready, not stderr"),
];

#[test]
fn raft_core_is_deterministic_and_io_free() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/raft");
    let mut found = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("engine/src/raft exists") {
        let path = entry.expect("readable dir entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (pat, why) in FORBIDDEN {
                if code.contains(pat) {
                    found.push(format!("{}:{}: `{pat}` ({why}): {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(files >= 10, "expected the core's files in {}", dir.display());
    assert!(found.is_empty(), "the Raft core must stay pure:\n{}", found.join("\n"));
}
