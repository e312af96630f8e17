"""Scorers: a run directory or an export folder -> probabilities of encoded rows, in PyTorch or onnxruntime.

``open_scorer(path, engine)`` accepts

* a run directory written by ``mdmt train`` (engine ``torch`` by default; ``onnx`` exports it to a
  temporary folder first), or
* an export folder written by ``mdmt export`` (engine ``onnx``; it holds no PyTorch weights).

Both engines take the same encoded :class:`~mdmt.batch.Batch` and return ``[N, T]`` float32
probabilities in schema task order, so ``mdmt predict`` and ``mdmt serve`` do not care which one
runs.

Example::

    scorer = open_scorer("exports/demo", engine="onnx")
    probs = scorer.score(encode_for_scoring(frame, scorer.feature_map, source="rows.csv"))
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..batch import Batch
from ..featuremap import FeatureMap
from . import ServeError
from .export import EXPORT_FORMAT, MANIFEST, ScoringModule, input_names, model_inputs

__all__ = [
    "Engine", "ENGINES", "Scorer", "TorchScorer", "OnnxScorer", "load_trained", "is_export_dir", "open_scorer",
    "retain_freed_memory",
]

Engine = Literal["torch", "onnx"]
ENGINES: tuple[str, ...] = ("torch", "onnx")
_RUN_FILES = ("config.yaml", "feature_map.json", "units.json")


def retain_freed_memory() -> bool:
    """Let glibc's allocator keep freed memory for reuse instead of handing it back to the system.

    Scoring allocates and frees the same large activations (megabytes) batch after batch. By
    default glibc serves such blocks with ``mmap`` or trims them off the heap when freed, so every
    batch pays one page fault per 4 KiB page it touches again: about a third of the CPU time of
    the PyTorch engine here. Raising ``M_MMAP_THRESHOLD`` (to its 32 MiB maximum) and
    ``M_TRIM_THRESHOLD`` keeps the pages mapped: the process holds its peak memory (bounded by
    the chunk size), and the faults are gone. Process-wide; a no-op (False) off glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 * 2**20)) and bool(mallopt(m_trim_threshold, 2**30))


def load_trained(run_dir: str | Path):
    """:func:`mdmt.train.run.load_run` with one clear :class:`ServeError` for a path that is not a
    finished run or whose files do not load."""
    from ..train.run import load_run

    path = Path(run_dir)
    if not path.is_dir():
        raise ServeError(f"{path} is not a directory; expected a run directory written by mdmt train "
                         f"or an export folder written by mdmt export")
    missing = [n for n in _RUN_FILES if not (path / n).exists()]
    if missing:
        raise ServeError(f"{path} is not a finished run directory: {', '.join(missing)} missing "
                         f"(expected {', '.join(_RUN_FILES)} and checkpoints/)")
    from ..data.base import DataError
    from ..schema import ConfigError
    from ..train.checkpoint import CheckpointError

    try:
        return load_run(path)
    except (ServeError, ConfigError, DataError, CheckpointError):  # already one clear message
        raise
    except FileNotFoundError as err:
        raise ServeError(str(err)) from err
    except Exception as err:  # a damaged checkpoint, config or feature map: name the file, not torch's internals
        for ckpt in sorted((path / "checkpoints").glob("*-best.pt")):
            try:
                torch.load(ckpt, map_location="cpu", weights_only=True)
            except Exception as ckpt_err:
                raise ServeError(f"{path}: the run does not load: checkpoint {ckpt} is damaged "
                                 f"({type(ckpt_err).__name__}); train the run again or restore the file") from err
        first = (str(err).splitlines() or [""])[0][:200]
        raise ServeError(f"{path}: the run does not load ({type(err).__name__}: {first}); "
                         f"is config.yaml, units.json or feature_map.json damaged?") from err


def is_export_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).exists()


class Scorer:
    """Probabilities of encoded rows. Attributes: ``feature_map``, ``engine``, ``metadata`` (what
    ``GET /metadata`` serves: model, regime, tasks, domains, metrics)."""

    engine: str = ""

    def __init__(self, feature_map: FeatureMap, metadata: dict[str, Any], sequence_separator: str = "|") -> None:
        self.feature_map = feature_map
        self.metadata = metadata
        self.sequence_separator = sequence_separator  # how the run's CSV files join sequence ids

    @property
    def tasks(self) -> list[str]:
        return self.feature_map.spec.task_names

    def score(self, batch: Batch) -> np.ndarray:  # pragma: no cover - abstract
        """``[N, T]`` float32 probabilities of the encoded rows in ``batch``."""
        raise NotImplementedError


