#!/bin/bash
# A same-session set beside Redis: each round runs Redis pub/sub (the anchors' load generator)
# and Parley (`parley bench`, history on unless said) one after the other, so that the
# machine's drift falls on both alike. Both servers run in sessions of their own (setsid), as
# the anchors' servers.sh starts them; each Parley run gets a fresh server and database.
# Prints medians [min-max] per row at the end; the JSON lines stay in $RUN/set/*.jsonl.
#
# usage: bench/set.sh [ROUNDS]          (default 3; about 90 s a round here)
# Needs the release build and the load generator built in ../shared/tools/loadgen, and
# redis-server (apt-get install redis-server).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=${PARLEY:-$ROOT/target/release/parley}
LOADGEN_DIR=${LOADGEN_DIR:-$ROOT/../shared/tools/loadgen}
LG=$LOADGEN_DIR/target/release/loadgen
DIR=${RUN:-/tmp/bench}/set
PORT=${PORT:-12600}
rounds=${1:-3}
for tool in "$P" "$LG"; do
  [ -x "$tool" ] || { echo "set.sh: $tool is missing: build it first" >&2; exit 1; }
done
rm -rf "$DIR" && mkdir -p "$DIR"
ulimit -n "$(ulimit -Hn)"
export PARLEY_KNOWN_HOSTS=$DIR/known_hosts

# shellcheck source=bench/server.sh
. "$ROOT/bench/server.sh"

# parley FILE BENCH-ARGS...: one Parley run against a fresh server; FILE ending in -nohist
# runs the server with --no-history.
parley() {
  local file=$1 flags=()
  shift
  [[ $file == *-nohist ]] && flags=(--no-history)
  start_server "$DIR" "$P" --no-tls "${flags[@]}"
  "$P" bench "$@" --no-tls -p "$PORT" --pid "$SERVER_PID" --timeout 300 \
    2>>"$DIR/human.txt" >>"$DIR/$file.jsonl"
  stop_server
  sleep 2
}

# redis FILE LOADGEN-ARGS...: one run of the load generator against the Redis started below.
redis() {
  local file=$1
  shift
  "$LG" -P redis -p 16379 "$@" --conn-concurrency 64 --pid "$(cat "${RUN:-/tmp/bench}/redis.mypid")" \
    --timeout 120 --label redis 2>/dev/null >>"$DIR/$file.jsonl"
  sleep 2
}

"$LOADGEN_DIR/bench/servers.sh" start redis >/dev/null || exit 1
trap 'stop_server; "$LOADGEN_DIR/bench/servers.sh" stop redis >/dev/null' EXIT
sleep 1
for round in $(seq "$rounds"); do
  echo "round $round of $rounds"
  redis redis-fanout100 -n 100 -m 200000 -w 64
  parley parley-fanout100 fanout -n 100 -m 200000
  parley parley-fanout100-nohist fanout -n 100 -m 200000
  redis redis-fanout1000 -n 1000 -m 15000 -w 64
  parley parley-fanout1000 fanout -n 1000 -m 15000
  redis redis-rate1000 -n 1000 -m 1000 -r 100
  parley parley-rate1000 fanout -n 1000 -m 1000 -r 100
  redis redis-rate100 -n 100 -m 1000 -r 100
  parley parley-rate100 fanout -n 100 -m 1000 -r 100
  parley parley-storm join-storm -k 10000 --conn-concurrency 256
done
python3 - "$DIR" <<'PY'
import glob, json, os, statistics, sys

def spread(values, unit=""):
    return f"{statistics.median(values):.2f}{unit} [{min(values):.2f}-{max(values):.2f}]"

for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.jsonl"))):
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    name = os.path.basename(path)[: -len(".jsonl")]
    if not rows:
        print(f"{name:26} no result")
    elif name.endswith("storm"):
        print(f"{name:26} all in {spread([r['all_in_s'] for r in rows], ' s')}, "
              f"every view right {spread([r['all_views_right_s'] or 0 for r in rows], ' s')}")
    else:
        print(f"{name:26} {spread([r['deliveries_per_s'] / 1e6 for r in rows], ' M/s')}, "
              f"p50 {spread([r['lat_us']['p50'] / 1e3 for r in rows], ' ms')}, "
              f"p99 {spread([r['lat_us']['p99'] / 1e3 for r in rows], ' ms')}")
PY
