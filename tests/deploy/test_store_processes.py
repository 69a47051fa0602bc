"""The SQLite gallery under real processes: concurrent writers, killed writers, refused writes, metadata size."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vreid.deploy.store import Sighting, create_gallery, open_gallery
from vreid.errors import VreidError

SRC = str(Path(__file__).resolve().parents[2] / "src")
DIM = 32
# a writer: adds one image per transaction until killed or out of time, printing each id once its add returned
WRITER = """
import sys, time, numpy as np
from vreid.deploy.store import Sighting, open_gallery
uri, name, seconds, DIM = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(sum(map(ord, name)))
gallery = open_gallery(uri)
deadline, i = time.time() + seconds, 0
while time.time() < deadline:
    [id_] = gallery.add(rng.normal(size=(1, DIM)).astype(np.float32), [Sighting(f"{name}/{i}.jpg", name)])
    print(id_, f"{name}/{i}.jpg", flush=True)
    i += 1
"""


def _writer(uri: str, name: str, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", WRITER, uri, name, str(seconds), str(DIM)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _acknowledged(out: str) -> dict[int, str]:
    return {int(line.split()[0]): line.split()[1] for line in out.splitlines() if len(line.split()) == 2}


def _check(uri: str, path: Path, acked: dict[int, str]) -> None:
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with open_gallery(uri) as gallery:
        stored = gallery.get(sorted(acked))
        assert {i: s.path for i, s in stored.items()} == acked  # every acknowledged add is there, as written
        assert gallery.refresh() == gallery.count()  # memory loaded from the database agrees with it


def _two_writers(tmp_path: Path, seconds: float) -> None:
    uri = f"sqlite://{tmp_path}/g.db"
    create_gallery(uri, DIM, engine="numpy").close()
    writers = [_writer(uri, name, seconds) for name in ("a", "b")]
    outs = [w.communicate(timeout=seconds + 120) for w in writers]
    for w, (_, err) in zip(writers, outs, strict=True):
        assert w.returncode == 0, err
    acked = [_acknowledged(out) for out, _ in outs]
    assert len(acked[0]) > 3 and len(acked[1]) > 3 and not set(acked[0]) & set(acked[1])
    _check(uri, tmp_path / "g.db", {**acked[0], **acked[1]})
    with open_gallery(uri) as gallery:
        assert gallery.count() == len(acked[0]) + len(acked[1])


def test_two_writers_for_two_seconds(tmp_path):
    _two_writers(tmp_path, 2.0)


@pytest.mark.slow
def test_two_writers_for_ten_seconds(tmp_path):
    _two_writers(tmp_path, 10.0)


def test_killed_writers_lose_no_acknowledged_add(tmp_path):
    uri = f"sqlite://{tmp_path}/g.db"
    create_gallery(uri, DIM, engine="numpy").close()
    reader = open_gallery(uri)  # a long-running reader (as `vreid serve`), kept open across the kills
    acked: dict[int, str] = {}
    rng = np.random.default_rng(0)
    for round_ in range(5):
        writer = _writer(uri, f"w{round_}", 120.0)
        first = writer.stdout.readline()  # it is adding (however long the interpreter took to start) ...
        assert first, writer.stderr.read()
        time.sleep(rng.uniform(0.05, 0.5))  # ... and is killed in the middle of later adds
        writer.send_signal(signal.SIGKILL)
        out, _ = writer.communicate(timeout=30)
        assert writer.returncode == -signal.SIGKILL
        acked.update(_acknowledged(first + out))
    _check(uri, tmp_path / "g.db", acked)
    with open_gallery(uri) as gallery:
        count = gallery.count()
    assert count >= len(acked)  # at most the one add in flight at each kill is there unacknowledged
    assert reader.refresh() == count  # the reader catches up from the change log, without reopening
    reader.close()


@pytest.mark.parametrize("failure", ["disk full", "read-only"])
def test_refused_write_leaves_memory_and_disk_in_agreement(tmp_path, failure):
    uri = f"sqlite://{tmp_path}/g.db"
    feats = np.random.default_rng(0).normal(size=(30, DIM)).astype(np.float32)
    with create_gallery(uri, DIM, engine="numpy") as gallery:
        gallery.add(feats[:20], [Sighting(f"{i}.jpg") for i in range(20)])
    gallery = open_gallery(uri)
    assert gallery.refresh() == 20
    # the operating system refusing writes, as SQLite sees it: no page may be added / no write allowed
    pages = gallery._db.execute("PRAGMA page_count").fetchone()[0]
    gallery._db.execute(f"PRAGMA max_page_count = {pages}" if failure == "disk full" else "PRAGMA query_only = 1")
    big = [Sighting(f"new{i}.jpg", "v" * 20_000) for i in range(10)]
    with pytest.raises(VreidError, match="refused the change.*nothing was changed"):
        gallery.add(feats[20:], big)
    if failure == "read-only":  # (a removal frees space, so a full disk may well accept it)
        with pytest.raises(VreidError, match="refused the change"):
            gallery.remove([1])
    # memory (what searches see) and disk (a fresh connection) both hold the 20 old rows, nothing else
    assert gallery.refresh() == 20 and gallery.count() == 20
    assert {h.path for h in gallery.search(feats[20:21], 30)[0]} == {f"{i}.jpg" for i in range(20)}
    with open_gallery(uri) as other:
        assert other.count() == 20 and other.ids_of_paths(["new0.jpg"]) == {}
    # once the disk accepts writes again, a retry stores the rows
    gallery._db.execute("PRAGMA max_page_count = 1073741823" if failure == "disk full" else "PRAGMA query_only = 0")
    ids = gallery.add(feats[20:], big)
    assert gallery.refresh() == 30 and gallery.search(feats[25:26], 1)[0][0].id == ids[5]
    gallery.close()


def test_metadata_costs_its_own_length(tmp_path):
    """One huge value grows the file by about its own size; the rows after it cost what rows before it did."""
    path = tmp_path / "g.db"
    feats = np.random.default_rng(0).normal(size=(2001, DIM)).astype(np.float32)

    def size() -> int:
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return path.stat().st_size

    with create_gallery(f"sqlite://{path}", DIM, engine="numpy") as gallery:
        gallery.add(feats[:1000], [Sighting(f"{i}.jpg", str(i)) for i in range(1000)])
        before = size()
        gallery.add(feats[1000:1001], [Sighting("huge.jpg", "v" * 5_000_000)])
        huge = size() - before
        gallery.add(feats[1001:], [Sighting(f"{i}.jpg", str(i)) for i in range(1001, 2001)])
        after = size() - before - huge
        assert 0.98 * 5_000_000 <= huge <= 1.05 * 5_000_000  # (free space in the last pages takes the start)
        assert after <= 1.2 * before  # 1000 rows after it cost about what the first 1000 did
        assert gallery.refresh() == 2001 and gallery.get([1001])[1001].vehicle_id == "v" * 5_000_000
