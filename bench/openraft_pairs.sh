#!/usr/bin/env bash
# openraft 0.10's own benchmark and `phalanx-bench --profile openraft`, alternated row by row
# (one openraft row, then the same Phalanx row), for the issue's four shapes. One line per
# pair and row: openraft's ops/s, Phalanx's entries/s and its CPU %. The machines drift ±15 %
# within an hour: compare per-pair ratios and their medians.
#
#   bench/openraft_pairs.sh PAIRS PHALANX_BENCH_BIN [phalanx-bench arguments...]
#
# openraft is built on first use by ../shared/peers/openraft-bench.sh (OPENRAFT_BENCH
# overrides its path); it runs with 2 server workers and 1 client worker.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n 2,10p "$0"
  exit 2
fi
pairs=$1 bin=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
peer=${OPENRAFT_BENCH:-$here/../../shared/peers/openraft-bench.sh}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq 1 "$pairs"); do
  for shape in 1:1:100k 256:1:3m 4096:1:4m 4096:4:6m; do
    IFS=: read -r c b _ <<<"$shape"
    o=$("$peer" 2 "$shape" | sed -n 's/.*ops_per_sec=\([0-9]*\).*/\1/p')
    (cd "$work" && "$bin" --profile openraft --clients "$c" --batch "$b" "$@" --json "$work/p.json" > "$work/p.out" 2>&1)
    p=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); r=d["rows"][0]; print(int(r["entries_per_sec"]), int(r["cpu_percent"]))' "$work/p.json")
    read -r pe pc <<<"$p"
    echo "pair=$i clients=$c batch=$b openraft=$o phalanx=$pe phalanx_cpu=$pc ratio=$(python3 -c "print(round($pe/$o, 2))")"
  done
done
