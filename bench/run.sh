#!/bin/bash
# Runs `parley bench` over the scenarios of docs/benchmarks.md against the release build, each
# $REPS times, on a quiet machine. One JSON line per run (with a "label") goes to
# $OUT/parley.jsonl; summary.py prints medians. Usage: bench/run.sh [scenario...]
# scenarios: fanout rate idle storm transfer chat history tls (default: all)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=${PARLEY:-$ROOT/target/release/parley}
RUN=${RUN:-/tmp/bench}
OUT=${OUT:-$RUN/results}
REPS=${REPS:-3}
PORT=${PORT:-12400}
DIR=$RUN/parley
export PARLEY_KNOWN_HOSTS=$DIR/known_hosts
mkdir -p "$OUT" "$DIR"
ulimit -n "$(ulimit -Hn)"
# shellcheck source=bench/server.sh
. "$ROOT/bench/server.sh"

# start [server flags...]: a fresh server (empty shared folder and database) on $PORT.
start() { start_server "$DIR" "$P" "$@"; }
stop() { stop_server; }
trap stop EXIT

# run LABEL bench-args...: one measurement, labelled, appended to parley.jsonl.
run() {
  local label=$1; shift
  "$P" bench "$@" -p "$PORT" --pid "$SERVER_PID" --timeout 300 \
    | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d["label"]=sys.argv[1]; print(json.dumps(d))' "$label" \
    | tee -a "$OUT/parley.jsonl"
  sleep 2
}

plain=(--no-tls)
scenarios=${*:-fanout rate idle storm transfer chat history tls}
for s in $scenarios; do
  for _ in $(seq 1 "$REPS"); do
    case $s in
      fanout)   start "${plain[@]}"
                run "fanout n=100" fanout "${plain[@]}" -n 100 -m 100000
                run "fanout n=1000" fanout "${plain[@]}" -n 1000 -m 10000 ;;
      rate)     start "${plain[@]}"
                run "rate 100/s n=1000" fanout "${plain[@]}" -n 1000 -m 1000 -r 100
                run "rate 100/s n=100" fanout "${plain[@]}" -n 100 -m 1000 -r 100 ;;
      idle)     start "${plain[@]}"; sleep 1
                run "idle k=10000" idle "${plain[@]}" -k 10000 --conn-concurrency 256 ;;
      storm)    start "${plain[@]}"
                run "join-storm k=10000" join-storm "${plain[@]}" -k 10000 --conn-concurrency 256 ;;
      transfer) start "${plain[@]}"
                run "transfer 1G" transfer "${plain[@]}" --size 1G ;;
      chat)     start "${plain[@]}"
                run "chat-during-transfer" chat-during-transfer "${plain[@]}" --size 1G -m 200 -r 20 ;;
      history)  start "${plain[@]}" --no-history
                run "fanout n=100 no-history" fanout "${plain[@]}" -n 100 -m 100000
                run "fanout n=1000 no-history" fanout "${plain[@]}" -n 1000 -m 10000 ;;
      tls)      start
                run "tls fanout n=1000" fanout -n 1000 -m 10000
                stop; start; sleep 1
                run "tls idle k=10000" idle -k 10000 --conn-concurrency 256
                stop; start
                run "tls transfer 1G" transfer --size 1G
                run "tls chat-during-transfer" chat-during-transfer --size 1G -m 200 -r 20 ;;
      *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
  done
done
