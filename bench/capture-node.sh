#!/usr/bin/env bash
# A real dirty-page trace: capture a Node.js HTTP service whose heap is an
# LRU of records (bench/workloads/lru-server.ts) while a loopback load
# generator (bench/workloads/lru-load.ts) drives it, then replay the trace
# through a sender and a receiver and fail unless the receiver's image equals
# the trace's.
#
#   bash bench/capture-node.sh         (needs only the node that runs this project)
#
# The service keeps ENTRIES records of a few KiB (about 20 MiB live) and
# builds one on every miss, so V8 scavenges its young generation many times
# a second and collects the old one as evicted records die; its heap sits at
# 60-100 MiB, its writable memory at about 135 MiB. It runs with 2 V8
# platform threads and 2 libuv threads, sized for this 2-core machine (the
# defaults, 4 and 4, add four more 8 MiB thread stacks: 32 MiB of zero pages).
#
# Settings (environment): EPOCHS (30), INTERVAL_MS (100), ENTRIES (8000),
# KEYS (50000, the id range the load draws from), CONCURRENCY (4 request
# loops), RATE (5000 requests a second in all; 0 for back to back, about
# 18000/s on this machine when nothing else runs), LOAD_SECONDS (60, an upper
# bound: the load is stopped when the capture ends).
#
# Why a fixed rate: back to back, the work done per epoch follows whatever
# CPU the service gets, which on a shared 2-core machine varies 3x from run
# to run.
#
# Why 100 ms and not redis's 50: INTERVAL_MS is from the start of one
# checkpoint to the start of the next, and a checkpoint of an image this size
# pauses the process about 55 ms on this machine (the capture reads and
# compares all of its writable memory), so 50 ms would leave it almost no
# time to run between checkpoints; 100 ms leaves it about 40-50 ms. The capture
# runs at nice -10 (as root) so that its own work between checkpoints (copying
# out and writing the epoch) is not what stretches the interval on two cores.
# The trace goes to bench/traces/node.rmtr, which git ignores.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/capture-common.sh
source bench/capture-common.sh

EPOCHS=${EPOCHS:-30}
INTERVAL_MS=${INTERVAL_MS:-100}
ENTRIES=${ENTRIES:-8000}
KEYS=${KEYS:-50000}
CONCURRENCY=${CONCURRENCY:-4}
RATE=${RATE:-5000}
LOAD_SECONDS=${LOAD_SECONDS:-60}
TRACES=bench/traces
TRACE=$TRACES/node.rmtr
# The load runs this long before epoch 0: the LRU fills in about 2 s, then
# the old generation goes through a few collections.
WARMUP_SECONDS=5
# How long the service may take to listen.
START_TIMEOUT_TENTHS=100

npm run -s build
mkdir -p "$TRACES"

work=$(mktemp -d /tmp/remus-node.XXXXXX)
server_pid=
load_pid=
cleanup() {
  # Only the processes this script started, by their pid.
  # A capture interrupted while its target was paused leaves it stopped (the
  # capture tool resumes it only on a normal exit), and a stopped process
  # does not act on SIGTERM: continue it first.
  [ -n "$server_pid" ] && kill -CONT "$server_pid" 2>/dev/null || true
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work" "$TRACE.partial"
}
trap cleanup EXIT

# Progress lines with the time since the capture started, to see how long
# each epoch really ran.

# $! is the service itself (bash execs node in the background job). It
# exits by itself after LOAD_SECONDS + 60 s whatever happens to this script.
UV_THREADPOOL_SIZE=2 node --v8-pool-size=2 dist/bench/workloads/lru-server.js \
  --port-file "$work/port" --entries "$ENTRIES" --seconds $((LOAD_SECONDS + 60)) 2>"$TRACES/node-server.txt" &
server_pid=$!

for ((i = 0; ; i++)); do
  if [ -f "$work/port" ]; then break; fi
  if ! kill -0 "$server_pid" 2>/dev/null || ((i >= START_TIMEOUT_TENTHS)); then
    echo "the node service did not start (see $TRACES/node-server.txt)" >&2
    exit 1
  fi
  sleep 0.1
done
port=$(cat "$work/port")

# Bounded: LOAD_SECONDS at most, 127.0.0.1 only.
node dist/bench/workloads/lru-load.js --port "$port" --concurrency "$CONCURRENCY" --rate "$RATE" \
  --keys "$KEYS" --seconds "$LOAD_SECONDS" >"$TRACES/node-load.txt" 2>&1 &
load_pid=$!
sleep "$WARMUP_SECONDS"
curl -fsS "http://127.0.0.1:$port/stats" >"$TRACES/node-stats-before.json" || true

echo "capturing the node service (pid $server_pid): $EPOCHS epochs every $INTERVAL_MS ms" >&2
capture_trace "$server_pid" "$TRACE" "$TRACES/node-capture.txt"

if kill -0 "$load_pid" 2>/dev/null; then
  echo "the load was still running during the whole capture" >&2
  curl -fsS "http://127.0.0.1:$port/stats" >"$TRACES/node-stats-after.json" || true
  kill "$load_pid" 2>/dev/null || true
  wait "$load_pid" 2>/dev/null || true
  load_pid=
else
  echo "warning: the load ended before the capture did; later epochs saw an idle service" >&2
fi
cat "$TRACES/node-load.txt" >&2

verify_replay "$TRACE"
