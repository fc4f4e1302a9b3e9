"""Inference engines: what runs a descriptor network's trunk on a batch of photos.

The trunk (the backbone, 99 % of the work) is run by one of the registered engines; pooling, the
embedding, probes and regions stay in torch on the feature map it returns, so every engine gives
the same descriptors (within 1e-4, ``tests``). On CPU an exported graph run by OpenVINO or ONNX
Runtime is 1.3-3x faster than eager torch (``benchmarks/extract.py``); on CUDA, MPS and for
training the engine is torch.

* ``torch``: eager, channels-last.
* ``onnxruntime``: the trunk exported to ONNX (dynamic batch, height and width) and run by ONNX Runtime.
* ``openvino``: the same ONNX graph compiled by OpenVINO at float32 precision (its bfloat16 default
  on CPUs that have it moves descriptors by ~0.4, so it is not used).
* ``auto`` (default): torch off the CPU; on the CPU, whichever installed engine is fastest on this
  machine for this network, measured once (a few seconds) and remembered in the user cache.

An exported graph is named by the digest of the weights it was made from, so a changed network is
never served by a stale graph. A store keeps its graphs in ``<store>/engines`` (a copied store needs
no export); they are also kept in the user cache (``$LANDMARK_CACHE``, default
``~/.cache/landmark``), so stores of the same network export once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..models.backbones import Backbone
from ..models.export import export_trunk
from ..utils.config import ConfigError
from ..utils.io import atomic_write_json, user_cache_dir

log = logging.getLogger(__name__)

ENGINE_KINDS = ("auto", "torch", "onnxruntime", "openvino")
STORE_ENGINES_DIR = "engines"  # a store's exported graphs


class EngineError(ConfigError):
    """``extract.engine`` names an engine that cannot run here (unknown, not installed, or not on this device)."""


def trunk_digest(backbone: Backbone, taps: Sequence[int] = ()) -> str:
    """What an exported graph of ``backbone`` is named by: its name, the taps and every weight."""
    h = hashlib.sha256(f"{backbone.name}|{tuple(taps)}|{torch.__version__.split('+')[0]}".encode())
    for key, value in backbone.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


class Engine:
    """Runs a trunk: ``engine(x)`` -> the feature maps at the taps, then the final one (a tuple)."""

    name = "?"

    def __call__(self, x: Tensor) -> tuple[Tensor, ...]:
        raise NotImplementedError


@dataclass(frozen=True)
class EngineSpec:
    name: str
    available: Callable[[], bool]
    build: Callable[[TrunkSource], Engine]
    needs_graph: bool  # runs an exported ONNX graph


ENGINES: dict[str, EngineSpec] = {}


def register_engine(name: str, available: Callable[[], bool], needs_graph: bool = True):
    """Register an engine builder ``build(source) -> Engine`` under ``name`` (timm's ``register_model``)."""

    def wrap(build: Callable[[TrunkSource], Engine]):
        ENGINES[name] = EngineSpec(name, available, build, needs_graph)
        return build

    return wrap


def _installed(module: str) -> Callable[[], bool]:
    import importlib.util

    return lambda: importlib.util.find_spec(module) is not None


class TrunkSource:
    """A backbone with its taps, and where its exported graph is kept."""

    def __init__(
        self,
        backbone: Backbone,
        taps: Sequence[int] = (),
        store_dir: str | Path | None = None,
        threads: int | None = None,
    ):
        self.backbone, self.taps = backbone, tuple(taps)
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self.threads = threads or torch.get_num_threads()
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = trunk_digest(self.backbone, self.taps)
        return self._digest

    def graph(self) -> Path:
        """The trunk's ONNX graph: from the store, else the user cache, else exported now (both kept)."""
        name = f"{self.backbone.name}-{self.digest}.onnx"
        places = ([self.store_dir / name] if self.store_dir is not None else []) + [user_cache_dir() / "engines" / name]
        found = next((p for p in places if p.is_file()), None)
        if found is None:
            log.info("exporting %s to ONNX for the inference engine (once per network)", self.backbone.name)
            found = places[-1]
            export_trunk(self.backbone, found, taps=self.taps)
        for p in places:
            if p != found and not p.is_file():
                _copy_into(found, p)
        return places[0] if places[0].is_file() else found


def _copy_into(src: Path, dst: Path) -> None:
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        try:
            os.link(src, tmp)  # same file system: no second copy on disk
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as err:  # a read-only store or cache: run from where it is
        log.warning("could not keep the engine graph at %s (%s)", dst, err)


@register_engine("torch", lambda: True, needs_graph=False)
class TorchEngine(Engine):
    """Eager torch, channels-last (oneDNN's fastest layout on CPU, preferred by tensor cores)."""

    name = "torch"

    def __init__(self, source: TrunkSource):
        self.backbone, self.taps = source.backbone, source.taps

    def __call__(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.backbone.forward_taps(x.contiguous(memory_format=torch.channels_last), self.taps)


@register_engine("onnxruntime", _installed("onnxruntime"))
class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, source: TrunkSource):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = source.threads
        so.inter_op_num_threads = 1
        # idle worker threads sleep instead of spinning: decoding shares the cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(source.graph()), so, providers=["CPUExecutionProvider"])

    def __call__(self, x: Tensor) -> tuple[Tensor, ...]:
        outs = self.session.run(None, {"images": np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)})
        return tuple(torch.from_numpy(o) for o in outs)


