#!/bin/bash
# Compares server builds or flags side by side: each round runs every variant once, in turn,
# each against a fresh server, so that the machine's drift between half-hours (±15% here)
# falls on all of them alike. Prints one line per run, then medians [min-max] per variant, and
# the CPU seconds each server thread used in its last run (by thread name).
#
# usage: bench/rotate.sh ROUNDS "bench args" LABEL=BINARY[:server flags]...
# e.g.:  bench/rotate.sh 5 "fanout -n 100 -m 200000" \
#          history=target/release/parley no-history=target/release/parley:--no-history
# The bench itself is always $PARLEY (default: the release build), so only the server varies.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=${PARLEY:-$ROOT/target/release/parley}
DIR=${RUN:-/tmp/bench}/rotate
PORT=${PORT:-12400}
rounds=$1 bench_args=$2
shift 2
mkdir -p "$DIR"
ulimit -n "$(ulimit -Hn)"
: >"$DIR/runs.txt"

# thread_cpu PID: CPU seconds per thread name of process PID, from /proc.
thread_cpu() {
  for task in /proc/"$1"/task/*; do
    echo "$(cat "$task/comm") $(awk '{print ($14 + $15) / 100}' "$task/stat")"
  done | awk '{cpu[$1] += $2} END {for (name in cpu) printf "  %s %.2f s\n", name, cpu[name]}'
}

for _ in $(seq 1 "$rounds"); do
  for variant in "$@"; do
    label=${variant%%=*} spec=${variant#*=}
    binary=${spec%%:*} flags=
    [ "$spec" != "$binary" ] && flags=${spec#*:}
    rm -rf "$DIR/server" && mkdir -p "$DIR/server"
    # $flags is a list of words on purpose.
    # shellcheck disable=SC2086
    "$binary" server "$PORT" --host 127.0.0.1 --no-tls --shared-dir "$DIR/server/shared" \
      --data-dir "$DIR/server/data" --max-connections 100000 --disk-reserve 0 $flags \
      >"$DIR/server/log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do grep -q "sharing the folder" "$DIR/server/log" && break; sleep 0.1; done
    # shellcheck disable=SC2086
    result=$("$P" bench $bench_args --no-tls -p "$PORT" --pid "$pid" --timeout 300)
    thread_cpu "$pid" >"$DIR/threads-$label.txt"
    kill "$pid"; wait "$pid" 2>/dev/null
    echo "$label $(echo "$result" | python3 -c '
import json, sys
d = json.load(sys.stdin)
if "deliveries_per_s" in d:
    print(round(d["deliveries_per_s"] / 1e6, 3), "M/s, p99", d["lat_us"]["p99"], "µs, server",
          d["cpu"]["server_pct"], "%, bench", d["cpu"]["bench_pct"], "%")
else:
    print(json.dumps(d))')" | tee -a "$DIR/runs.txt"
  done
done
python3 - "$DIR/runs.txt" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, value = line.split()[:2]
    try:
        runs[label].append(float(value))
    except ValueError:
        pass
for label, values in runs.items():
    print(f"{label}: median {statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]")
EOF
for variant in "$@"; do
  label=${variant%%=*}
  echo "$label, server threads' CPU in its last run:"
  cat "$DIR/threads-$label.txt"
done
