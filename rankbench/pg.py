"""The private PostgreSQL cluster: `python -m rankbench.pg {up,down,status,url}`.

The cluster lives in .bench/pg, listens on 127.0.0.1:55432 and on a unix socket in .bench/sock,
and trusts the `bench` user on loopback only. PostgreSQL refuses to run as root, so when we are
root the cluster runs as the unprivileged system user `rankbench-pg` (created on first use), which
owns the data directory. Settings are those of a throwaway benchmark cluster: fsync, synchronous
commit and full-page writes are off (a crash may lose the data; `make seed` rebuilds it), and
shared_buffers holds both tables so that a benchmark measures a warm cache, not the disk.
"""
from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rankbench.config import BENCH_DIR, PG_DATABASE, PG_DIR, PG_PORT, PG_USER

SERVICE_USER = "rankbench-pg"

# Appended to postgresql.conf by `up` on a fresh cluster. Each line says why.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",          # loopback only
    "max_connections": "300",                   # pgbench and fault tests open many connections
    "shared_buffers": "'512MB'",                # holds users+items (about 60 MB at SCALE=1) with room
    "effective_cache_size": "'2GB'",
    "work_mem": "'16MB'",
    "fsync": "off",                             # throwaway cluster: durability is not measured
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "'2GB'",
    "checkpoint_timeout": "'30min'",
    "autovacuum": "on",                         # tables are read-only after seeding anyway
    "jit": "off",                               # JIT compile time would only add noise to tiny queries
    "logging_collector": "off",
    "log_min_messages": "warning",
    "log_min_error_statement": "error",
}


class ClusterError(RuntimeError):
    pass


@dataclass(frozen=True)
class Cluster:
    data_dir: Path = PG_DIR
    port: int = PG_PORT
    socket_dir: Path = BENCH_DIR / "sock"
    log_file: Path = BENCH_DIR / "pg.log"

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{PG_DATABASE}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "postmaster.pid"


def pg_bindir() -> Path:
    """Where initdb/pg_ctl live: `pg_config --bindir` if it has them, else /usr/lib/postgresql/*/bin."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                      reverse=True)
    candidates += [Path(p) for p in versions]
    for directory in candidates:
        if (directory / "pg_ctl").exists() and (directory / "initdb").exists():
            return directory
    raise ClusterError("PostgreSQL server binaries (initdb, pg_ctl) not found: "
                       "install postgresql (Debian: apt-get install -y postgresql) or run `make setup`")


def _service_account() -> pwd.struct_passwd | None:
    """The account that runs postgres: None means 'ourselves' (we are not root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        SERVICE_USER], check=True, capture_output=True)
        return pwd.getpwnam(SERVICE_USER)


