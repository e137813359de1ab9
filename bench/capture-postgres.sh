#!/usr/bin/env bash
# A real dirty-page trace: capture the PostgreSQL backend that serves a
# pgbench TPC-B-like run, then replay the trace through a sender and a
# receiver and fail unless the receiver's image equals the trace's.
#
#   bash bench/capture-postgres.sh     (as root: installs postgresql with apt if missing)
#
# Which process: pgbench runs one client (-c 1), so exactly one backend
# serves it (found in pg_stat_activity, checked to be a child of our
# postmaster). That backend maps the server's main shared memory segment
# (shared buffers, WAL buffers, lock and proc tables, written by the backend
# and by the WAL writer, background writer and checkpointer) besides its own
# private memory (catalog and plan caches, executor memory). So its trace
# holds nearly all of the server's memory that changes under the workload;
# what it leaves out is the other server processes' small private memory and
# the kernel's page cache of the data files (which a VM checkpoint would hold).
#
# The server is a private cluster: a fresh initdb in a temporary directory,
# run as the postgres user, listening only on a Unix socket in that directory
# (no TCP at all), stopped and removed at the end. Debian's own cluster, if
# any, is not touched.
#
# Settings (environment): EPOCHS (30), INTERVAL_MS (100), SCALE (10: 1M
# accounts, about 150 MB of tables and indexes), CLIENTS (1), RATE (1000
# transactions a second, pgbench -R; 0 for back to back, about 4800/s on
# this machine when nothing else runs, about 2000/s while being captured: a
# fixed rate below that keeps the work per epoch from following whatever CPU
# the backend gets on a shared machine), SHARED_BUFFERS
# (96MB: the data does not all fit, so buffers are replaced as on a real
# server; the backend's writable memory is about 110 MiB), BENCH_SECONDS (60,
# an upper bound: the run is stopped when the capture ends).
#
# Why 100 ms and not redis's 50: INTERVAL_MS is from the start of one
# checkpoint to the start of the next, and a checkpoint of an image this size
# pauses the backend about 50 ms on this machine (the capture reads and
# compares all of its writable memory), so at 50 ms the backend hardly runs
# between checkpoints (measured: 4-100 dirty pages per epoch); 100 ms leaves
# it about 50 ms. The capture runs at nice -10 (as root) so that its own
# work between checkpoints (copying out and writing the epoch) is not what
# stretches the interval on two cores.
# The trace goes to bench/traces/postgres.rmtr, which git ignores.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/capture-common.sh
source bench/capture-common.sh

EPOCHS=${EPOCHS:-30}
INTERVAL_MS=${INTERVAL_MS:-100}
SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-1}
RATE=${RATE:-1000}
SHARED_BUFFERS=${SHARED_BUFFERS:-96MB}
BENCH_SECONDS=${BENCH_SECONDS:-60}
PG_PORT=5432 # only names the socket file, inside our private directory
TRACES=bench/traces
TRACE=$TRACES/postgres.rmtr
LOG=$TRACES/postgres-server.log
# pgbench runs this long before epoch 0, past connection setup and the
# first transactions' catalog cache misses.
WARMUP_SECONDS=3
# How long the server may take to accept connections, and pgbench's backend to show up.
START_TIMEOUT_TENTHS=100

pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
bindir=$(pg_bindir)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ] || [ ! -x "$bindir/pgbench" ] ||
  [ ! -f "$(dirname "$bindir")/lib/pg_prewarm.so" ]; then
  echo "installing postgresql (server, client with pgbench, contrib with pg_prewarm)" >&2
  apt-get update
  apt-get install -y postgresql postgresql-contrib
  bindir=$(pg_bindir)
fi
id postgres >/dev/null # the user the postgresql package creates

npm run -s build
mkdir -p "$TRACES"

work=$(mktemp -d /tmp/remus-pg.XXXXXX)
chown postgres: "$work"
chmod 700 "$work"
data=$work/data
launcher_pid=
postmaster_pid=
bench_pid=
backend_pid=
cleanup() {
  # Only the processes this script started, by their pid; then the cluster's files.
  # A capture interrupted while its target was paused leaves it stopped (the
  # capture tool resumes it only on a normal exit), and a stopped process
  # does not act on SIGTERM: continue it first.
  [ -n "$backend_pid" ] && kill -CONT "$backend_pid" 2>/dev/null || true
  [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null || true
  # Started but not yet known by its postmaster.pid: wait for the file (the
  # launcher, when it is not the postmaster, passes no signal on).
  if [ -z "$postmaster_pid" ] && [ -n "$launcher_pid" ] && kill -0 "$launcher_pid" 2>/dev/null; then
    for ((i = 0; i < 100; i++)); do [ -s "$data/postmaster.pid" ] && break; sleep 0.1; done
    postmaster_pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null || true)
  fi
  if [ -n "$postmaster_pid" ] && kill -0 "$postmaster_pid" 2>/dev/null; then
    kill -INT "$postmaster_pid" 2>/dev/null || true # fast shutdown: ends its backends too
    for ((i = 0; i < 100; i++)); do kill -0 "$postmaster_pid" 2>/dev/null || break; sleep 0.1; done
    # Immediate shutdown, if the fast one hangs.
    if kill -0 "$postmaster_pid" 2>/dev/null; then kill -QUIT "$postmaster_pid" 2>/dev/null || true; fi
  fi
  wait 2>/dev/null || true
  rm -rf "$work" "$TRACE.partial"
}
trap cleanup EXIT