@register_engine("openvino", _installed("openvino"))
class OpenVinoEngine(Engine):
    name = "openvino"

    def __init__(self, source: TrunkSource):
        import openvino as ov

        core = ov.Core()
        self.model = core.compile_model(
            str(source.graph()),
            "CPU",
            {"INFERENCE_NUM_THREADS": source.threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"},
        )
        self.request = self.model.create_infer_request()
        self.lock = threading.Lock()  # one request: calls from several threads take turns

    def __call__(self, x: Tensor) -> tuple[Tensor, ...]:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)
        with self.lock:
            res = self.request.infer({0: arr})
            return tuple(torch.from_numpy(np.array(res[out])) for out in self.model.outputs)


def available_engines() -> list[str]:
    return [name for name, spec in ENGINES.items() if spec.available()]


def check_engine(kind: str) -> None:
    if kind not in ENGINE_KINDS and kind not in ENGINES:
        raise EngineError(f"extract.engine must be one of {sorted(set(ENGINE_KINDS) | set(ENGINES))}, got {kind!r}")


def make_engine(
    kind: str, source: TrunkSource, device: torch.device, *, batch_size: int = 8, image_size: int = 384
) -> Engine:
    """The engine ``kind`` (``auto``: the fastest here) for ``source`` on ``device``."""
    check_engine(kind)
    if device.type != "cpu":
        if kind not in ("auto", "torch"):
            raise EngineError(f"extract.engine={kind} runs on the CPU; on {device.type} the engine is torch")
        return TorchEngine(source)
    if not source.backbone.any_size_graph:  # e.g. a vision transformer: a graph per photo shape is not kept
        if kind not in ("auto", "torch"):
            raise EngineError(
                f"extract.engine={kind} runs graphs that take any photo shape, which "
                f"{source.backbone.name} does not export to: use extract.engine=torch"
            )
        return TorchEngine(source)
    if kind == "auto":
        kind, measured = _choose(source, batch_size, image_size)
        if measured is not None:  # made to be timed just now: not made twice
            return measured
    spec = ENGINES[kind]
    if not spec.available():
        raise EngineError(
            f"extract.engine={kind} is not installed (pip install {kind}), or choose one of {available_engines()}"
        )
    try:
        return spec.build(source)
    except EngineError:
        raise
    except Exception as err:  # a network the exporter or the runtime cannot take: eager torch still can
        log.warning(
            "engine %s cannot run %s (%s: %s): using torch", kind, source.backbone.name, type(err).__name__, err
        )
        return TorchEngine(source)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_engines(engines: dict[str, Engine], batch: Tensor, rounds: int = 5) -> dict[str, float]:
    """Seconds per call of each engine on ``batch``: the best of ``rounds`` calls after a warm-up,
    the engines taking turns each round (a busy moment of the machine then hits them alike)."""
    best = {name: float("inf") for name in engines}
    with torch.inference_mode():
        for engine in engines.values():
            engine(batch)
        for _ in range(rounds):
            for name, engine in engines.items():
                t0 = time.perf_counter()
                engine(batch)
                best[name] = min(best[name], time.perf_counter() - t0)
    return best


