//! The deterministic simulator run (issue: foundation, "Proof").
//!
//! - `cargo test --release -p phalanx-tests --test sim` runs the default sweep (1,000 seeds
//!   of 2,000 steps) and prints `sim: seeds=N steps=S violations=V`.
//! - `PHALANX_SIM_SEEDS=N` runs seeds `0..N` (`FIRST..FIRST+N` with `PHALANX_SIM_FIRST=FIRST`,
//!   to search further for a mutant's seeds); `PHALANX_SIM_STEPS=S` sets the steps per seed.
//!   Either way the regression seeds (`REGRESSION_SEEDS`) run too.
//! - `PHALANX_SIM_SEED=X` replays seed X alone and prints its report.

use std::time::Instant;

use phalanx_tests::sim::{Report, run_seed, run_seed_without_clean_stops};

const DEFAULT_SEEDS: u64 = 1000;
/// Seeds that once found an engine bug, run with every sweep (beyond its range too) so the
/// bug stays found: 82 (a sole voter that lost its log's tail led without committed
/// entries), 515 (read ids reused across a restart: a stale read), 9414 (a recovering replica
/// answered a stale leader: a stale read). They replay the scenario only while the
/// simulator draws as it does now; the engine's own tests keep each case deterministically.
/// When a change moves a scenario to another seed, the seed that now finds its mutant is
/// added: 9507 finds `recovering-replica-answers-before-its-floor` since the roster seed and
/// the catch-up read-ahead changed what the simulator draws (9414 no longer does; it is kept,
/// as it costs one seed). 1820 finds `read-ids-reused-after-restart` since the roster joined
/// the workload (274 and 515 no longer do); 1033 since partitions follow the roster (1820
/// no longer does). 8770 promoted a member that never came: its partitions reported it
/// caught up while their logs were shorter than the lag bound. 3378 finds
/// `lease-only-with-check-quorum` (a member being removed deposed its leader again and again),
/// 2395 `membership-change-without-active-quorum` (a group shrunk to a voter recovering its
/// disk and one other). 2377, 6479 and 6941 find `active-before-answering` (a leader a few
/// ticks old counted followers it had not heard from as active and shrank a group onto a
/// replica recovering its disk). SWIM's traffic changed every run's schedule: 3378 no longer
/// finds `lease-only-with-check-quorum`, 2797 does (1 of 10,000 seeds); 1033 no longer finds
/// `read-ids-reused-after-restart`, 2011 does (the first of 5 in 10,000); 9507 no longer finds
/// `recovering-replica-answers-before-its-floor`, 6482 does (1 of 10,000); 1075 is the first
/// of 30 in 10,000 that find `vote-grant-before-persist` (none in the first 1,000 any more),
/// 1446 the first of 19 that find `system-partition-drops-leaver-first`. Checkpoint snapshots
/// saved beside the writes (their own latency) moved every schedule again: 4227 finds
/// `lease-only-with-check-quorum` (1 of 10,000), 1418 `membership-change-without-active-quorum`
/// (the first of 5), 2240 `system-partition-drops-leaver-first` (the first of 25), 22475
/// `active-before-answering` (1 of 30,000), 50065 `recovering-replica-answers-before-its-floor`
/// (a stale read; none in 0..30,000, 1 in 30,000..60,000). Quiescence (idle groups, a leader
/// crashed at the heal) moved them again: 5066 finds `active-before-answering` (1 of 10,000).
/// The start pacer (groups start dormant, a new leader quiesces at once) moved them again; in
/// 1,000..10,000 with 9,000 seeds: 5232 finds both `active-before-answering` (5 seeds, the
/// first 3201) and `membership-change-without-active-quorum` (8, the first 4594), 5481
/// `lease-only-with-check-quorum` (the only one), 2894 `quiesce-with-a-lagging-follower` (the
/// only one), 2096 `vote-grant-before-persist` (the first of 26). Clean stops (a share of
/// the crashes in half the seeds) came after all of them: the regression seeds outside the
/// sweep's range run as recorded, without clean stops (`run_seed_without_clean_stops`);
/// with them, 5481 and 2894 no longer found their mutants, and none of 1,000..10,000 found
/// `lease-only-with-check-quorum`. 50065 no longer finds
/// `recovering-replica-answers-before-its-floor`, with the same trace at `3b27cc9` (before
/// clean stops; trace cfe17d2e995e730c) as now: an earlier change moved it, and no seed of
/// the sweep finds that mutant now (to search for one).
const REGRESSION_SEEDS: &[u64] = &[
    82, 515, 1033, 1075, 1418, 1446, 1820, 2011, 2096, 2240, 2377, 2395, 2797, 2894, 3378, 4227, 5066, 5232,
    5481, 6479, 6482, 6941, 8770, 9414, 9507, 22475, 50065,
];

