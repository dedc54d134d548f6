"""onnxruntime session set-up for a small box that also decodes video and talks MQTT."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

# Fastest first. A GPU provider can still fail at session creation (onnxruntime's Python API then
# falls back to the CPU), so the provider actually in use is read back from the session, not assumed.
PROVIDER_PREFERENCE = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
MAX_DEFAULT_THREADS = 4
# Building TensorRT engines for a model takes minutes on a Jetson; cached, a restart takes seconds.
DEFAULT_TRT_CACHE = Path.home() / ".cache" / "polewatch" / "tensorrt"

ProviderSpec = str | tuple[str, dict[str, str]]


def choose_providers(available: Sequence[str], trt_cache_dir: Path | None = None) -> list[ProviderSpec]:
    chosen: list[ProviderSpec] = []
    for provider in PROVIDER_PREFERENCE:
        if provider not in available:
            continue
        if provider == "TensorrtExecutionProvider":
            cache = trt_cache_dir or DEFAULT_TRT_CACHE
            options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache)}
            chosen.append((provider, options))
        else:
            chosen.append(provider)
    if not chosen:
        raise RuntimeError(f"onnxruntime offers none of {PROVIDER_PREFERENCE}; available: {list(available)}")
    return chosen


def default_threads() -> int:
    """Cores this process may use, capped: past 4 threads a nano-sized model gains nothing on an ARM
    board, and the capture and uplink need a core of their own."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_THREADS))


def resolve_threads(threads: int | None) -> int:
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return threads


def create_session(
    model: bytes,
    threads: int | None = None,
    *,
    trt_cache_dir: Path | None = None,
    only: Sequence[str] | None = None,
) -> ort.InferenceSession:
    """A session on the fastest provider available (or, with `only`, the fastest of those)."""
    threads = resolve_threads(threads)
    available = ort.get_available_providers()
    if only is not None:
        unknown = [p for p in only if p not in available]
        if unknown:
            raise ValueError(f"execution providers {unknown} are not available here; available: {available}")
        available = [p for p in available if p in only]
    providers = choose_providers(available, trt_cache_dir)
    if any(isinstance(spec, tuple) for spec in providers):
        (trt_cache_dir or DEFAULT_TRT_CACHE).mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # One small graph per frame: parallel execution of independent branches only adds scheduling.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle worker threads spin by default, waiting for the next parallel op. On a 2-4 core box that
    # spinning steals the core our own pre/post-processing, the video decoder and MQTT need: measured
    # on 2 cores (60 frames x 6 rounds) the bare run got 5% slower without spinning (22.2 → 23.4 ms)
    # but the whole detect() got faster (27.1 → 25.3 ms mean, p95 35.0 → 29.3 ms).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The memory-pattern planner pre-allocates one block for all intermediate tensors: measured on
    # NanoDet-m here it holds 17 MB more (76 → 59 MB for the session) and saves no time (28.0 vs
    # 26.2 ms per run); on a 1-2 GB box with one agent per camera group the memory counts more.
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=options, providers=providers)
