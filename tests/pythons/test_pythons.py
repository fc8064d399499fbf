"""Other CPython versions (issue 18): version resolution, the one-line skip of a missing
interpreter, pyproject's lower bounds, and the registry's `<server>@<version>` variants generated
from fake environments (no interpreter is installed and no server started here)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rankbench import pythons
from rankbench.config import ROOT
from rankbench.pythons import Interpreter, PythonEnv, PythonsError
from rankbench.servers import (PER_REQUEST, REGISTRY, SERVERS, interpreter_variants,
                               isolated_facet, pair_sentence)


# -- versions and interpreters ---------------------------------------------------------------------
def test_versions_are_read_as_major_minor_in_order_without_duplicates():
    assert pythons.parse_versions("3.13, 3.12 python3.13 3.12.1") == [(3, 13), (3, 12)]


@pytest.mark.parametrize("raw", ["3", "13", "2.7", "pypy3.10", "3.x", "latest"])
def test_a_version_that_is_not_cpython_major_minor_is_refused(raw):
    with pytest.raises(PythonsError, match="is not a CPython version"):
        pythons.parse_versions(raw)


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(0o755)
    return path


def _fake_pyenv(root: Path, *versions: str) -> Path:
    for version in versions:
        minor = ".".join(version.split(".")[:2]).rstrip("t")
        _executable(root / "versions" / version / "bin" / f"python{minor}")
    return root


def _probe_from_path(python: Path):
    """What the interpreter would report: the version in its pyenv folder, or its file name's."""
    parts = python.parent.parent.name.split(".") if "versions" in python.parts else None
    if parts is None:
        parts = python.name.removeprefix("python").split(".") + ["7"]
    return "CPython", tuple(int(p.rstrip("t")) for p in parts)


def test_pyenv_gives_the_highest_patch_release_and_skips_free_threaded_builds(tmp_path):
    root = _fake_pyenv(tmp_path / "pyenv", "3.13.0", "3.13.2", "3.13.10t", "3.12.9", "3.14.0rc1")
    found = pythons.find((3, 13), root, path="", probe=_probe_from_path)
    assert found == Interpreter(root / "versions/3.13.2/bin/python3.13", (3, 13, 2))
    assert pythons.find((3, 14), root, path="", probe=_probe_from_path) is None


def test_path_is_the_fallback_but_pyenv_shims_are_not_used(tmp_path):
    root = _fake_pyenv(tmp_path / "pyenv", "3.12.1")
    _executable(root / "shims" / "python3.13")
    bindir = tmp_path / "bin"
    assert pythons.find((3, 13), root, path=str(root / "shims"), probe=_probe_from_path) is None
    _executable(bindir / "python3.13")
    found = pythons.find((3, 13), root, path=f"{root / 'shims'}{os.pathsep}{bindir}",
                         probe=_probe_from_path)
    assert found == Interpreter(bindir / "python3.13", (3, 13, 7))


def test_an_interpreter_that_reports_another_version_or_implementation_is_not_taken(tmp_path):
    bindir = tmp_path / "bin"
    _executable(bindir / "python3.13")
    assert pythons.find((3, 13), None, path=str(bindir),
                        probe=lambda p: ("CPython", (3, 12, 1))) is None
    assert pythons.find((3, 13), None, path=str(bindir),
                        probe=lambda p: ("PyPy", (3, 13, 0))) is None
    assert pythons.find((3, 13), None, path=str(bindir), probe=lambda p: None) is None


def test_probe_reads_a_real_interpreter():
    assert pythons.probe(Path(sys.executable)) == ("CPython", tuple(sys.version_info[:3]))
    assert pythons.probe(Path("/nonexistent/python3.13")) is None


# -- make pythons: one line per version --------------------------------------------------------
def test_a_missing_interpreter_is_one_line_and_skipped(capsys):
    installed = []
    code = pythons.main_install([(3, 99), (3, 13)], torch=False, own=(3, 11),
                                find=lambda v, root: None if v == (3, 99) else
                                Interpreter(Path("/x/python3.13"), (3, 13, 0)),
                                install=lambda i, torch, say: installed.append(i) or
                                _env(13, tmp=Path("/x")))
    out, err = capsys.readouterr()
    skip = [line for line in out.splitlines() if line.startswith("pythons: 3.99")]
    assert skip == ["pythons: 3.99: not installed (no pyenv version 3.99.x, no python3.99 on "
                    "PATH), skipped"]
    assert code == 0 and err == "" and [i.version for i in installed] == [(3, 13, 0)]


def test_the_projects_own_and_too_old_versions_install_nothing(capsys):
    code = pythons.main_install([(3, 11), (3, 9)], torch=False, own=(3, 11),
                                find=lambda v, root: pytest.fail("looked for an interpreter"),
                                install=lambda *a, **k: pytest.fail("installed"))
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and len(out) == 2
    assert "the project's own interpreter (.venv)" in out[0]
    assert out[1] == "pythons: 3.9: below the project's requires-python >=3.10, skipped"