class TorchScorer(Scorer):
    """Eager PyTorch: the run's unit models inside one :class:`ScoringModule` (the graph that is exported)."""

    engine = "torch"

    def __init__(self, module: ScoringModule, metadata: dict[str, Any], sequence_separator: str = "|") -> None:
        super().__init__(module.fm, metadata, sequence_separator)
        self.module = module.eval()

    def score(self, batch: Batch) -> np.ndarray:
        with torch.inference_mode():
            return self.module(*model_inputs(batch, self.feature_map).values()).numpy()


class OnnxScorer(Scorer):
    """onnxruntime on ``model.onnx`` of an export folder."""

    engine = "onnx"

    def __init__(self, export_dir: str | Path, threads: int | None = None, keep: Any = None) -> None:
        import onnxruntime as ort

        path = Path(export_dir)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
                raise ValueError(f"'format' is not {EXPORT_FORMAT!r}")
        except (OSError, ValueError) as err:
            raise ServeError(f"{path / MANIFEST} is not an mdmt export manifest ({err}); re-run mdmt export") from err
        try:
            fm = FeatureMap.load(path / "feature_map.json")
        except Exception as err:
            raise ServeError(f"{path / 'feature_map.json'} does not load ({type(err).__name__}); re-run mdmt export") from err
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise ServeError(f"{path / 'model.onnx'} does not load in onnxruntime ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:200]}); the export is damaged, re-run mdmt export") from err
        want, have = input_names(fm), [i.name for i in self.session.get_inputs()]
        if want != have:
            raise ServeError(f"{path / 'model.onnx'} has inputs {have} but feature_map.json implies {want}; "
                             f"the export folder mixes files of different runs, re-run mdmt export")
        meta = {k: manifest.get(k) for k in ("model", "regime", "tasks", "domains", "metrics", "opset", "versions")}
        super().__init__(fm, meta, str(manifest.get("sequence_separator", "|")))
        self._keep = keep  # a temporary export folder lives as long as the scorer

    def score(self, batch: Batch) -> np.ndarray:
        feeds = {k: v.numpy() for k, v in model_inputs(batch, self.feature_map).items()}
        return self.session.run(None, feeds)[0]


def sequence_separator(cfg) -> str:
    """The separator of sequence ids in the run's CSV files (the table source's ``sequence_separator``)."""
    from ..data.table import SEQUENCE_SEPARATOR

    params = cfg.data.params if cfg.data.source == "table" else {}
    return str(params.get("sequence_separator", SEQUENCE_SEPARATOR))


def _run_metadata(run) -> dict[str, Any]:
    metrics_path = run.run_dir / "metrics.json"
    return {
        "model": run.config.model.name,
        "regime": run.config.train.regime,
        "tasks": run.feature_map.spec.task_names,
        "domains": run.feature_map.spec.domain_names,
        "metrics": json.loads(metrics_path.read_text()) if metrics_path.exists() else None,
    }


def open_scorer(path: str | Path, engine: str | None = None, threads: int | None = None) -> Scorer:
    """A scorer for a run directory or an export folder (see the module docstring).

    Args:
        path: run directory or export folder.
        engine: ``torch`` or ``onnx``; default ``torch`` for a run directory, ``onnx`` for an export.
        threads: intra-op threads of the engine (default: PyTorch's current setting).
    """
    from .export import export_run

    if engine is not None and engine not in ENGINES:
        raise ServeError(f"--engine {engine!r} is not an engine; choose one of {', '.join(ENGINES)}")
    p = Path(path)
    if not p.exists():
        raise ServeError(f"{p} does not exist; expected a run directory (mdmt train) or an export folder (mdmt export)")
    if threads:
        torch.set_num_threads(threads)
    retain_freed_memory()
    if is_export_dir(p):
        if (engine or "onnx") == "torch":
            raise ServeError(f"{p} is an export folder: it holds the ONNX graph only, so it scores with "
                             f"--engine onnx; --engine torch needs the run directory it was exported from")
        return OnnxScorer(p, threads)
    run = load_trained(p)
    if (engine or "torch") == "onnx":
        tmp = tempfile.TemporaryDirectory(prefix="mdmt-export-")
        out = export_run(p, Path(tmp.name) / "export", run=run)
        return OnnxScorer(out, threads, keep=tmp)
    module = ScoringModule(run.feature_map, run.models, [u.domains for u in run.units], [u.tasks for u in run.units])
    return TorchScorer(module, _run_metadata(run), sequence_separator(run.config))
