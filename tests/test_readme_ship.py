"""The README's "Ship a model" commands, the curl call and the Python client of docs/serving.md, run as
written on the shop project. The one change: port 8000 becomes a free port the server picks
(``--port 0``), substituted into the curl URL and the client's base URL."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

from mdmt.cli import main

from .shop import shop_table, write_project

ROOT = Path(__file__).resolve().parents[1]


def _block(text: str, lang: str, first: str) -> str:
    """The fenced ``lang`` block whose first line starts with ``first``."""
    for body in re.findall(rf"```{lang}\n(.*?)```", text, re.S):
        if body.startswith(first):
            return body
    raise AssertionError(f"no ```{lang} block starting with {first!r}")


def _commands(block: str) -> list[str]:
    joined = block.replace("\\\n", " ")
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    write_project(tmp_path, model="mmoe", epochs=1)
    shop_table(200, seed=3).drop("click", "order").write_csv(tmp_path / "new_rows.csv")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_ship_a_model_commands_run_as_written(workspace):
    readme = (ROOT / "README.md").read_text()
    commands = _commands(_block(readme, "bash", "# ship a model"))
    assert [c.split()[1] for c in commands] == ["train", "export", "predict", "predict", "serve"]
    for cmd in commands[:-1]:
        argv = shlex.split(cmd)
        assert argv[0] == "mdmt"
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(argv[1:]) == 0, cmd
    onnx_scores = pl.read_parquet(workspace / "scores.parquet")
    torch_scores = pl.read_parquet(workspace / "scores_torch.parquet")
    assert onnx_scores.columns == ["row", "user_id", "click", "order"] and onnx_scores.height == 200
    assert (onnx_scores["click"] - torch_scores["click"]).abs().max() < 1e-5

    serve = shlex.split(commands[-1])
    assert "--port" in serve and serve[serve.index("--port") + 1] == "8000"
    serve[serve.index("--port") + 1] = "0"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "mdmt", *serve[1:]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=workspace)
    try:
        line, deadline = "", time.monotonic() + 90
        assert proc.stdout is not None
        while "listening on" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        port = line.split()[2].rsplit(":", 1)[1]
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)

        curl = _commands(_block(readme, "bash", "curl"))[0].replace(":8000/", f":{port}/")
        argv = shlex.split(curl)
        if shutil.which("curl"):
            answer = json.loads(subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout)
        else:  # the same request without the curl binary
            answer = httpx.post(argv[2], content=argv[argv.index("-d") + 1],
                                headers={"content-type": "application/json"}, timeout=30).json()
        assert answer["model"] == "mmoe" and answer["tasks"] == ["click", "order"]
        assert 0 < answer["predictions"][0]["click"] < 1

        doc = (ROOT / "docs" / "serving.md").read_text()
        client = _block(doc, "python", "import httpx").replace(":8000", f":{port}")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(client, "docs/serving.md", "exec"), {})
        printed = out.getvalue()
        assert "model mmoe tasks ['click', 'order']" in printed and "someone-new {'click'" in printed
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
