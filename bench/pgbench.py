"""The database ceiling: pgbench running the servers' exact transaction.

Per transaction, on one connection with prepared statements, the two statements of the contract:

    SELECT features FROM users WHERE id = $1            -- a uniformly random user
    SELECT id, features FROM items WHERE id = ANY($1)   -- N distinct random item ids, one array

pgbench variables set by `\\set` are numbers only, so the bigint[] parameter cannot be drawn per
transaction. Instead `POOL` arrays of N distinct random ids are passed with `-D items_k='{...}'` and
each transaction picks one uniformly (a binary tree of `\\if` on a random index: log2(POOL) cheap
meta-commands), while the user id is drawn per transaction. In prepared mode pgbench turns `:var` into
`$1`, so the server receives the same statement text with one array parameter; each branch is its own
prepared statement, which is why warm-up and measurement run in ONE pgbench invocation on the same
connections (plans cached, like a server's pool), and the warm-up transactions are dropped from the
per-transaction log by their completion time.

Known difference from the servers: pgbench asks for results in text format (float4 -> text on the
server for every feature), asyncpg and tokio-postgres in binary. The ceiling therefore includes some
output-formatting work that the servers do not cause; it is a ceiling for this transaction as pgbench
runs it, recorded as such.
"""
from __future__ import annotations

import glob
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from rankbench import histogram
from rankbench.contract import ITEMS_SQL, USER_SQL  # noqa: F401  (the statements pgbench must send)
ARRAY_POOL = 64


class PgbenchError(RuntimeError):
    pass


def _tree(lo: int, hi: int, out: list[str]) -> None:
    if lo == hi:
        out.append(f"SELECT id, features FROM items WHERE id = ANY(:items_{lo});")
        return
    mid = (lo + hi) // 2
    out.append(f"\\if :pick <= {mid}")
    _tree(lo, mid, out)
    out.append("\\else")
    _tree(mid + 1, hi, out)
    out.append("\\endif")


def script_text(pool: int) -> str:
    lines = ["-- rankbench db-ceiling: the servers' transaction (see bench/pgbench.py)",
             "\\set user_id random(:user_min, :user_max)",
             f"\\set pick random(0, {pool - 1})",
             "SELECT features FROM users WHERE id = :user_id;"]
    _tree(0, pool - 1, lines)
    return "\n".join(lines) + "\n"


def statements_as_prepared(script: str) -> set[str]:
    """The SQL texts the server sees: `:name` replaced by $1 (each statement has one variable)."""
    out = set()
    for line in script.splitlines():
        if line.startswith("SELECT"):
            out.add(normalise_sql(re.sub(r":[a-z_0-9]+", "$1", line)))
    return out


def normalise_sql(sql: str) -> str:
    return " ".join(sql.split()).rstrip(";").strip()


def item_arrays(items: int, pool: int, item_min: int, item_max: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    span = item_max - item_min + 1
    arrays = []
    for _ in range(pool):
        ids = rng.choice(span, size=items, replace=False) + item_min
        arrays.append("{" + ",".join(str(int(i)) for i in ids) + "}")
    return arrays


def command(dsn: str, script: Path, *, clients: int, seconds: int, log_prefix: Path,
            arrays: list[str], user_min: int, user_max: int, seed: int) -> list[str]:
    pgbench = shutil.which("pgbench") or "pgbench"
    argv = [pgbench, "-n", "-M", "prepared", "-f", str(script), "-c", str(clients), "-j", "1",
            "-T", str(seconds), "--log", f"--log-prefix={log_prefix}", f"--random-seed={seed}",
            "-D", f"user_min={user_min}", "-D", f"user_max={user_max}"]
    for k, array in enumerate(arrays):
        argv += ["-D", f"items_{k}={array}"]
    argv.append(dsn)
    return argv


def version() -> str:
    out = subprocess.run([shutil.which("pgbench") or "pgbench", "--version"], capture_output=True,
                         text=True)
    return out.stdout.strip() or "unknown"


def read_logs(log_prefix: Path) -> list[tuple[float, int]]:
    """(completion time as epoch seconds, latency us) of every transaction in pgbench's logs."""
    rows = []
    for path in sorted(glob.glob(f"{log_prefix}.*")):
        with open(path) as handle:
            for line in handle:
                parts = line.split()
                if len(parts) < 6:
                    continue
                # client_id transaction_no time script_no time_epoch time_us [schedule_lag ...]
                if not parts[2].isdigit():
                    raise PgbenchError(f"pgbench logged a failed transaction: {line.strip()}")
                rows.append((int(parts[4]) + int(parts[5]) / 1e6, int(parts[2])))
    return rows


def window(rows: list[tuple[float, int]], start: float, end: float) -> histogram.Pairs:
    """Histogram of the latencies of transactions that completed in [start, end)."""
    return histogram.from_values(lat for t, lat in rows if start <= t < end)


def parse_stdout(text: str) -> dict:
    out = {}
    match = re.search(r"number of failed transactions: (\d+)", text)
    out["failed"] = int(match.group(1)) if match else 0
    match = re.search(r"number of transactions actually processed: (\d+)", text)
    out["processed"] = int(match.group(1)) if match else None
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", text)
    out["tps_total"] = float(match.group(1)) if match else None
    return out
