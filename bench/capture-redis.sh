#!/usr/bin/env bash
# A real dirty-page trace: capture redis-server while redis-benchmark loads
# it, then replay the trace through a sender and a receiver and fail unless
# the receiver's image equals the trace's.
#
#   bash bench/capture-redis.sh        (as root: installs redis with apt if missing)
#
# Settings (environment): REDIS_PORT (6391), EPOCHS (30), INTERVAL_MS (50),
# REQUESTS per benchmark test (200000), KEYSPACE of random keys (100000).
# The trace goes to bench/traces/redis.rmtr, which git ignores: real traces
# are large.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/capture-common.sh
source bench/capture-common.sh

REDIS_PORT=${REDIS_PORT:-6391}
EPOCHS=${EPOCHS:-30}
INTERVAL_MS=${INTERVAL_MS:-50}
REQUESTS=${REQUESTS:-200000}
KEYSPACE=${KEYSPACE:-100000}
TRACES=bench/traces
TRACE=$TRACES/redis.rmtr
# Time for redis-benchmark to connect and fill some keys before epoch 0.
WARMUP_SECONDS=1
# How long redis-server may take to answer its first PING.
START_TIMEOUT_TENTHS=50

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  echo "installing redis-server and redis-tools" >&2
  apt-get update
  apt-get install -y redis-server redis-tools
fi

npm run -s build
mkdir -p "$TRACES"

redis_pid=
bench_pid=
cleanup() {
  # Only the processes this script started, by their pid.
  [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null || true
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

# Loopback only, no RDB snapshots and no AOF: the only writer of its memory
# is the benchmark, and nothing of it lands on disk.
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
  --daemonize no --logfile "$TRACES/redis-server.log" &
redis_pid=$!

for ((i = 0; ; i++)); do
  if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then break; fi
  if ! kill -0 "$redis_pid" 2>/dev/null || ((i >= START_TIMEOUT_TENTHS)); then
    echo "redis-server did not start on port $REDIS_PORT (see $TRACES/redis-server.log)" >&2
    exit 1
  fi
  sleep 0.1
done

# Bounded: REQUESTS per test, random keys from KEYSPACE, 64-byte values.
redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -n "$REQUESTS" -r "$KEYSPACE" -d 64 -q \
  -t set,get,incr,lpush,rpop,sadd,hset,zadd >"$TRACES/redis-benchmark.txt" 2>&1 &
bench_pid=$!
sleep "$WARMUP_SECONDS"

echo "capturing redis-server (pid $redis_pid): $EPOCHS epochs every $INTERVAL_MS ms" >&2
capture_trace "$redis_pid" "$TRACE" "$TRACES/redis-capture.txt"

if kill -0 "$bench_pid" 2>/dev/null; then
  echo "the benchmark was still running during the whole capture" >&2
else
  echo "warning: the benchmark ended before the capture did; later epochs saw an idle server" >&2
fi

verify_replay "$TRACE"
