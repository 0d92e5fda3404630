#!/usr/bin/env bash
# Builds one fuzz target with the coverage instrumentation cargo-fuzz uses, on the stable
# toolchain, and runs it on its committed corpus for a while. See README.md.
#
#   tests/fuzz/run.sh <target> <seconds> [extra libFuzzer flags...]
#   tests/fuzz/run.sh merge <target>   # minimise the committed corpus plus what runs found
#   tests/fuzz/run.sh build            # build every target, run none
#
# Targets: frame handshake client_request wal snapshot. A run reads the committed corpus
# tests/fuzz/corpus/<target>/ and writes what it finds outside the repository, in
# $FUZZ_WORK/<target>/ (default ~/.cache/phalanx-fuzz-work/); `merge` folds that back,
# minimised (libFuzzer's -merge=1). Crashes, ooms and timeouts go to
# $FUZZ_ARTIFACTS/<target>/ (default ~/.cache/phalanx-fuzz-artifacts/).
set -euo pipefail
cd "$(dirname "$0")"

TARGETS="frame handshake client_request wal snapshot"
# Limits of one run (libFuzzer flags; the malloc limit is also enforced by the fuzz crate's
# allocator, see src/lib.rs, since without a sanitizer libFuzzer cannot see allocations).
RSS_LIMIT_MB="${RSS_LIMIT_MB:-2048}"       # the whole process
MALLOC_LIMIT_MB="${MALLOC_LIMIT_MB:-256}"  # one allocation: no decoder needs this much for one input
TIMEOUT_S="${TIMEOUT_S:-10}"               # one input: every decoder here is linear in its input
# The largest input tried: a WAL segment image is at least 4608 bytes (header block plus a
# 512-byte block), the others are frames and files of a few KiB.
max_len() {
  case "$1" in
    wal) echo 65536 ;;
    *) echo 16384 ;;
  esac
}

# The host triple, given explicitly as cargo-fuzz does: RUSTFLAGS then apply to the target's
# crates only, not to build scripts and proc-macros (which cannot link the sancov hooks).
HOST="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${HOME}/.cache/phalanx-fuzz-target}"
# What cargo-fuzz passes, minus the sanitizer (nightly only): LLVM's SanitizerCoverage pass,
# an 8-bit counter per edge plus the PC table (libFuzzer's `cov:`/`ft:` feedback), and
# comparison tracing (libFuzzer learns magic numbers, lengths and checksums from it). All
# are stable codegen options. `--cfg fuzzing` as cargo-fuzz; assertions and overflow checks
# on, so an arithmetic overflow is a crash rather than a silent wrap.
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks"

build() {
  nice -n 19 cargo build --release --target "$HOST" --bins
}

if [ "${1:-}" = "build" ]; then
  build
  exit 0
fi
binary() {
  echo "${CARGO_TARGET_DIR}/${HOST}/release/$1"
}
is_target() {
  [[ " $TARGETS " == *" $1 "* ]]
}
WORK_ROOT="${FUZZ_WORK:-${HOME}/.cache/phalanx-fuzz-work}"
export FUZZ_MALLOC_LIMIT_MB="$MALLOC_LIMIT_MB"

if [ "${1:-}" = "merge" ] && [ $# -eq 2 ] && is_target "$2"; then
  target="$2"
  build
  fresh="$(mktemp -d)"
  trap 'rm -rf "$fresh"' EXIT
  mkdir -p "${WORK_ROOT}/${target}"
  # Keeps the smallest set of inputs that covers every edge of both. Edges only
  # (-use_counters=0): the hit-count variants would multiply the committed bytes several
  # times (WAL inputs are 5 KiB and more each); they stay in the work directory, which later
  # runs on this machine read too.
  nice -n 19 "$(binary "$target")" -merge=1 -use_counters=0 -rss_limit_mb="$RSS_LIMIT_MB" -timeout="$TIMEOUT_S" \
    "$fresh" "corpus/${target}" "${WORK_ROOT}/${target}"
  # Named inputs (seeds, regressions: anything not named by its SHA-1 as libFuzzer names
  # them) stay as they are, whatever the merge kept: a merged copy of one is dropped.
  for s in corpus/"${target}"/*; do
    [[ "$(basename "$s")" =~ ^[0-9a-f]{40}$ ]] && continue
    rm -f "${fresh}/$(sha1sum "$s" | cut -d' ' -f1)"
    cp "$s" "$fresh/"
  done
  find "corpus/${target}" -type f -regextype posix-extended -regex '.*/[0-9a-f]{40}' -delete
  cp "$fresh"/* "corpus/${target}/"
  echo "corpus/${target}: $(find "corpus/${target}" -type f | wc -l) files, $(du -sb "corpus/${target}" | cut -f1) bytes"
  exit 0
fi
if [ $# -lt 2 ] || ! is_target "$1" || ! [[ "$2" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 <$(echo $TARGETS | tr ' ' '|')> <seconds> [libFuzzer flags...] | $0 merge <target> | $0 build" >&2
  exit 2
fi
target="$1"
seconds="$2"
shift 2
build
WORK="${WORK_ROOT}/${target}"
ARTIFACTS="${FUZZ_ARTIFACTS:-${HOME}/.cache/phalanx-fuzz-artifacts}/${target}"
mkdir -p "$WORK" "$ARTIFACTS"
# New inputs go to the first directory (outside the repository); the committed corpus is read.
exec nice -n 19 "$(binary "$target")" \
  -max_total_time="$seconds" \
  -rss_limit_mb="$RSS_LIMIT_MB" \
  -malloc_limit_mb="$MALLOC_LIMIT_MB" \
  -timeout="$TIMEOUT_S" \
  -max_len="$(max_len "$target")" \
  -artifact_prefix="${ARTIFACTS}/" \
  -print_final_stats=1 \
  "$@" "$WORK" "corpus/${target}"
