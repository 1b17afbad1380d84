#!/usr/bin/env python3
"""How many WAL frames (pages) SQLite writes per commit of ingested events, by batch size.

Builds Ferry's `events` table and its indexes from `src/store/schema.rs` in a scratch
database, fills it with 3,000 events like the bench's (1 KiB payloads, ULID-like ids), then
commits batches of 1 to 60 events and reads back from the WAL which pages each commit wrote.
The fixed pages of a commit (page 1, interior pages, the index leaf, the last partial leaf)
are what makes small batches dear in bytes (docs/PERFORMANCE.md). With
`--without-id-index`, the `id` column is not UNIQUE: what an integer key derived from the
event id would save. `--page-size N` builds the database with pages of N bytes (default 4096,
SQLite's default).

    scripts/wal-frames-per-commit.py [--without-id-index] [--page-size N]
"""
import argparse
import os
import random
import re
import sqlite3
import struct
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def events_schema():
    """The `events` table and the indexes on it, as schema.rs creates them."""
    with open(os.path.join(ROOT, "src", "store", "schema.rs")) as f:
        text = f.read()
    statements = re.findall(
        r"(CREATE (?:TABLE|UNIQUE INDEX|INDEX) IF NOT EXISTS events\w*\b.*?;)", text, re.S)
    if not statements:
        sys.exit("no `events` table found in src/store/schema.rs")
    return statements


def event_id():
    return "evt_%012x%020x" % (int(time.time() * 1000), random.getrandbits(80))


def insert(db, n):
    for _ in range(n):
        db.execute(
            "INSERT INTO events (id, source, event_type, idempotency_key, received_at, headers, payload)"
            " VALUES (?, 'bench', 'order.created', NULL, ?, '{\"content-type\":\"application/json\"}', ?)",
            (event_id(), int(time.time() * 1000), os.urandom(1024)))


def main():
    parser = argparse.ArgumentParser(
        description="WAL frames per commit of ingested events, by batch size.")
    parser.add_argument("--without-id-index", action="store_true",
                        help="build the `id` column without UNIQUE")
    parser.add_argument("--page-size", type=int, default=4096,
                        choices=[512 << k for k in range(8)], metavar="N",
                        help="SQLite page size in bytes, a power of two from 512 to 65536 (default 4096)")
    args = parser.parse_args()
    page = args.page_size
    frame = page + 24
    work = tempfile.mkdtemp()
    path = os.path.join(work, "events.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA page_size = %d" % page)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA wal_autocheckpoint = 0")
    for statement in events_schema():
        if args.without_id_index:
            statement = statement.replace("id TEXT NOT NULL UNIQUE", "id TEXT NOT NULL")
        db.execute(statement)
    db.execute("BEGIN")
    insert(db, 3000)
    db.execute("COMMIT")
    commits = 50
    print("events per commit | WAL frames per commit | WAL KiB per event | commits that wrote page 1")
    for batch in (1, 5, 10, 15, 30, 60):
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for _ in range(commits):
            db.execute("BEGIN")
            insert(db, batch)
            db.execute("COMMIT")
        with open(path + "-wal", "rb") as f:
            frames = f.read()[32:]
        pages = [struct.unpack(">I", frames[k * frame:k * frame + 4])[0]
                 for k in range(len(frames) // frame)]
        per_commit = len(pages) / commits
        print("%17d | %21.1f | %17.2f | %.0f%%" % (
            batch, per_commit, per_commit * frame / batch / 1024, 100 * pages.count(1) / commits))


if __name__ == "__main__":
    main()
