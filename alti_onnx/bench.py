"""`alti-onnx bench`: the explanation's cost next to the plain forward pass, in one process.

Each configuration (sequence length, batch size) runs in a fresh worker process so its peak
resident memory is its own. Inside a worker the plain model and the instrumented model run on
onnxruntime sessions with the same options and providers; times are medians after warm-up, the
two timed in turns.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import RuntimeFailure
from .explainer import Explainer
from .model_inputs import parse_input_map
from .runtime import InstrumentedSession
from .text_inputs import Batch

LENGTHS = (32, 128, 512)
BATCH_SIZES = (1, 32)
FILLER = "the film moves along at a steady pace and the cast is very good in every single scene "


@dataclass(frozen=True)
class BenchResult:
    """One configuration: median seconds of the plain forward and of the full explanation."""

    seq_len: int
    batch_size: int
    forward_s: float
    explain_s: float
    ratio: float
    peak_rss_mb: float
    repeats: int


def synthetic_batch(explainer: Explainer, seq_len: int, batch_size: int) -> Batch:
    """A batch of identical, real-word inputs of exactly ``seq_len`` tokens (specials included)."""
    encoding = explainer.tokenizer.encode(FILLER * (1 + seq_len // 8))  # longer than needed, then cut
    ids = np.array(encoding.ids[: seq_len - 1] + encoding.ids[-1:], dtype=np.int64)
    tokens = encoding.tokens[: seq_len - 1] + encoding.tokens[-1:]
    shape = (batch_size, seq_len)
    return Batch(
        np.broadcast_to(ids, shape).copy(),
        np.ones(shape, dtype=np.int64),
        np.zeros(shape, dtype=np.int64),
        [list(tokens) for _ in range(batch_size)],
    )


def _median_seconds(runs: list, warmup: int, repeats: int, budget_s: float, settle_s: float = 5.0,
                    most: int = 50) -> tuple[list[float], int]:
    """Median seconds of each of ``runs``, timed in turns (a, b, a, b, ...) so that a change in the
    machine's speed during the measurement (other tenants, clock) moves all of them alike.

    At least ``repeats`` turns (3 if ``budget_s`` runs out first); short runs go on, up to ``most``
    turns, until ``settle_s`` has passed, because a few milliseconds are noisy on a shared machine.
    """
    for run in runs:
        for _ in range(warmup):
            run()
    times: list[list[float]] = [[] for _ in runs]
    began = time.perf_counter()
    done = 0
    while True:
        elapsed = time.perf_counter() - began
        if done >= 3 and elapsed > budget_s:
            break
        if done >= repeats and (elapsed > settle_s or done >= most):
            break
        for run, samples in zip(runs, times):
            start = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start)
        done += 1
    return [statistics.median(samples) for samples in times], done


def measure(model: str | Path, seq_len: int, batch_size: int, providers: list[str] | None = None,
            warmup: int = 2, repeats: int = 7, budget_s: float = 120.0, input_map: dict[str, str] | None = None) -> BenchResult:
    """Time one configuration in this process."""
    explainer = Explainer(model, providers=providers, input_map=input_map)
    plain = InstrumentedSession(explainer.model, [], providers, input_map)  # same options, no extra outputs
    batch = synthetic_batch(explainer, seq_len, batch_size)
    (forward, explain), done = _median_seconds(
        [lambda: plain.run(batch), lambda: explainer.explain_batch(batch)], warmup, repeats, budget_s
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return BenchResult(seq_len, batch_size, forward, explain, explain / forward, peak_mb, done)


def run_benchmark(model: str | Path, lengths=LENGTHS, batch_sizes=BATCH_SIZES, providers: list[str] | None = None,
                  progress=None, input_map: dict[str, str] | None = None) -> list[BenchResult]:
    """Every configuration, each in its own worker process (so peak memory is per configuration)."""
    results = []
    for seq_len in lengths:
        for batch_size in batch_sizes:
            if progress is not None:
                progress(seq_len, batch_size)
            command = [sys.executable, "-m", "alti_onnx.bench", str(model), str(seq_len), str(batch_size)]
            for provider in providers or []:
                command += ["--provider", provider]
            for name, role in (input_map or {}).items():
                command += ["--input-map", f"{name}={role}"]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no message"])[-1]
                raise RuntimeFailure(f"the benchmark worker failed for S={seq_len} B={batch_size}: {last}")
            results.append(BenchResult(**json.loads(done.stdout.strip().splitlines()[-1])))
    return results


def machine() -> dict[str, object]:
    """What the numbers were measured on (OpenBLAS's kernel choice and the CPU numba compiles the
    distance kernel for both matter: see the benchmark record)."""
    import numba
    import onnxruntime
    from llvmlite import binding
    from threadpoolctl import threadpool_info

    cpu = _proc_field("/proc/cpuinfo", "model name") or platform.processor()
    flags = _proc_field("/proc/cpuinfo", "flags").split()
    memory_kb = int((_proc_field("/proc/meminfo", "MemTotal") or "0 kB").split()[0])
    return {
        "cpu": cpu,
        "avx512": "avx512f" in flags,
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "blas": [f"{i['internal_api']} {i['version']} ({i.get('architecture')})" for i in threadpool_info() if i["user_api"] == "blas"],
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "numba": numba.__version__,
        "numba_target_cpu": numba.config.CPU_NAME or binding.get_host_cpu_name(),
        "platform": platform.platform(),
    }


def _proc_field(path: str, key: str) -> str:
    """The value of the first ``key: value`` line of a /proc file ('' when absent, e.g. not Linux)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == key), "")


def to_json(results: list[BenchResult], model: str | Path, providers: list[str] | None) -> dict[str, object]:
    return {
        "model": str(model),
        "providers": providers or ["default"],
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "results": [asdict(r) for r in results],
    }


def _worker(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="alti_onnx.bench")
    parser.add_argument("model")
    parser.add_argument("seq_len", type=int)
    parser.add_argument("batch_size", type=int)
    parser.add_argument("--provider", action="append")
    parser.add_argument("--input-map", action="append", default=[])
    args = parser.parse_args(argv)
    result = measure(args.model, args.seq_len, args.batch_size, args.provider, input_map=parse_input_map(args.input_map))
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    _worker(sys.argv[1:])