def _run(argv: list[str], account: pwd.struct_passwd | None, check: bool = True,
         timeout: float = 120) -> subprocess.CompletedProcess:
    kwargs: dict = {"capture_output": True, "text": True, "timeout": timeout}
    if account is not None:
        kwargs.update(user=account.pw_uid, group=account.pw_gid, extra_groups=[],
                      env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp",
                           "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}, cwd="/")
    result = subprocess.run(argv, **kwargs)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ClusterError(f"{Path(argv[0]).name} failed: {detail[-1] if detail else result.returncode}")
    return result


def _own(path: Path, account: pwd.struct_passwd | None, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)
    os.chmod(path, mode)


def _check_traversable(path: Path, account: pwd.struct_passwd | None) -> None:
    """The service user must reach the data dir: every parent needs o+x when we are root."""
    if account is None:
        return
    for parent in path.resolve().parents:
        st = parent.stat()
        if st.st_uid != account.pw_uid and not st.st_mode & 0o001:
            raise ClusterError(f"{parent} is not searchable by user {SERVICE_USER}: "
                               f"chmod o+x {parent} or put the project elsewhere")


def running_pid(cluster: Cluster) -> int | None:
    """PID of our postmaster if it runs, else None. A pid file whose process is gone, or is not a
    postgres serving this data directory, is stale and is removed so that a restart is not blocked."""
    try:
        first_lines = cluster.pid_file.read_text().splitlines()
        pid = int(first_lines[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    try:
        import psutil
        proc = psutil.Process(pid)
        alive = proc.name().startswith(("postgres", "postmaster")) and proc.status() != psutil.STATUS_ZOMBIE
        if alive:
            # The postmaster's -D argument or cwd identifies the cluster.
            alive = str(cluster.data_dir.resolve()) in " ".join(proc.cmdline()) or \
                proc.cwd() == str(cluster.data_dir.resolve())
    except Exception:  # NoSuchProcess, AccessDenied on a reused pid: not ours
        alive = False
    if not alive:
        cluster.pid_file.unlink(missing_ok=True)
        return None
    return pid


def _ready(cluster: Cluster, bindir: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = subprocess.run([str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1",
                                "-p", str(cluster.port), "-U", PG_USER, "-d", PG_DATABASE],
                               capture_output=True)
        if probe.returncode == 0:
            return
        time.sleep(0.1)
    raise ClusterError(f"cluster did not accept connections within {timeout:.0f} s; "
                       f"see {cluster.log_file}")


def up(cluster: Cluster = Cluster(), quiet: bool = False) -> str:
    """Start the cluster (initialising it on first use). Idempotent. Returns its URL."""
    say = (lambda *_: None) if quiet else (lambda msg: print(msg, flush=True))
    bindir = pg_bindir()
    account = _service_account()
    if running_pid(cluster):
        _ready(cluster, bindir)
        say(f"cluster already running: {cluster.url}")
        return cluster.url
    _own(cluster.data_dir.parent, None, 0o755)
    _check_traversable(cluster.data_dir.parent, account)
    if not (cluster.data_dir / "PG_VERSION").exists():
        if cluster.data_dir.exists():
            shutil.rmtree(cluster.data_dir)  # a half-made directory from an interrupted initdb
        _own(cluster.data_dir, account, 0o700)
        _run([str(bindir / "initdb"), "-D", str(cluster.data_dir), "-U", PG_USER,
              "--auth-local=trust", "--auth-host=trust", "-E", "UTF8", "--locale=C",
              "--no-sync"], account)
        with open(cluster.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# rankbench: settings for a throwaway benchmark cluster (see rankbench/pg.py)\n")
            conf.write(f"port = {cluster.port}\n")
            conf.write(f"unix_socket_directories = '{cluster.socket_dir.resolve()}'\n")
            for key, value in SETTINGS.items():
                conf.write(f"{key} = {value}\n")
        # Trust on loopback only: no other host line.
        (cluster.data_dir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
            "host all all ::1/128 trust\n")
        created = True
    else:
        created = False
    _own(cluster.socket_dir, account, 0o755)
    cluster.log_file.touch()
    if account is not None:
        os.chown(cluster.log_file, account.pw_uid, account.pw_gid)
    _run([str(bindir / "pg_ctl"), "-D", str(cluster.data_dir), "-l", str(cluster.log_file),
          "-w", "-t", "60", "start"], account)
    _ready(cluster, bindir)
    if created:
        _run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", PG_USER,
              PG_DATABASE], None)
    say(f"cluster started: {cluster.url}")
    return cluster.url


def down(cluster: Cluster = Cluster(), quiet: bool = False) -> None:
    """Stop the cluster (fast shutdown) and wait until no process of it is left."""
    say = (lambda *_: None) if quiet else (lambda msg: print(msg, flush=True))
    pid = running_pid(cluster)
    if pid is None:
        say("cluster not running")
        return
    bindir = pg_bindir()
    account = _service_account()
    _run([str(bindir / "pg_ctl"), "-D", str(cluster.data_dir), "-m", "fast", "-w", "-t", "60",
          "stop"], account, check=False)
    import psutil
    try:
        psutil.Process(pid).wait(timeout=30)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        raise ClusterError(f"postmaster {pid} did not stop within 30 s") from None
    say("cluster stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rankbench.pg",
                                     description="Manage rankbench's private PostgreSQL cluster.")
    parser.add_argument("action", choices=["up", "down", "status", "url"])
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            up()
        elif args.action == "down":
            down()
        elif args.action == "status":
            pid = running_pid(Cluster())
            print(f"running (pid {pid})" if pid else "not running")
            return 0 if pid else 3
        else:
            print(Cluster().url)
    except (ClusterError, subprocess.TimeoutExpired, OSError, subprocess.CalledProcessError) as exc:
        print(f"rankbench.pg {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