def test_a_failed_install_is_one_line_on_stderr_and_a_nonzero_exit(capsys):
    def failing(interpreter, torch, say):
        raise PythonsError("pip install failed: ERROR: no wheel (full log: x.log)")

    code = pythons.main_install([(3, 13)], torch=False, own=(3, 11),
                                find=lambda v, root: Interpreter(Path("/p"), (3, 13, 0)),
                                install=failing)
    err = capsys.readouterr().err
    assert code == 1
    assert err == "pythons: 3.13: pip install failed: ERROR: no wheel (full log: x.log)\n"


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rankbench.pythons", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_skips_an_interpreter_that_is_not_installed(tmp_path):
    env = {**os.environ, "PYENV_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"}
    env.pop("PYTHONS", None)
    done = _cli("install", "3.99", env=env)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == ("pythons: 3.99: not installed (no pyenv version 3.99.x, no python3.99 "
                           "on PATH), skipped\n")
    done = _cli("install", env={**env, "PYTHONS": "3.98"})
    assert done.returncode == 0 and done.stdout.startswith("pythons: 3.98: not installed")


def test_cli_refuses_a_bad_version_in_one_line(tmp_path):
    done = _cli("install", "three", env={**os.environ, "PYENV_ROOT": str(tmp_path)})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "pythons: PYTHONS: 'three' is not a CPython version such as 3.13\n"


