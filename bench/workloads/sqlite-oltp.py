"""OLTP on SQLite through Python's sqlite3 module: the workload of
bench/capture-sqlite.sh.

A bank of accounts (an indexed table) and a history table, in WAL mode with
a page cache of CACHE_MIB. First it loads ROWS accounts and reads them back
(so the database is in the page cache, on the heap), then writes READY_FILE
and runs short transactions until SECONDS have passed: per transaction a few
balance updates by primary key (each also moves the account in the `updated`
index), a history insert per update, a point read through the owner index,
and now and then a delete of the oldest history rows. All of it is seeded,
so two runs do the same work. With --tps, transactions start on a fixed
schedule of TPS a second (late ones start at once, as pgbench -R does), so
the work per second does not depend on how much CPU the process gets; 0 runs
them back to back. Stops after SECONDS or on SIGTERM, and prints how many
transactions it ran.

  python3 sqlite-oltp.py DB_PATH READY_FILE [--cache-mib 96] [--rows 400000] [--tps 0] [--seconds 60]
"""
import argparse
import os
import random
import signal
import sqlite3
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("ready_file")
    ap.add_argument("--cache-mib", type=int, default=96)
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--tps", type=float, default=0.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(args.db + suffix)
        except FileNotFoundError:
            pass
    # isolation_level=None: transactions are the explicit BEGIN/COMMIT below.
    db = sqlite3.connect(args.db, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA cache_size=-{args.cache_mib * 1024}")  # negative: KiB
    db.execute(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL,"
        " balance INTEGER NOT NULL, updated INTEGER NOT NULL, note TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE history (id INTEGER PRIMARY KEY, account INTEGER NOT NULL,"
        " delta INTEGER NOT NULL, at INTEGER NOT NULL, memo TEXT NOT NULL)"
    )

    def owner(i: int) -> str:
        return f"owner-{(i * 2654435761) % 1_000_003:07d}"

    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO accounts VALUES (?, ?, ?, ?, ?)",
        (
            (i, owner(i), rng.randrange(1_000_000), 0, "n" * rng.randrange(40, 120))
            for i in range(args.rows)
        ),
    )
    db.execute("COMMIT")
    db.execute("CREATE INDEX accounts_owner ON accounts(owner)")
    db.execute("CREATE INDEX accounts_updated ON accounts(updated)")
    db.execute("CREATE INDEX history_account ON history(account)")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    # Read everything back, indexes too: the page cache ends up full.
    db.execute("SELECT count(*), sum(balance) FROM accounts").fetchone()
    db.execute("SELECT count(*) FROM accounts INDEXED BY accounts_owner WHERE owner > ''").fetchone()
    db.execute("SELECT count(*) FROM accounts INDEXED BY accounts_updated WHERE updated >= 0").fetchone()

    with open(args.ready_file + ".tmp", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.rename(args.ready_file + ".tmp", args.ready_file)

    # SIGTERM (the capture script stopping the workload) ends the loop after the running transaction.
    stop = []
    signal.signal(signal.SIGTERM, lambda _signo, _frame: stop.append(True))
    started = time.monotonic()
    deadline = started + args.seconds
    txns = 0
    clock = 1
    while time.monotonic() < deadline and not stop:
        if args.tps > 0:
            wait = started + txns / args.tps - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        db.execute("BEGIN")
        for _ in range(rng.randrange(2, 6)):
            account = rng.randrange(args.rows)
            delta = rng.randrange(-5000, 5000)
            clock += 1
            db.execute(
                "UPDATE accounts SET balance = balance + ?, updated = ? WHERE id = ?",
                (delta, clock, account),
            )
            db.execute(
                "INSERT INTO history (account, delta, at, memo) VALUES (?, ?, ?, ?)",
                (account, delta, clock, f"transfer {account} {delta:+d} at {clock}"),
            )
        db.execute(
            "SELECT id, balance FROM accounts WHERE owner = ?", (owner(rng.randrange(args.rows)),)
        ).fetchall()
        if txns % 500 == 499:
            db.execute("DELETE FROM history WHERE id IN (SELECT id FROM history ORDER BY id LIMIT 1000)")
        db.execute("COMMIT")
        txns += 1
    db.close()
    seconds = time.monotonic() - started
    print(f"{txns} transactions in {seconds:.1f} s ({txns / seconds:.0f}/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