def fastest_engine(source: TrunkSource, *, batch_size: int = 8, image_size: int = 384) -> str:
    """The installed CPU engine that runs ``source`` fastest at a typical batch (long side
    ``image_size``, 4:3), measured once per network, machine and thread count; the choice is kept
    in the user cache (``engines/choices.json``)."""
    return _choose(source, batch_size, image_size)[0]


def _choose(source: TrunkSource, batch_size: int, image_size: int) -> tuple[str, Engine | None]:
    """:func:`fastest_engine`, and the chosen engine where it was made to be timed (else None)."""
    names = available_engines()
    if len(names) == 1:
        return names[0], None
    key = f"{source.digest}|{_cpu_name()}|threads={source.threads}|batch={batch_size}|size={image_size}"
    path = user_cache_dir() / "engines" / "choices.json"
    try:
        choices = json.loads(path.read_text())
    except (OSError, ValueError):
        choices = {}
    if choices.get(key, {}).get("engine") in names:
        return choices[key]["engine"], None
    side = max(32, image_size // 32 * 32)
    batch = torch.randn(batch_size, 3, side, max(32, side * 3 // 4 // 32 * 32))
    engines: dict[str, Engine] = {}
    for name in names:
        try:
            engines[name] = ENGINES[name].build(source)
        except Exception as err:  # noqa: BLE001 - an engine that fails here is not chosen
            log.warning("engine %s not usable for %s: %s", name, source.backbone.name, err)
    seconds = time_engines(engines, batch)
    best = min(seconds, key=seconds.__getitem__) if seconds else "torch"
    log.info(
        "inference engine: %s (%s)", best, ", ".join(f"{n} {batch_size / s:.1f} img/s" for n, s in seconds.items())
    )
    choices[key] = {"engine": best, "images_per_s": {n: round(batch_size / s, 2) for n, s in seconds.items()}}
    try:
        atomic_write_json(path, choices)
    except OSError as err:
        log.warning("could not remember the engine choice in %s: %s", path, err)
    return best, engines.get(best)


class TrunkRunner:
    """The engines of one backbone, one per set of taps, made when first needed."""

    def __init__(
        self,
        backbone: Backbone,
        kind: str,
        device: torch.device,
        store_dir: str | Path | None = None,
        batch_size: int = 8,
        image_size: int = 384,
    ):
        check_engine(kind)
        self.kind, self.device, self.store_dir = kind, device, store_dir
        self.batch_size, self.image_size = batch_size, image_size
        self.backbone = backbone
        self._engines: dict[tuple[int, ...], Engine] = {}
        self._lock = threading.Lock()

    def engine(self, taps: Sequence[int] = ()) -> Engine:
        taps = tuple(taps)
        with self._lock:
            if taps not in self._engines:
                source = TrunkSource(self.backbone, taps, self.store_dir)
                self._engines[taps] = make_engine(
                    self.kind, source, self.device, batch_size=self.batch_size, image_size=self.image_size
                )
            return self._engines[taps]

    def __call__(self, x: Tensor, taps: Sequence[int] = ()) -> tuple[Tensor, ...]:
        outs = self.engine(taps)(x)
        return tuple(o.to(x.device) for o in outs)