/// Regression seeds recorded with clean stops (as every seed of a sweep runs now), run so
/// wherever they fall. Waking the quiesced leaders of a member that comes back
/// (`MultiRaft::wake_leaders_of`) moved every schedule again: 2011 no longer finds
/// `read-ids-reused-after-restart`, 4056 does (the only one of 1,000..6,000); 2894 no longer
/// finds `quiesce-with-a-lagging-follower` — the wake also brings a lagging follower up to
/// date once the detector holds it alive again, which is what that mutant breaks — and no
/// seed of 1,000..20,000 does; `engine/tests/raft_quiesce.rs`
/// (`a_follower_that_hears_heartbeats_but_lacks_entries_holds_quiescence`) kills it.
/// Holding proposals through leadership transfers (`shard/held.rs`) moved them again: 5232
/// and 2395 no longer find `membership-change-without-active-quorum`, 2755 does (the first of
/// 2 in 1,000..3,000); nor `lease-only-with-check-quorum`, 4398 does (1 of 4,000 in
/// 1,000..5,000). No seed of 1,000..10,000 finds `active-before-answering` any more; the
/// core's tests kill it. Searched one mutant at a time: searches sharing the mutants' target
/// directory overwrite each other's test binaries. 9275 found an engine liveness bug: the
/// system partition dropped a leaving member that it had not promoted yet at once, while a
/// user partition had made it a voter and it led there; it stopped learning the roster, so
/// it never handed that partition over. It finds `system-partition-drops-unpromoted-leaver-first`
/// (the only one of 0..10,000). The PreVote tie-break (`raft/election.rs`, `wins_tie_with`)
/// moved them again: 4398 no longer finds `lease-only-with-check-quorum` and 9275 no longer
/// finds `system-partition-drops-unpromoted-leaver-first`; no seed of 1,000..10,000 finds
/// either (searched one at a time), nor of 10,000..30,000 the latter (three seeds failed
/// there, but they failed without the mutant too: an engine bug, below). The core's
/// tests kill both (`engine/tests/raft_*.rs` the first; the shard core's unit test
/// `the_system_partition_drops_a_leaving_member_it_has_not_promoted_yet_last_too` the second).
/// 15877, 18214 and 21641 (found in 10,000..30,000) broke the system partition's liveness: a
/// replica lagging far behind its log, which the commit waited on, repeated a progress report
/// every membership round and its copies filled the leader's uncommitted window, so the
/// clients' writes were refused until the run's end. A repeat now lands on its uncommitted
/// copy (`RaftGroup::propose_unanswered`); the three find `system-command-repeats-appended`.
/// With that, two more of 10,000..30,000 broke liveness, each an engine bug: 28262 a group
/// that never elected again (a candidate's only other voter, a learner in its own view whose
/// term removed members had raised, ignored its stale requests: it finds
/// `stale-vote-request-of-a-voter-ignored`), 11589 a leaving member that handed a partition
/// over a dozen times in vain (the transfer expired before the target's campaign came, the
/// leader took a proposal and refused its successor: it finds
/// `transfer-deadline-ignores-a-late-timeout-now`). Those fixes moved 2755 off
/// `membership-change-without-active-quorum`, which nothing else catches (the core's tests
/// check `RaftGroup::quorum_active_in`, not that the roster's changes wait for it); 10216,
/// 11824 and 15093 find it (the three of 1,000..16,000).
const REGRESSION_SEEDS_WITH_CLEAN_STOPS: &[u64] =
    &[2755, 4056, 4398, 9275, 10216, 11589, 11824, 15093, 15877, 18214, 21641, 28262];
