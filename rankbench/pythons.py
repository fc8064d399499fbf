"""Other CPython versions for the Python servers: `make pythons PYTHONS=3.12,3.13` (issue 18).

Each version other than the project's own (.venv's, whose servers are the registry's base entries)
gets its own virtual environment, `.venvs/py<major>.<minor>/`, holding only what the Python servers
import, with the same lower bounds as pyproject.toml (torch only with PYTHON_TORCH=1), the work tree
on its path, and py-candle's extension built for that interpreter (candle_server/pyext/install.sh).
Beside it: `pip-freeze.txt` (what pip resolved) and `rankbench-python.json`, written last, which
rankbench.servers reads to register `<server>@<major>.<minor>` (e.g. `py-onnx@3.13`).

A version is found under pyenv (`pyenv root`/versions/<major>.<minor>.<patch>, the highest patch),
else as `python<major>.<minor>` on PATH. One that is not installed is reported in one line and
skipped. This module is imported by every server process (through rankbench.servers): the part
that reads environments uses the standard library only and starts no process.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rankbench.config import ROOT

ENVS_DIR = ROOT / ".venvs"
MANIFEST = "rankbench-python.json"
FREEZE = "pip-freeze.txt"
# What py_servers imports (the HTTP core, the database path, the stats, the onnx and candle
# backends, rankbench.reference's safetensors reader) and the measuring side's psutil.
SERVER_PACKAGES = ("uvloop", "httptools", "asyncpg", "orjson", "numpy", "onnxruntime",
                   "safetensors", "psutil")
TORCH = "torch"
# The packages a variant's registry notes name, beside its runtime's (results say what ran).
STACK_PACKAGES = ("uvloop", "httptools", "asyncpg", "orjson", "numpy")
_VERSION = re.compile(r"(?:python)?(3)\.(\d+)(?:\.(\d+))?")
_PYENV_VERSION = re.compile(r"3\.(\d+)\.(\d+)")       # plain CPython releases: no 3.13.0t, -dev, rc


class PythonsError(RuntimeError):
    """An expected failure: the message is the one line the command line prints."""


# -- reading: what rankbench.servers registers ---------------------------------------------------
@dataclass(frozen=True)
class PythonEnv:
    """One installed environment, as its manifest describes it."""
    major: int
    minor: int
    version: str                 # the interpreter's full version, e.g. "3.13.0"
    python: Path                 # the environment's python (the servers' command)
    packages: dict[str, str]     # pip freeze, name (lower case) -> version

    @property
    def tag(self) -> str:        # "3.13": the suffix of the variants' names
        return f"{self.major}.{self.minor}"

    @property
    def interpreter(self) -> str:  # the registry's interpreter facet
        return f"cpython-{self.tag}"

    @property
    def directory(self) -> Path:
        return self.python.parent.parent

    @property
    def make(self) -> str:
        return f"make pythons PYTHONS={self.tag}"

    def version_of(self, package: str) -> str | None:
        return self.packages.get(_normalise(package))

    def has(self, package: str) -> bool:
        return self.version_of(package) is not None


def environments(envs_dir: Path | None = None) -> list[PythonEnv]:
    """The environments `make pythons` completed (in ENVS_DIR by default), by version. A manifest
    that does not read is left out: it is written last, atomically, so that means a hand-edited or
    foreign file."""
    envs_dir = ENVS_DIR if envs_dir is None else envs_dir
    found = []
    for manifest in sorted(envs_dir.glob(f"py3.*/{MANIFEST}")):
        try:
            data = json.loads(manifest.read_text())
            env = PythonEnv(int(data["major"]), int(data["minor"]), str(data["version"]),
                            manifest.parent / "bin" / "python",
                            {_normalise(k): str(v) for k, v in data["packages"].items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if manifest.parent.name == f"py{env.tag}":
            found.append(env)
    return sorted(found, key=lambda e: (e.major, e.minor))


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- finding interpreters ------------------------------------------------------------------------
def parse_versions(raw: str) -> list[tuple[int, int]]:
    """"3.12, 3.13" -> [(3, 12), (3, 13)]; a patch ("3.13.0") or a "python" prefix is accepted and
    only major.minor kept (one environment per minor version)."""
    versions = []
    for part in raw.replace(",", " ").split():
        match = _VERSION.fullmatch(part.strip())
        if match is None:
            raise PythonsError(f"PYTHONS: {part!r} is not a CPython version such as 3.13")
        versions.append((int(match[1]), int(match[2])))
    return list(dict.fromkeys(versions))


@dataclass(frozen=True)
class Interpreter:
    path: Path
    version: tuple[int, int, int]

    @property
    def text(self) -> str:
        return ".".join(map(str, self.version))


def pyenv_root() -> Path | None:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    if shutil.which("pyenv"):
        out = subprocess.run(["pyenv", "root"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def candidates(version: tuple[int, int], pyenv: Path | None, path: str | None) -> list[Path]:
    """Where `version` may be, best first: pyenv's releases of it (highest patch first), then
    python<major>.<minor> on PATH (pyenv's shims left out: they run whatever pyenv selects)."""
    found = []
    if pyenv is not None and (pyenv / "versions").is_dir():
        releases = []
        for entry in (pyenv / "versions").iterdir():
            match = _PYENV_VERSION.fullmatch(entry.name)
            if match and int(match[1]) == version[1] and version[0] == 3:
                releases.append((int(match[2]), entry / "bin" / f"python{version[0]}.{version[1]}"))
        found += [exe for _, exe in sorted(releases, reverse=True)]
    search = path if path is not None else os.environ.get("PATH", "")
    shims = str(pyenv / "shims") if pyenv is not None else None
    search = os.pathsep.join(d for d in search.split(os.pathsep) if d and d != shims)
    on_path = shutil.which(f"python{version[0]}.{version[1]}", path=search)
    if on_path:
        found.append(Path(on_path))
    return found


def probe(python: Path) -> tuple[str, tuple[int, int, int]] | None:
    """(implementation, version) as the interpreter reports them; None when it does not run."""
    code = "import platform,sys; print(platform.python_implementation(), *sys.version_info[:3])"
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = out.stdout.split()
    if out.returncode != 0 or len(parts) != 4:
        return None
    return parts[0], (int(parts[1]), int(parts[2]), int(parts[3]))


def find(version: tuple[int, int], pyenv: Path | None = None, path: str | None = None,
         probe=probe) -> Interpreter | None:
    """The CPython interpreter of `version`, or None when none is installed."""
    for exe in candidates(version, pyenv, path):
        reported = probe(exe)
        if reported is not None and reported[0] == "CPython" and reported[1][:2] == version:
            return Interpreter(exe, reported[1])
    return None


# -- installing ----------------------------------------------------------------------------------
def requirements(torch: bool, pyproject: Path = ROOT / "pyproject.toml",
                 pinned: bool = True) -> list[str]:
    """The packages a server imports: pinned to the versions the project's own environment runs
    (so that the interpreter is the only thing that differs between py-onnx and py-onnx@3.13;
    numpy, on the pre and post path, would otherwise resolve to another release), else
    pyproject.toml's requirement strings (its lower bounds)."""
    import importlib.metadata
    import tomllib

    declared = {}
    for spec in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        name = re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]
        declared[_normalise(name)] = spec
    wanted = SERVER_PACKAGES + ((TORCH,) if torch else ())
    missing = [name for name in wanted if name not in declared]
    if missing:
        raise PythonsError(f"pyproject.toml declares no {', '.join(missing)}")
    out = []
    for name in wanted:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}" if pinned else declared[name])
        except importlib.metadata.PackageNotFoundError:
            out.append(declared[name])
    return out


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _run_logged(argv: list[str], log: Path, what: str) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL).returncode
    if code != 0:
        lines = log.read_text(errors="replace").splitlines()
        errors = [line.strip() for line in lines if line.strip().startswith("ERROR")]
        last = errors[-1] if errors else (lines[-1].strip() if lines else "no output")
        raise PythonsError(f"{what} failed: {last} (full log: {relative(log)})")


