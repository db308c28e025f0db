"""`alti-onnx bench`: the explanation's cost next to the plain forward pass.

Each configuration (sequence length, batch size) runs in two fresh worker processes so each peak
resident memory is its own: one runs only the plain model, as its users do (the forward's own
peak); the other explains (its peak is read before it loads anything else), then times the plain
forward and the explanation in turns on onnxruntime sessions with the same options and providers.
Times are medians after warm-up. ``measure_corpus`` (``bench --corpus``) times ``batch`` over a
corpus next to the plain forward on the same texts, in this process. With ``logit`` the explanation also decomposes the predicted
class's or next token's logit (docs/logit.md), and ALTI alone is timed in the same turns.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from alti_onnx.errors import InputError, RuntimeFailure
from alti_onnx.explainer import Explainer
from alti_onnx.runtime.devices import resolve_device
from alti_onnx.runtime.model_files import locate_model, read_config
from alti_onnx.runtime.model_inputs import ModelInputs, parse_input_map
from alti_onnx.runtime.prepared import prepare
from alti_onnx.runtime.sessions import cache_inputs, empty_cache, plain_session
from alti_onnx.runtime.text_inputs import Batch, TextEncoder

LENGTHS = (32, 128, 512)
BATCH_SIZES = (1, 32)
FILLER = "the film moves along at a steady pace and the cast is very good in every single scene "


@dataclass(frozen=True)
class BenchResult:
    """One configuration: median seconds of the plain forward and of the explanation (every layer's
    matrices, or with ``attribution_only`` the target's row alone), the explaining process's peak
    resident memory (before it loads the plain model for the timing) and the peak of a process that
    runs only the plain forward."""

    seq_len: int
    batch_size: int
    forward_s: float
    explain_s: float
    ratio: float
    peak_rss_mb: float
    repeats: int
    forward_peak_rss_mb: float | None = None
    attribution_only: bool = False
    #: whether the forward and the explanation were timed in turns in one process; long runs are
    #: not (the plain model's own working memory on top of the explanation's would not fit), and
    #: their forward time comes from the process that runs only the forward
    in_turns: bool = True
    #: the explanation decomposed the prediction's logit too; ``alti_s`` is ALTI alone, timed in the same turns
    logit: bool = False
    alti_s: float | None = None
    #: the routes to the default target alone were timed (``Explainer.routes``: no ALTI)
    routes: bool = False


@dataclass(frozen=True)
class CorpusBenchResult:
    """``bench --corpus``: texts per second of ``batch`` (records written) and of the plain forward on
    the same texts in the same length-sorted runs (tokenizing included in both), best of ``repeats``
    turns each; ``ratio`` is how many times longer ``batch`` takes."""

    texts: int
    batch_size: int
    forward_texts_per_s: float
    batch_texts_per_s: float
    ratio: float
    repeats: int
    device: str = "cpu"


def measure_corpus(model: str | Path, corpus: str | Path, batch_size: int = 32, providers: list[str] | None = None,
                   device: str = "auto", limit: int | None = None, repeats: int = 2,
                   input_map: dict[str, str] | None = None) -> CorpusBenchResult:
    """The throughput of ``batch`` over the first ``limit`` texts of ``corpus`` (a ``batch`` input) next
    to the plain forward's on the same texts, batched as ``batch`` batches them (length-sorted runs of
    at most ``batch_size`` texts), timed in turns in this process."""
    import tempfile

    from alti_onnx.corpus.inputs import read_records
    from alti_onnx.corpus.run import PAIRS_PER_RUN, explain_corpus, require_corpus, run_groups

    corpus = Path(corpus)
    require_corpus(corpus)
    records = [r for r in read_records(corpus) if r.error is None]
    texts = [r.text for r in (records if limit is None else records[:limit])]
    if not texts:
        raise InputError(f"{corpus} holds no text to time")
    with Explainer(model, providers=providers, input_map=input_map, device=device) as explainer, \
            tempfile.TemporaryDirectory(prefix="alti-onnx-bench-") as folder:
        plain = plain_session(explainer.files.onnx, explainer.providers)
        subset = Path(folder) / "corpus.jsonl"
        subset.write_text("".join(json.dumps(text) + "\n" for text in texts), encoding="utf-8")

        def forward() -> None:
            lengths = sorted((explainer.text_encoder.token_count(text), text) for text in texts)
            for run in run_groups([n for n, _ in lengths], batch_size, PAIRS_PER_RUN):
                batch = explainer.text_encoder.encode([lengths[k][1] for k in run])
                plain.run(None, explainer.session.batch_feeds(batch))

        turns = itertools.count(1)  # each turn writes an output of its own (an existing one would be resumed)

        def explain() -> None:
            summary = explain_corpus(explainer, subset, Path(folder) / f"out-{next(turns)}.jsonl", batch_size=batch_size)
            if summary.failed:
                raise RuntimeFailure(f"bench --corpus: {summary.failed} texts failed, the first: {summary.first_error}")

        forward()  # warm-ups: sessions, numba's kernel, the tokenizer
        explain()
        timed: list[list[float]] = [[], []]
        for _ in range(repeats):
            for run, samples in zip((forward, explain), timed):
                began = time.perf_counter()
                run()
                samples.append(time.perf_counter() - began)
        ran_on = explainer.device.name
    forward_s, batch_s = min(timed[0]), min(timed[1])
    return CorpusBenchResult(len(texts), batch_size, len(texts) / forward_s, len(texts) / batch_s, batch_s / forward_s,
                             repeats, ran_on)


def synthetic_batch(tokenizer: Tokenizer, seq_len: int, batch_size: int) -> Batch:
    """A batch of identical, real-word inputs of exactly ``seq_len`` tokens (specials included)."""
    encoding = tokenizer.encode(FILLER * (1 + seq_len // 8))  # longer than needed, then cut
    ids = np.array(encoding.ids[: seq_len - 1] + encoding.ids[-1:], dtype=np.int64)
    tokens = encoding.tokens[: seq_len - 1] + encoding.tokens[-1:]
    shape = (batch_size, seq_len)
    return Batch(
        np.broadcast_to(ids, shape).copy(),
        np.ones(shape, dtype=np.int64),
        np.zeros(shape, dtype=np.int64),
        [list(tokens) for _ in range(batch_size)],
    )


#: A run longer than this many seconds is warmed up once and timed at least once (a 30-second
#: forward pass is not a noisy measurement; three turns of it and the explanation would take long).
LONG_RUN_S = 30.0


def _median_seconds(runs: list, warmup: int, repeats: int, budget_s: float, settle_s: float = 5.0,
                    most: int = 50) -> tuple[list[float], int]:
    """Median seconds of each of ``runs``, timed in turns (a, b, a, b, ...) so that a change in the
    machine's speed during the measurement (other tenants, clock) moves all of them alike.

    At least ``repeats`` turns (3 if ``budget_s`` runs out first, 1 when a run takes over
    ``LONG_RUN_S``); short runs go on, up to ``most`` turns, until ``settle_s`` has passed, because
    a few milliseconds are noisy on a shared machine. Long runs are warmed up once.
    """
    slowest = 0.0
    for number in range(warmup):
        if number and slowest > LONG_RUN_S:
            break
        for run in runs:
            start = time.perf_counter()
            run()
            slowest = max(slowest, time.perf_counter() - start)
    times: list[list[float]] = [[] for _ in runs]
    began = time.perf_counter()
    done = 0
    while True:
        elapsed = time.perf_counter() - began
        slowest = max([slowest] + [samples[0] for samples in times if samples])
        least = 1 if slowest > LONG_RUN_S else 3
        if done >= least and elapsed > budget_s:
            break
        if done >= repeats and (elapsed > settle_s or done >= most):
            break
        for run, samples in zip(runs, times):
            start = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start)
        done += 1
    return [statistics.median(samples) for samples in times], done


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(model: str | Path, seq_len: int, batch_size: int, providers: list[str] | None = None,
            warmup: int = 2, repeats: int = 7, budget_s: float = 120.0, input_map: dict[str, str] | None = None,
            attribution_only: bool = False, logit: bool = False, routes: bool = False,
            device: str = "auto") -> BenchResult:
    """Time one configuration in this process (the math on ``device``, ``runtime.devices``). The explanation runs first, alone, so the peak memory
    read before the plain model is loaded is the explanation's own. With ``routes`` the explanation
    is the routes to the default target alone (no ALTI)."""
    from alti_onnx.results.logit import LogitQuery
    from alti_onnx.results.routes import RouteQuery

    explainer = Explainer(model, providers=providers, input_map=input_map, device=device)
    batch = synthetic_batch(explainer.tokenizer, seq_len, batch_size)
    queries = [LogitQuery()] * batch_size if logit else None

    def explain() -> None:
        if routes:
            explainer.explain_batch(batch, full=False, routes=[RouteQuery()] * batch_size, alti=False)
            return
        explainer.explain_batch(batch, full=not attribution_only, logit=queries)

    def alti() -> None:
        explainer.explain_batch(batch, full=not attribution_only)

    began = time.perf_counter()
    explain()  # its warm-up
    long_run = time.perf_counter() - began > LONG_RUN_S
    peak_mb = _peak_mb()
    if long_run:  # timed alone; run_benchmark takes the forward's time from the forward's own process
        (explained,), done = _median_seconds([explain], 0, 1, budget_s=0.0)
        # the timed run's peak counts too (at 8,192 tokens SmolLM2's second run peaked 2.8 GB above its first)
        return BenchResult(seq_len, batch_size, float("nan"), explained, float("nan"), _peak_mb(), done,
                           attribution_only=attribution_only, in_turns=False, logit=logit, routes=routes)
    plain = plain_session(explainer.files.onnx, explainer.providers)  # onnxruntime on what the explanation runs on
    feeds = explainer.session.batch_feeds(batch)
    plain.run(None, feeds)  # the forward's warm-up
    runs = [lambda: plain.run(None, feeds), explain] + ([alti] if logit else [])
    medians, done = _median_seconds(runs, 0 if long_run else max(0, warmup - 1), repeats, budget_s)
    forward, explained = medians[:2]
    return BenchResult(seq_len, batch_size, forward, explained, explained / forward, peak_mb, done,
                       attribution_only=attribution_only, logit=logit, alti_s=medians[2] if logit else None,
                       routes=routes)


def measure_forward(model: str | Path, seq_len: int, batch_size: int, providers: list[str] | None = None,
                    input_map: dict[str, str] | None = None, device: str = "auto") -> tuple[float, float]:
    """Median seconds and peak memory (MB) of a process that only runs the plain model, as its users
    do: nothing of the explanation is loaded (the prepared model's description gives the inputs)."""
    files = locate_model(model)
    prepared = prepare(files.onnx)
    config = read_config(files)
    encoder = TextEncoder(files.tokenizer, config)
    inputs = ModelInputs(prepared.graph_inputs, input_map, skip=cache_inputs(prepared.graph_inputs))
    batch = synthetic_batch(encoder.tokenizer, seq_len, batch_size)
    feeds = {**inputs.feeds(batch), **empty_cache(cache_inputs(prepared.graph_inputs), batch_size)}
    del prepared
    plain = plain_session(files.onnx, resolve_device(device, providers).providers)
    (forward,), _ = _median_seconds([lambda: plain.run(None, feeds)], 1, 3, budget_s=60.0, settle_s=2.0)
    return forward, _peak_mb()


def run_benchmark(model: str | Path, lengths=LENGTHS, batch_sizes=BATCH_SIZES, providers: list[str] | None = None,
                  progress=None, input_map: dict[str, str] | None = None,
                  attribution_only: bool = False, logit: bool = False, routes: bool = False,
                  device: str = "auto") -> list[BenchResult]:
    """Every configuration, each in two worker processes (so each peak memory is its own): one runs
    the plain forward alone, the other the explanation and, timed in turns with it, the forward
    (for runs over ``LONG_RUN_S``, the explanation alone, set against the first process's forward)."""
    results = []
    for seq_len in lengths:
        for batch_size in batch_sizes:
            if progress is not None:
                progress(seq_len, batch_size)
            options = [f"--provider={p}" for p in providers or []] + [f"--input-map={n}={r}" for n, r in (input_map or {}).items()]
            options.append(f"--device={device}")
            forward_s, forward_peak = _worker_result(model, seq_len, batch_size, options + ["--forward-only"])
            explained = BenchResult(**_worker_result(model, seq_len, batch_size,
                                                     options + (["--attribution-only"] if attribution_only else [])
                                                     + (["--logit"] if logit else [])
                                                     + (["--routes"] if routes else [])))
            if not explained.in_turns:
                explained = replace(explained, forward_s=forward_s, ratio=explained.explain_s / forward_s)
            results.append(replace(explained, forward_peak_rss_mb=forward_peak))
    return results


def _worker_result(model: str | Path, seq_len: int, batch_size: int, options: list[str]):
    """What one worker process printed last (a JSON value)."""
    command = [sys.executable, "-m", "alti_onnx.bench", str(model), str(seq_len), str(batch_size), *options]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode < 0:
        raise RuntimeFailure(f"the benchmark worker for S={seq_len} B={batch_size} was killed by signal "
                             f"{-done.returncode}" + (" (out of memory?)" if done.returncode == -9 else ""))
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeFailure(f"the benchmark worker failed for S={seq_len} B={batch_size}: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
        "gpu": _gpu(),
    }


def _gpu() -> str | None:
    """The GPU CuPy sees, with its CUDA runtime and CuPy's version (None without one)."""
    try:
        import cupy

        properties = cupy.cuda.runtime.getDeviceProperties(0)
        name = properties["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        return f"{name}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, CuPy {cupy.__version__}"
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no GPU: all mean none
        return None


def _proc_field(path: str, key: str) -> str:
    """The value of the first ``key: value`` line of a /proc file ('' when absent, e.g. not Linux)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == key), "")


def to_json(results: list[BenchResult] | list[CorpusBenchResult], model: str | Path, providers: list[str] | None,
            device: str = "auto") -> dict[str, object]:
    """The record: the results, the model, the providers asked for, the device the math ran on, the machine."""
    return {
        "model": str(model),
        "providers": providers or ["default"],
        "device": device,
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
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--attribution-only", action="store_true")
    parser.add_argument("--logit", action="store_true")
    parser.add_argument("--routes", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    roles = parse_input_map(args.input_map)
    if args.forward_only:
        print(json.dumps(measure_forward(args.model, args.seq_len, args.batch_size, args.provider, input_map=roles,
                                         device=args.device)))
        return
    result = measure(args.model, args.seq_len, args.batch_size, args.provider, input_map=roles,
                     attribution_only=args.attribution_only, logit=args.logit, routes=args.routes, device=args.device)
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    _worker(sys.argv[1:])
