"""Shipping a trained run: ONNX export, streaming batch scoring and an HTTP scoring service (DESIGN §7).

* :mod:`mdmt.serve.export`: a run -> one scoring module (every unit of the regime with its routing)
  -> ``model.onnx`` + ``feature_map.json`` + ``manifest.json``.
* :mod:`mdmt.serve.engine`: a run directory or an export folder -> a :class:`~mdmt.serve.engine.Scorer`
  (PyTorch or onnxruntime) that turns an encoded :class:`~mdmt.batch.Batch` into probabilities.
* :mod:`mdmt.serve.score`: chunked CSV/Parquet -> Parquet scoring with flat memory.
* :mod:`mdmt.serve.app`: the FastAPI service (``mdmt serve``).
"""

from __future__ import annotations

__all__ = ["ServeError"]


class ServeError(Exception):
    """A bad run directory, export folder, engine or service option (the CLI prints it and exits 2)."""