def install(interpreter: Interpreter, torch: bool, envs_dir: Path = ENVS_DIR,
            say=print) -> PythonEnv:
    """Create or update the environment of `interpreter` (pip runs only when the requirements or
    the interpreter changed); its manifest is written last. A failed build of py-candle's extension
    still writes the manifest (py-candle@<version> then lacks its module, the registry says so)
    and raises."""
    tag = f"{interpreter.version[0]}.{interpreter.version[1]}"
    env_dir = envs_dir / f"py{tag}"
    python = env_dir / "bin" / "python"
    envs_dir.mkdir(exist_ok=True)
    (envs_dir / ".gitignore").write_text("# made by `make pythons` (rankbench/pythons.py)\n*\n")
    reported = probe(python) if python.exists() else None
    if reported is None or reported[1] != interpreter.version:
        # New, broken, or made by another patch release (pyenv upgraded): start again.
        say(f"pythons: {tag}: creating {relative(env_dir)} with {interpreter.path}")
        subprocess.run([str(interpreter.path), "-m", "venv", "--clear", str(env_dir)], check=True,
                       capture_output=True)
    wanted = requirements(torch)
    stamp = env_dir / ".rankbench-installed"
    want = json.dumps([interpreter.text, str(interpreter.path), wanted])
    if not stamp.exists() or stamp.read_text() != want:
        (env_dir / MANIFEST).unlink(missing_ok=True)   # not registered until complete again
        say(f"pythons: {tag}: pip install {' '.join(wanted)}")
        log = env_dir / "pip-install.log"
        log.write_text("")
        _run_logged([str(python), "-m", "pip", "install", "--upgrade", "pip"], log, "pip upgrade")
        _run_logged([str(python), "-m", "pip", "install", *wanted], log, "pip install")
        # The servers import py_servers and rankbench from the work tree, as .venv's editable
        # install of the project lets them, whatever the working directory.
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                  "['purelib'])"], capture_output=True, text=True, check=True)
        Path(purelib.stdout.strip(), "rankbench-worktree.pth").write_text(f"{ROOT}\n")
        stamp.write_text(want)
    check = subprocess.run([str(python), "-c", "import py_servers.main, " + ", ".join(
                            SERVER_PACKAGES + ((TORCH,) if torch else ()))],
                           capture_output=True, text=True, cwd="/")
    if check.returncode != 0:
        stamp.unlink(missing_ok=True)
        last = (check.stderr.strip().splitlines() or ["no output"])[-1]
        raise PythonsError(f"the environment does not import what the servers need: {last}")
    build = subprocess.run(["bash", str(ROOT / "candle_server" / "pyext" / "install.sh"),
                            str(env_dir)], stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
    freeze = subprocess.run([str(python), "-m", "pip", "freeze", "--all"], capture_output=True,
                            text=True, check=True).stdout
    (env_dir / FREEZE).write_text(freeze)
    packages = dict(line.split("==", 1) for line in freeze.splitlines() if "==" in line)
    manifest = {"major": interpreter.version[0], "minor": interpreter.version[1],
                "version": interpreter.text, "base_interpreter": str(interpreter.path),
                "requirements": wanted, "packages": packages}
    tmp = env_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(env_dir / MANIFEST)
    if build.returncode != 0:
        last = (build.stderr.strip().splitlines() or ["no output"])[-1]
        raise PythonsError(f"py-candle's extension was not built ({last}); py-candle@{tag} stays "
                           f"registered without it")
    return next(e for e in environments(envs_dir) if e.tag == tag)


def main_install(versions: list[tuple[int, int]], torch: bool, own: tuple[int, int],
                 find=find, install=install, say=print) -> int:
    """One line per version: the project's own, not installed (skipped), ready, or failed."""
    pyenv = pyenv_root()
    failed = 0
    for version in versions:
        tag = f"{version[0]}.{version[1]}"
        if version == own:
            say(f"pythons: {tag}: the project's own interpreter (.venv): the registry's base "
                f"servers, nothing to install")
            continue
        if version < (3, 10):
            say(f"pythons: {tag}: below the project's requires-python >=3.10, skipped")
            continue
        interpreter = find(version, pyenv)
        if interpreter is None:
            say(f"pythons: {tag}: not installed (no pyenv version {tag}.x, no python{tag} on "
                f"PATH), skipped")
            continue
        try:
            env = install(interpreter, torch, say=say)
        except (PythonsError, subprocess.CalledProcessError, OSError) as exc:
            print(f"pythons: {tag}: {exc}", file=sys.stderr)
            failed += 1
            continue
        say(f"pythons: {tag}: ready, CPython {env.version} in {relative(env.directory)} "
            f"({'with' if env.has(TORCH) else 'without'} torch; versions in "
            f"{relative(env.directory / FREEZE)})")
    return 1 if failed else 0


def bench_servers(versions: list[tuple[int, int]] | None = None,
                  registry: dict | None = None) -> tuple[str, ...]:
    """`make bench-python`'s servers: the registry's python study on the project's interpreter,
    then their variants on every installed environment (only those of `versions` when given)."""
    from rankbench.servers import PYTHONS, SERVERS, _interpreter_facet

    registry = SERVERS if registry is None else registry
    members = [spec for spec in registry.values() if PYTHONS in spec.studies]
    own = _interpreter_facet()
    wanted = None if versions is None else {f"cpython-{major}.{minor}" for major, minor in versions}
    return tuple(spec.name for spec in members
                 if spec.interpreter == own or wanted is None or spec.interpreter in wanted)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m rankbench.pythons",
        description="environments of the Python servers on other CPython versions",
        epilog="VERSIONS default to PYTHONS= (comma or space separated), else the project's own.")
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="create or update .venvs/py<version> for each version")
    inst.add_argument("versions", nargs="*")
    inst.add_argument("--torch", action="store_true",
                      help="also install torch (default: PYTHON_TORCH=1)")
    serv = sub.add_parser("servers", help="print make bench-python's server list, comma-separated")
    serv.add_argument("versions", nargs="*")
    args = parser.parse_args(argv)
    own = sys.version_info[:2]
    raw = " ".join(args.versions) or os.environ.get("PYTHONS", "")
    try:
        versions = parse_versions(raw) if raw.strip() else None
        if args.command == "servers":
            from rankbench.servers import SERVERS
            print(",".join(n for n in bench_servers(versions) if n in SERVERS))
            return 0
        torch = args.torch or os.environ.get("PYTHON_TORCH", "").strip().lower() in ("1", "yes",
                                                                                       "true")
        return main_install(versions or [own], torch, own)
    except PythonsError as exc:
        print(f"pythons: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
