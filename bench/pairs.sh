#!/usr/bin/env bash
# Side-by-side runs of two phalanx-bench binaries, alternated (the first of each pair flips),
# one summary line per run and row: binary, clients, batch, ops/s, entries/s, p50 µs, p99 µs,
# CPU %, Raft messages per request. The machines drift ±15 % within an hour: compare medians.
#
#   bench/pairs.sh BEFORE_BIN AFTER_BIN PAIRS [phalanx-bench arguments...]
#
# Example: bench/pairs.sh /tmp/bench-before target/release/phalanx-bench 5 --profile openraft
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n 2,8p "$0"
  exit 2
fi
before=$1 after=$2 pairs=$3
shift 3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq 1 "$pairs"); do
  if (( i % 2 )); then order="before after"; else order="after before"; fi
  for which in $order; do
    if [ "$which" = before ]; then bin=$before; else bin=$after; fi
    json=$work/$which-$i.json
    (cd "$work" && "$bin" "$@" --json "$json" > "$work/$which-$i.out" 2>&1) || {
      echo "$which run $i failed:" >&2
      tail -5 "$work/$which-$i.out" >&2
      exit 1
    }
    python3 - "$json" "$which" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for r in d.get("rows") or [d]:
    ops, msgs = r.get("ops_per_sec") or 0, r.get("net_messages_per_sec")
    per = f"{msgs / ops:.2f}" if msgs and ops else "-"
    print(sys.argv[2], r.get("clients"), r.get("batch"), round(ops), round(r.get("entries_per_sec") or 0),
          r.get("p50_us"), r.get("p99_us"), round(r.get("cpu_percent") or 0), per, flush=True)
PY
  done
done