as_postgres() { (cd "$work" && exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"); }
psql_q() { "$bindir/psql" -h "$work" -p "$PG_PORT" -U postgres -d postgres -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }

# Progress lines with the time since the capture started, to see how long
# each epoch really ran.

as_postgres "$bindir/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null

# The postmaster's pid is read from postmaster.pid once it answers ($! is
# the subshell that started it, or the postmaster when bash execs it). No huge pages (4 KiB pages like the rest of the image);
# asynchronous commit (the workload is bound by CPU and memory, not
# by this disk's fsync).
: >"$LOG"
(cd "$work" && exec setpriv --reuid=postgres --regid=postgres --init-groups -- \
  "$bindir/postgres" -D "$data" -p "$PG_PORT" -c listen_addresses='' -c unix_socket_directories="$work" \
  -c shared_buffers="$SHARED_BUFFERS" -c huge_pages=off -c synchronous_commit=off \
  -c max_connections=20 -c logging_collector=off) >>"$LOG" 2>&1 &
launcher_pid=$!

for ((i = 0; ; i++)); do
  if "$bindir/pg_isready" -q -h "$work" -p "$PG_PORT"; then break; fi
  if ! kill -0 "$launcher_pid" 2>/dev/null || ((i >= START_TIMEOUT_TENTHS)); then
    echo "postgres did not start (see $LOG)" >&2
    exit 1
  fi
  sleep 0.1
done
postmaster_pid=$(head -n 1 "$data/postmaster.pid")

echo "pgbench -i -s $SCALE" >&2
"$bindir/pgbench" -i -q -s "$SCALE" -h "$work" -p "$PG_PORT" -U postgres postgres >>"$LOG" 2>&1
# A server that has been up a while has its hot data in shared buffers: load
# the indexes, then the tables, until the buffers are full. Then a checkpoint,
# so that writing out the load does not overlap the capture.
psql_q -c 'CREATE EXTENSION IF NOT EXISTS pg_prewarm' \
  -c "SELECT sum(pg_prewarm(c.oid)) FROM pg_class c WHERE c.relname LIKE 'pgbench_%' AND c.relkind = 'i'" \
  -c "SELECT sum(pg_prewarm(c.oid)) FROM pg_class c WHERE c.relname LIKE 'pgbench_%' AND c.relkind = 'r'" \
  -c 'CHECKPOINT' >/dev/null

# Bounded: BENCH_SECONDS at most; -n: the tables were just vacuumed by -i.
rate_option=()
if [ "$RATE" != 0 ]; then rate_option=(-R "$RATE"); fi
"$bindir/pgbench" -n -c "$CLIENTS" -j 1 -T "$BENCH_SECONDS" -P 5 "${rate_option[@]}" \
  -h "$work" -p "$PG_PORT" -U postgres postgres >"$TRACES/pgbench.txt" 2>&1 &
bench_pid=$!

# pgbench first opens a short connection of its own (to read the scale), so
# a backend counts only once it has outlived that: still there, a child of
# our postmaster, after the warm-up.
for ((i = 0; ; i++)); do
  backend_pid=$(psql_q -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench' AND backend_type = 'client backend' ORDER BY backend_start DESC LIMIT 1")
  if [ -n "$backend_pid" ] && [ "$(ps -o ppid= -p "$backend_pid" | tr -d ' ')" = "$postmaster_pid" ]; then break; fi
  if ! kill -0 "$bench_pid" 2>/dev/null || ((i >= START_TIMEOUT_TENTHS)); then
    echo "pgbench's backend did not show up (see $TRACES/pgbench.txt)" >&2
    exit 1
  fi
  sleep 0.1
done
sleep "$WARMUP_SECONDS"
if [ "$(ps -o ppid= -p "$backend_pid" | tr -d ' ')" != "$postmaster_pid" ]; then
  echo "backend $backend_pid is gone or not a child of our postmaster $postmaster_pid" >&2
  exit 1
fi

echo "capturing the postgres backend serving pgbench (pid $backend_pid): $EPOCHS epochs every $INTERVAL_MS ms" >&2
capture_trace "$backend_pid" "$TRACE" "$TRACES/postgres-capture.txt"

if kill -0 "$bench_pid" 2>/dev/null; then
  echo "the benchmark was still running during the whole capture" >&2
  # SIGTERM: a script's background jobs start with SIGINT ignored.
  kill "$bench_pid" 2>/dev/null || true
  wait "$bench_pid" 2>/dev/null || true
  bench_pid=
else
  echo "warning: the benchmark ended before the capture did; later epochs saw an idle server" >&2
fi
grep progress "$TRACES/pgbench.txt" >&2 || true

verify_replay "$TRACE"