# -- what gets installed -----------------------------------------------------------------------
def test_requirements_are_pyprojects_own_lower_bounds(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    declared = ["uvloop>=0.19", "httptools>=0.6", "asyncpg>=0.29", "orjson>=3.9", "numpy>=9.9",
                "torch>=2.2", "onnxruntime>=1.17", "safetensors>=0.4", "psutil>=5.9",
                "matplotlib>=3.8"]
    pyproject.write_text("[project]\ndependencies = [" + ", ".join(f'"{d}"' for d in declared)
                         + "]\n")
    without = pythons.requirements(False, pyproject, pinned=False)
    assert "numpy>=9.9" in without and not any(r.startswith(("torch", "matplotlib"))
                                                 for r in without)
    assert len(without) == len(pythons.SERVER_PACKAGES)
    assert pythons.requirements(True, pyproject, pinned=False) == without + ["torch>=2.2"]
    pyproject.write_text('[project]\ndependencies = ["numpy>=1.26"]\n')
    with pytest.raises(PythonsError, match="declares no uvloop"):
        pythons.requirements(False, pyproject)


def test_the_projects_pyproject_declares_every_server_package():
    assert len(pythons.requirements(True)) == len(pythons.SERVER_PACKAGES) + 1


def test_other_interpreters_get_the_project_environments_versions():
    """Only the interpreter may differ between py-onnx and py-onnx@3.13: each package is pinned to
    the version the project's own environment runs."""
    import importlib.metadata

    pinned = pythons.requirements(False)
    assert f"numpy=={importlib.metadata.version('numpy')}" in pinned
    assert all("==" in r for r in pinned), pinned


# -- environments and the registry -------------------------------------------------------------
PACKAGES = {"uvloop": "0.21.0", "httptools": "0.6.4", "asyncpg": "0.30.0", "orjson": "3.10.0",
            "numpy": "2.2.0", "onnxruntime": "1.20.1", "rankbench-candle": "0.1.0"}


def _env(minor: int, tmp: Path, torch: bool = False) -> PythonEnv:
    packages = {**PACKAGES, **({"torch": "2.5.1"} if torch else {})}
    return PythonEnv(3, minor, f"3.{minor}.1", tmp / f"py3.{minor}" / "bin" / "python", packages)


def _write_manifest(envs: Path, folder: str, body: str | dict) -> None:
    (envs / folder).mkdir(parents=True)
    text = body if isinstance(body, str) else json.dumps(body)
    (envs / folder / pythons.MANIFEST).write_text(text)


def test_environments_reads_complete_manifests_only(tmp_path):
    good = {"major": 3, "minor": 13, "version": "3.13.0", "packages": {"Uvloop": "0.21.0"}}
    _write_manifest(tmp_path, "py3.13", good)
    _write_manifest(tmp_path, "py3.12", "{not json")
    _write_manifest(tmp_path, "py3.10", {**good, "minor": 11})       # folder says another version
    (tmp_path / "py3.11").mkdir()                                     # pip still running
    (found,) = pythons.environments(tmp_path)
    assert (found.tag, found.interpreter, found.version) == ("3.13", "cpython-3.13", "3.13.0")
    assert found.python == tmp_path / "py3.13" / "bin" / "python"
    assert found.version_of("uvloop") == "0.21.0" and not found.has("torch")
    assert found.make == "make pythons PYTHONS=3.13"


def _base_servers() -> list:
    return [s for s in REGISTRY if s.language == "python" and s.http == "uvloop-httptools"
            and s.variant == PER_REQUEST and "@" not in s.name]


def test_variants_differ_from_their_base_in_the_interpreter_only(tmp_path):
    variants = interpreter_variants(REGISTRY, [_env(13, tmp_path), _env(12, tmp_path, torch=True)])
    by_name = {v.name: v for v in variants}
    bases = {s.name: s for s in _base_servers()}
    assert {"py-none", "py-onnx", "py-candle", "py-torch"} <= set(bases)
    assert set(by_name) == ({f"{n}@3.12" for n in bases}
                            | {f"{n}@3.13" for n in bases if n != "py-torch"})
    for variant in variants:
        name, tag = variant.name.split("@")
        base = bases[name]
        assert variant.interpreter == f"cpython-{tag}"
        assert isolated_facet(base, variant) == "interpreter"
        assert pair_sentence(base, variant).endswith(": the interpreter")
        assert variant.floor == (f"{base.floor}@{tag}" if base.floor else None)
        base_argv = base.command(dsn="postgresql://x", port=1)
        assert variant.command(dsn="postgresql://x", port=1) == \
            [str(tmp_path / f"py{tag}" / "bin" / "python")] + \
            [variant.name if arg == base.name else arg for arg in base_argv[1:]]
        assert (variant.backend, variant.startup_timeout_s, variant.real_scores) == \
            (base.backend, base.startup_timeout_s, base.real_scores)
        assert f"CPython {tag}.1 in " in variant.notes and "uvloop 0.21.0" in variant.notes
        if base.runtime == "onnxruntime":
            assert "onnxruntime 1.20.1" in variant.notes


def test_variant_ports_are_unique_in_the_registry(tmp_path):
    variants = interpreter_variants(REGISTRY, [_env(m, tmp_path, torch=True) for m in (10, 12, 13)])
    ports = [s.default_port for s in REGISTRY if "@" not in s.name] + \
        [v.default_port for v in variants]
    assert len(ports) == len(set(ports))
    assert {v.name: v.default_port for v in variants}["py-onnx@3.13"] == 9302


def test_a_variant_names_make_pythons_for_what_it_lacks(tmp_path):
    (onnx,) = [v for v in interpreter_variants(REGISTRY, [_env(13, tmp_path)])
               if v.name == "py-onnx@3.13"]
    missing = onnx.missing()
    assert [p.target for p in missing] == [str(tmp_path / "py3.13" / "bin" / "python"),
                                           "onnxruntime"]
    assert all(p.make == "make pythons PYTHONS=3.13" for p in missing)
    assert "run `make pythons PYTHONS=3.13`" in missing[0].describe()


def test_bench_python_runs_the_base_three_and_their_installed_variants(tmp_path):
    envs = [_env(12, tmp_path), _env(13, tmp_path)]
    own = REGISTRY[0].interpreter            # the project's interpreter (the first entry is Python)
    base_registry = tuple(s for s in REGISTRY if s.language != "python" or s.interpreter == own)
    registry = {spec.name: spec
                for spec in base_registry + interpreter_variants(base_registry, envs)}
    base = ("py-onnx", "py-candle", "py-none")
    assert pythons.bench_servers(None, registry) == \
        base + tuple(f"{n}@3.12" for n in base) + tuple(f"{n}@3.13" for n in base)
    assert pythons.bench_servers([(3, 13), (3, 99)], registry) == \
        base + tuple(f"{n}@3.13" for n in base)
    plain = {spec.name: spec for spec in base_registry}
    assert pythons.bench_servers(None, plain) == base


def test_the_python_profile_runs_registered_servers_only():
    from bench.settings import resolve

    from rankbench.servers import study

    settings, _ = resolve(["--profile", "python"], environ={})
    assert settings.study == "python" and settings.servers is None
    assert {"py-none", "py-onnx", "py-candle"} <= set(study("python"))
    assert set(study("python")) <= set(SERVERS)
    assert {n.split("@")[0] for n in study("python")} == {"py-none", "py-onnx", "py-candle"}
    assert (settings.items, settings.concurrency, settings.repeats) == ((10, 100), (32,), 3)


def test_the_registry_registers_the_environments_that_exist(tmp_path):
    """In a fresh process, with ENVS_DIR pointed at a fake environment: SERVERS and the table of
    `make list-servers` have its variants, with the same facts as interpreter_variants gives."""
    _write_manifest(tmp_path, "py3.13", {"major": 3, "minor": 13, "version": "3.13.0",
                                         "packages": PACKAGES})
    code = ("import pathlib, rankbench.pythons as p; "
            f"p.ENVS_DIR = pathlib.Path({str(tmp_path)!r}); import rankbench.servers as s; "
            "print(sorted(n for n in s.SERVERS if '@' in n)); "
            "print([r.name for r in s.REGISTRY] == list(s.SERVERS)); "
            "print(s.SERVERS['py-onnx@3.13'].interpreter, s.SERVERS['py-onnx@3.13'].floor); "
            "print('py-candle@3.13' in s._table())")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "['py-candle@3.13', 'py-none@3.13', 'py-onnx@3.13']", "True",
        "cpython-3.13 py-none@3.13", "True"]
