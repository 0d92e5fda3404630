#!/usr/bin/env bash
# Mutation check of the simulator: applies each hand-made bug in tests/mutants/*.patch to a
# scratch copy of the tree, runs the simulator sweep, and reports how many seeds it took to
# find the bug (the first failing seed + 1) and how many of the seeds failed.
#
#   tests/mutants/run.sh [SEEDS]        (default 1000)
#
# A mutant that survives (no failing seed, and no failing test of the core's own suite)
# exits non-zero: a real bug went unnoticed.
set -euo pipefail
seeds=${1:-1000}
root=$(git rev-parse --show-toplevel)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR_MUTANTS:-${HOME}/.cache/phalanx-target-mutants}
survived=0
for patch in "$root"/tests/mutants/*.patch; do
  name=$(basename "$patch" .patch)
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  git -C "$root" archive HEAD | tar -x -C "$work"
  if ! (cd "$work" && patch -s -p1 < "$patch" > /dev/null 2>&1); then
    # A patch that no longer applies tests nothing: regenerate it against the code.
    echo "mutant $name DOES NOT APPLY to HEAD"
    survived=1
    rm -rf "$work"
    trap - EXIT
    continue
  fi
  out=$(cd "$work" && PHALANX_SIM_SEEDS=$seeds cargo test -q --release -p phalanx-tests --test sim simulator_sweep -- --nocapture 2>&1 || true)
  line=$(grep -E '^sim:' <<<"$out" || true)
  failing=$(grep -oE 'violations in seeds \[[0-9, ]*\]' <<<"$out" | grep -oE '[0-9]+' || true)
  if [ -z "$line" ]; then
    # No sweep summary: the mutant did not build, or the sweep did not run.
    echo "mutant $name DID NOT RUN:"
    tail -n 20 <<<"$out"
    survived=1
  elif [ -z "$failing" ]; then
    # The simulator missed it; the core's deterministic tests (the Raft core's conformance
    # tests, engine/tests/raft_*.rs, and the engine's unit tests, the shard core's among
    # them) may not. Either way the miss is reported: the sweep should find every mutant.
    raft_tests=$(cd "$work" && ls engine/tests/raft_*.rs | xargs -n1 basename | sed 's/\.rs$//; s/^/--test /')
    # shellcheck disable=SC2086
    if (cd "$work" && cargo test -q --release -p phalanx --lib $raft_tests > /dev/null 2>&1); then
      echo "mutant $name SURVIVED: $line"
      survived=1
    else
      echo "mutant $name killed by the core's tests only (engine unit tests, engine/tests/raft_*.rs), the simulator missed it: $line"
    fi
  else
    first=$(head -n1 <<<"$failing")
    count=$(wc -l <<<"$failing")
    ran=$(grep -oE 'seeds=[0-9]+' <<<"$line" | head -n1 | cut -d= -f2)
    if [ "$first" -lt "$seeds" ]; then
      found="found after $((first + 1)) seeds"
    else
      found="found only at a regression seed, none of 0..$seeds"
    fi
    echo "mutant $name killed: first failing seed $first ($found); $count of $ran seeds failed; $line"
  fi
  rm -rf "$work"
  trap - EXIT
done
exit $survived