const DEFAULT_STEPS: u64 = 2000;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not a non-negative integer"),
    }
}

/// The seeds of `range` and every regression seed outside it, and those (which run as
/// recorded) apart.
fn with_regressions(range: std::ops::Range<u64>) -> (Vec<u64>, Vec<u64>) {
    let extra: Vec<u64> = REGRESSION_SEEDS.iter().copied().filter(|s| !range.contains(s)).collect();
    let current: Vec<u64> =
        REGRESSION_SEEDS_WITH_CLEAN_STOPS.iter().copied().filter(|s| !range.contains(s)).collect();
    (range.chain(extra.iter().copied()).chain(current).collect(), extra)
}

/// Runs `seeds`; those in `recorded` as their regression scenario was recorded.
fn run_many(seeds: Vec<u64>, recorded: &[u64], steps: u64) -> Vec<Report> {
    // Use every core we are given (CI has two), splitting seeds round-robin.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(seeds.len().max(1));
    let mut handles = Vec::new();
    for t in 0..threads {
        let mine: Vec<u64> = seeds.iter().copied().skip(t).step_by(threads).collect();
        let recorded = recorded.to_vec();
        handles.push(std::thread::spawn(move || {
            mine.into_iter()
                .map(|s| {
                    if recorded.contains(&s) {
                        run_seed_without_clean_stops(s, steps)
                    } else {
                        run_seed(s, steps)
                    }
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut out: Vec<Report> =
        handles.into_iter().flat_map(|h| h.join().expect("simulator thread panicked")).collect();
    out.sort_by_key(|r| r.seed);
    out
}

#[test]
fn simulator_sweep() {
    let steps = env_u64("PHALANX_SIM_STEPS").unwrap_or(DEFAULT_STEPS);
    let (seeds, recorded): (Vec<u64>, Vec<u64>) =
        match (env_u64("PHALANX_SIM_SEED"), env_u64("PHALANX_SIM_SEEDS")) {
            (Some(one), _) => {
                (vec![one], with_regressions(0..DEFAULT_SEEDS).1.into_iter().filter(|s| *s == one).collect())
            }
            (None, Some(n)) => {
                let first = env_u64("PHALANX_SIM_FIRST").unwrap_or(0);
                with_regressions(first..first.saturating_add(n))
            }
            (None, None) => with_regressions(0..DEFAULT_SEEDS),
        };
    let started = Instant::now();
    let reports = run_many(seeds.clone(), &recorded, steps);
    let total_steps: u64 = reports.iter().map(|r| r.steps).sum();
    let violations: usize = reports.iter().map(|r| r.violations.len()).sum();
    for r in reports.iter().filter(|r| !r.violations.is_empty()).take(20) {
        eprintln!("seed {} ({} violations):", r.seed, r.violations.len());
        for v in r.violations.iter().take(5) {
            eprintln!("  {v}");
        }
    }
    if seeds.len() == 1 {
        let r = &reports[0];
        println!(
            "seed {}: steps={} messages={} acked={} leaders={} snapshots={} crashes={} trace={:016x}",
            r.seed, r.steps, r.messages, r.acked, r.elections, r.snapshots, r.crashes, r.trace_hash
        );
        println!("{}", r.final_state);
    }
    let acked: u64 = reports.iter().map(|r| r.acked).sum();
    let refused: u64 = reports.iter().map(|r| r.refused).sum();
    let crashes: u64 = reports.iter().map(|r| r.crashes).sum();
    let disk_losses: u64 = reports.iter().map(|r| r.disk_losses).sum();
    let snapshots: u64 = reports.iter().map(|r| r.snapshots).sum();
    let live = reports.iter().filter(|r| r.liveness_checked).count();
    let fetches: u64 = reports.iter().map(|r| r.fetches).sum();
    let overtaken: u64 = reports.iter().map(|r| r.fetches_overtaken).sum();
    let rosters: u64 = reports.iter().map(|r| r.roster_versions).sum();
    let quiesced: u64 = reports.iter().map(|r| r.quiesced_ticks).sum();
    println!(
        "sim: seeds={} steps={} violations={} (acked={acked} refused={refused} crashes={crashes} disk-losses={disk_losses} snapshots={snapshots} \
         liveness-checked={live} fetches={fetches} fetches-overtaken={overtaken} roster-versions={rosters} \
         quiesced-leader-ticks={quiesced} wall={:.1}s)",
        seeds.len(),
        total_steps,
        violations,
        started.elapsed().as_secs_f64()
    );
    let failing: Vec<u64> = reports.iter().filter(|r| !r.violations.is_empty()).map(|r| r.seed).collect();
    assert!(failing.is_empty(), "violations in seeds {failing:?}; replay with PHALANX_SIM_SEED=<seed>");
}

/// A seed whose liveness the run's bound does not hold, kept to measure against:
/// `cargo test --release -p phalanx-tests --test sim -- --ignored known_liveness_limits`.
/// 29447 (found in 1,000..30,000 with every fix above): partition 1 commits no new write
/// within 1,000 ticks after the heal. Its leader needs node 1 (voters 1, 3), which is ~125
/// entries behind, and the seed's configuration moves it ~0.12 entries a tick: one entry per
/// append, entries read back from disk, and a network that reorders, so half the pipelined
/// appends arrive ahead of a gap and are refused. With 2,000 ticks after the heal it passes
/// (checked by hand), so it is the catch-up's speed, not a stuck group. Faster catch-up over
/// a reordering link (a follower keeping appends that arrive ahead of a gap, or a leader
/// not resending what is still in flight) would make it pass.
#[test]
#[ignore = "the catch-up is slower than the liveness bound in this configuration: run by hand"]
fn known_liveness_limits() {
    assert_seeds_hold(vec![29447]);
}

/// A safety failure on the engine as it is, kept until it is fixed:
/// `cargo test --release -p phalanx-tests --test sim -- --ignored known_safety_failures`.
/// 46057, found at `c408627` in 30,000..50,000 (the first sweep of that range); it fails
/// identically at `6e57900`, before this stop's changes (trace 7d4461d0e35cf757, acked 419).
/// Partition 1 applies indexes 125.. with term 16 on nodes 1 and 3 and term 15 elsewhere
/// (105 violations, `LeaderCompleteness` first). The run: 3 nodes, a crash in 5% of ticks,
/// 60% of them clean stops, 8 disk losses, one-tick delays, PreVote and CheckQuorum on. Not
/// diagnosed yet.
#[test]
#[ignore = "an engine safety bug not fixed yet: run by hand"]
fn known_safety_failures() {
    assert_seeds_hold(vec![46057]);
}

/// Runs `seeds` as the sweep does (clean stops included) and fails with each failing seed's
/// first violations.
fn assert_seeds_hold(seeds: Vec<u64>) {
    let steps = env_u64("PHALANX_SIM_STEPS").unwrap_or(DEFAULT_STEPS);
    let failing: Vec<String> = run_many(seeds, &[], steps)
        .iter()
        .filter(|r| !r.violations.is_empty())
        .map(|r| format!("{}: {:?}", r.seed, r.violations.iter().take(3).collect::<Vec<_>>()))
        .collect();
    assert!(failing.is_empty(), "{failing:#?}");
}

#[test]
fn same_seed_same_trace() {
    for seed in [3, 17, 4242] {
        let a = run_seed(seed, 600);
        let b = run_seed(seed, 600);
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed} diverged between two runs");
        assert_eq!(a.messages, b.messages);
        assert_eq!(a.acked, b.acked);
    }
    assert_ne!(run_seed(1, 600).trace_hash, run_seed(2, 600).trace_hash, "different seeds should differ");
}
