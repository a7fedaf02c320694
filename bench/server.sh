# Sourced by the bench scripts: starts and stops the Parley server they measure.
#
# Each server runs in a session of its own (setsid), as the anchors' servers.sh starts theirs:
# with autogroup scheduling the kernel then shares the cores between it and the bench as
# groups, which changes Parley's figures (docs/benchmarks.md, "A session of its own").
# SHARED_GROUP=1 runs it in the bench's session instead.

SERVER_PID=

# start_server DIR BINARY [server flags...]: a fresh server of BINARY on $PORT (empty shared
# folder and database under DIR, its log in DIR/server.log, $PARLEY_KNOWN_HOSTS removed);
# sets SERVER_PID. Says why and exits if it does not start.
start_server() {
  local dir=$1 binary=$2 session=setsid
  shift 2
  stop_server
  [ -n "${SHARED_GROUP:-}" ] && session=
  rm -rf "$dir/shared" "$dir/data" "${PARLEY_KNOWN_HOSTS:?}"
  mkdir -p "$dir"
  $session "$binary" server "$PORT" --host 127.0.0.1 --shared-dir "$dir/shared" \
    --data-dir "$dir/data" --max-connections 100000 --disk-reserve 0 "$@" >"$dir/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do grep -q "sharing the folder" "$dir/server.log" && return; sleep 0.1; done
  echo "the server did not start: $(cat "$dir/server.log")" >&2
  exit 1
}

# stop_server: stops the server start_server started, if any, and waits until it is gone.
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null
  wait "$SERVER_PID" 2>/dev/null
  SERVER_PID=
}
