"""Checkpoint files: atomic writes, safe loads, and random-number-generator states as plain data.

Every checkpoint holds only tensors, numbers, strings, lists and dicts, so every one of them loads
with ``torch.load(..., weights_only=True)``: no pickled Python objects are ever executed. The RNG
states of Python, NumPy and torch are converted to such plain data by :func:`rng_state` and back
by :func:`set_rng_state`.

A checkpoint that is missing, empty, truncated, not a checkpoint at all or written for another
model raises :class:`CheckpointError`, whose message names the file and what is wrong with it.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["CheckpointError", "atomic_save", "load_checkpoint", "load_weights", "rng_state", "set_rng_state"]


class CheckpointError(ValueError):
    """A checkpoint file cannot be used. The message names the file."""


def atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    buf = io.BytesIO()
    torch.save(obj, buf)
    with open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; any unreadable file becomes a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the checkpoint is empty (0 bytes); it was not written completely")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError,
            AttributeError, TypeError, IndexError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated, corrupt or not written by mdmt): {first[:200]}"
        ) from None


def load_weights(model: nn.Module, state: Any, path: Path, what: str) -> None:
    """Load a state dict into ``model``; a state of another model raises a :class:`CheckpointError`
    listing the missing, unexpected and mis-shaped parameters. ``what`` names the model in the message."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: does not hold model weights (a mapping of parameter names to tensors)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        if shapes:
            parts.append(f"shapes differ: {_few(shapes)}")
        raise CheckpointError(f"{path}: these weights are not those of {what}: " + "; ".join(parts))
    model.load_state_dict(state)


def _few(names: list[str], n: int = 4) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch (CPU and CUDA) generator states as tensors and plain lists."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())  # a checkpoint loaded with map_location=cuda moved it
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
