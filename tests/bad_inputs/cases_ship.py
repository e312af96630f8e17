"""Bad inputs when shipping a trained run: mdmt export, mdmt predict on an export, mdmt serve."""

from __future__ import annotations

import json
import shutil
import socket

from . import Workspace, bad_input

_HELD: list[socket.socket] = []  # ports kept busy while a case's command runs


def _fake_export(ws: Workspace, model_bytes: bytes = b"not an onnx graph", manifest: str | None = None) -> str:
    """An export folder with the trained run's feature map, a given model.onnx and manifest."""
    run = ws.trained_run()
    out = ws.path("export")
    out.mkdir()
    shutil.copy(run / "feature_map.json", out / "feature_map.json")
    (out / "model.onnx").write_bytes(model_bytes)
    (out / "manifest.json").write_text(manifest if manifest is not None else json.dumps({"format": "mdmt-onnx-export"}))
    return "export"


@bad_input("cli", "Exporting a folder that is not a run directory", expect="is not a finished run directory")
def export_not_a_run(ws: Workspace) -> list[str]:
    ws.write("notarun/notes.txt", "hello")
    return ["export", "notarun", "--out", "exported"]


@bad_input("cli", "An export format that does not exist", expect="--format 'tflite' is not supported")
def export_unknown_format(ws: Workspace) -> list[str]:
    ws.trained_run()
    return ["export", "runs/done", "--format", "tflite"]


@bad_input("checkpoint", "Exporting a run whose checkpoint is damaged", expect="not a readable checkpoint")
def export_damaged_checkpoint(ws: Workspace) -> list[str]:
    run = ws.trained_run()
    ws.write(str((run / "checkpoints" / "all-best.pt").relative_to(ws.root)), b"\x00garbage")
    return ["export", "runs/done"]


@bad_input("checkpoint", "Scoring with an export whose model.onnx is damaged", expect="does not load in onnxruntime")
def predict_corrupt_export(ws: Workspace) -> list[str]:
    return ["predict", _fake_export(ws), "rows.csv", "--out", "scores.parquet"]


@bad_input("checkpoint", "An export folder whose manifest is not an export manifest", expect="is not an mdmt export manifest")
def predict_bad_manifest(ws: Workspace) -> list[str]:
    return ["predict", _fake_export(ws, manifest="{oops"), "rows.csv", "--out", "scores.parquet"]


@bad_input("cli", "The PyTorch engine on an export folder (it holds the ONNX graph only)", expect="--engine onnx")
def torch_engine_on_export(ws: Workspace) -> list[str]:
    return ["serve", _fake_export(ws), "--engine", "torch"]


@bad_input("cli", "A chunk size below one row", expect="--chunk-rows must be at least 1")
def predict_zero_chunk(ws: Workspace) -> list[str]:
    ws.trained_run()
    return ["predict", "runs/done", "rows.csv", "--out", "scores.parquet", "--chunk-rows", "0"]


@bad_input("cli", "No thread to run the model in", expect="--model-workers must be at least 1")
def predict_zero_model_workers(ws: Workspace) -> list[str]:
    ws.trained_run()
    return ["predict", "runs/done", "rows.csv", "--out", "scores.parquet", "--model-workers", "0"]


@bad_input("cli", "Serving on a port that is already in use", expect="cannot listen on 127.0.0.1:")
def serve_port_in_use(ws: Workspace) -> list[str]:
    ws.trained_run()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    _HELD.append(sock)
    return ["serve", "runs/done", "--host", "127.0.0.1", "--port", str(sock.getsockname()[1])]
