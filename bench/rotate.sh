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
# TLS=1 runs server and bench with TLS on (the default is off). Fan-out prints deliveries/s,
# idle KiB per connection, a join storm seconds until all are in.
# Each server runs in a session of its own, as bench/server.sh says; SHARED_GROUP=1 runs it in
# the bench's session instead, as this script did before 2026-11-22.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=${PARLEY:-$ROOT/target/release/parley}
DIR=${RUN:-/tmp/bench}/rotate
tls=--no-tls
[ -n "${TLS:-}" ] && tls=
# Each run's server makes a new certificate: trust on first use, afresh each run.
export PARLEY_KNOWN_HOSTS=$DIR/server/known_hosts
PORT=${PORT:-12400}
rounds=$1 bench_args=$2
shift 2
mkdir -p "$DIR"
# shellcheck source=bench/server.sh
. "$ROOT/bench/server.sh"
trap stop_server EXIT
ulimit -n "$(ulimit -Hn)"
: >"$DIR/runs.txt"

# thread_cpu PID: CPU seconds per thread name of process PID, from /proc.
thread_cpu() {
  for task in /proc/"$1"/task/*; do
    # A thread may end while this looks (the blocking pool's do).
    stat=$(cat "$task/stat" 2>/dev/null) && comm=$(cat "$task/comm" 2>/dev/null) || continue
    echo "$comm $(echo "$stat" | awk '{print ($14 + $15) / 100}')"
  done | awk '{cpu[$1] += $2} END {for (name in cpu) printf "  %s %.2f s\n", name, cpu[name]}'
}

for _ in $(seq 1 "$rounds"); do
  for variant in "$@"; do
    label=${variant%%=*} spec=${variant#*=}
    binary=${spec%%:*} flags=
    [ "$spec" != "$binary" ] && flags=${spec#*:}
    # $flags is a list of words on purpose.
    # shellcheck disable=SC2086
    start_server "$DIR/server" "$binary" $tls $flags
    # shellcheck disable=SC2086
    result=$("$P" bench $bench_args $tls -p "$PORT" --pid "$SERVER_PID" --timeout 300)
    thread_cpu "$SERVER_PID" >"$DIR/threads-$label.txt"
    stop_server
    echo "$label $(echo "$result" | python3 -c '
import json, sys
d = json.load(sys.stdin)
if "deliveries_per_s" in d:
    print(round(d["deliveries_per_s"] / 1e6, 3), "M/s, p99", d["lat_us"]["p99"], "µs, server",
          d["cpu"]["server_pct"], "%, bench", d["cpu"]["bench_pct"], "%")
elif "server_kib_per_conn" in d:
    print(d["server_kib_per_conn"], "KiB per connection,", d["server_kib_per_conn_held"],
          "after holding, set up in", d["setup_s"], "s")
elif "all_in_s" in d:
    print(d["all_in_s"], "s until all are in,", d["all_views_right_s"], "s until every view is right")
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
