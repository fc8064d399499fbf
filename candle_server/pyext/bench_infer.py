"""What the PyO3 binding adds to Candle's forward pass, next to ONNX Runtime, in one process.

    .venv/bin/python candle_server/pyext/bench_infer.py [--model-dir artifacts] [--rounds 7]
        [--sizes 1,10,100,1000] [--rust-bench candle_server/target/release/examples/infer_bench]

Per batch size and round, each contender is timed for about --window-ms of calls, in an order that
rotates from round to round; the table gives the median over rounds of the mean per call.
Contenders:
  infer from Python  rankbench_candle.RankNet.infer from Python (checks, input copy, GIL release,
                 forward pass, scores handed to NumPy): py-candle's `infer` stage
  candle (ext)   RankNet::scores looped inside the extension: the forward pass alone, same .so
  onnxruntime    py_servers' onnx backend (1 intra-op thread, no spinning): py-onnx's `infer`
  candle (bin)   with --rust-bench: candle_server's examples/infer_bench `scores` column, run as
                 its own process once per round: the Rust server's `infer` stage
The process keeps freed memory as py-candle's worker and the Rust server do (glibc malloc with
fixed 32 MiB thresholds); --glibc-default-malloc leaves glibc's defaults.
Times are thread CPU time (CLOCK_THREAD_CPUTIME_ID; all contenders compute on the calling thread),
which leaves out time other processes of a shared machine had the core. Wall-clock means are
printed too for the in-process contenders.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def timed(fn, x: np.ndarray, window_ns: int) -> tuple[float, float]:
    """(thread-CPU us, wall us) per call, over a window of about `window_ns` of calls."""
    for _ in range(3):
        fn(x)
    calls = 0
    cpu0, wall0 = time.thread_time_ns(), time.perf_counter_ns()
    while True:
        for _ in range(20):
            fn(x)
        calls += 20
        cpu = time.thread_time_ns() - cpu0
        if cpu >= window_ns:
            break
    wall = time.perf_counter_ns() - wall0
    return cpu / calls / 1e3, wall / calls / 1e3


def rust_bench(binary: Path, model_dir: Path, iterations: int,
               default_malloc: bool) -> dict[int, float]:
    """{rows: mean us of RankNet::scores} from candle_server's infer_bench (thread CPU time)."""
    env = dict(os.environ)
    if default_malloc:
        env["GLIBC_DEFAULT_MALLOC"] = "1"
    out = subprocess.run([str(binary), str(model_dir), str(iterations)], capture_output=True,
                         text=True, check=True, timeout=600, env=env).stdout
    if "thread CPU" not in out:
        raise SystemExit(f"{binary} did not time thread CPU:\n{out}")
    result = {}
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0].isdigit():
            result[int(fields[0])] = float(fields[2])   # rows, tensor, scores, ...
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sizes", default="1,10,100,1000")
    parser.add_argument("--window-ms", type=float, default=100.0)
    parser.add_argument("--rust-bench", type=Path, default=None)
    parser.add_argument("--rust-iterations", type=int, default=20_000)
    parser.add_argument("--glibc-default-malloc", action="store_true")
    args = parser.parse_args()

    try:
        import rankbench_candle
    except ImportError:
        print("bench_infer: rankbench_candle is not installed: run candle_server/pyext/install.sh",
              file=sys.stderr)
        return 1
    sys.path.insert(0, str(ROOT))
    from py_servers.backends import onnx_backend

    if not args.glibc_default_malloc:
        rankbench_candle.keep_freed_memory()
    sizes = [int(s) for s in args.sizes.split(",")]
    model = rankbench_candle.RankNet(args.model_dir)
    onnx = onnx_backend.load(args.model_dir)
    window = int(args.window_ms * 1e6)

    contenders = {
        "infer from Python": model.infer,
        "onnxruntime": onnx.infer,
    }
    cpu: dict[tuple[str, int], list[float]] = {}
    wall: dict[tuple[str, int], list[float]] = {}
    for round_ in range(args.rounds):
        for n in sizes:
            x = np.random.default_rng(round_ * 1000 + n).standard_normal((n, 40), dtype=np.float32)
            np.testing.assert_allclose(model.infer(x), onnx.infer(x), rtol=0, atol=1e-5)
            names = list(contenders) + ["candle (ext)"]
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                if name == "candle (ext)":
                    estimate_ns = model.time_scores(x, 5)
                    iterations = max(20, int(window / estimate_ns))
                    cpu.setdefault((name, n), []).append(model.time_scores(x, iterations) / 1e3)
                    continue
                c, w = timed(contenders[name], x, window)
                cpu.setdefault((name, n), []).append(c)
                wall.setdefault((name, n), []).append(w)
        if args.rust_bench:
            for n, us in rust_bench(args.rust_bench, args.model_dir, args.rust_iterations,
                                     args.glibc_default_malloc).items():
                if n in sizes:
                    cpu.setdefault(("candle (bin)", n), []).append(us)
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)

    names = ["infer from Python", "candle (ext)"] + (["candle (bin)"] if args.rust_bench else []) \
        + ["onnxruntime"]
    print(f"median over {args.rounds} rounds of the mean thread-CPU us per call "
          f"(wall-clock us in brackets)")
    header = f"{'rows':>5} " + " ".join(f"{name:>20}" for name in names) \
        + f" {'binding adds':>13} {'Python/bin':>14}"
    print(header)
    for n in sizes:
        cells = []
        for name in names:
            value = statistics.median(cpu[(name, n)])
            cell = f"{value:.2f}"
            if (name, n) in wall:
                cell += f" [{statistics.median(wall[(name, n)]):.1f}]"
            cells.append(f"{cell:>20}")
        candle_py = statistics.median(cpu[("infer from Python", n)])
        added = candle_py - statistics.median(cpu[("candle (ext)", n)])
        ratio = (f"{candle_py / statistics.median(cpu[('candle (bin)', n)]):.2f}x"
                 if args.rust_bench else "-")
        print(f"{n:>5} " + " ".join(cells) + f" {added:>13.2f} {ratio:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
