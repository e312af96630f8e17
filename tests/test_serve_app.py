"""The HTTP scoring service (issue 15, items 3 and 4): in-process with FastAPI's TestClient and as a
real ``mdmt serve`` subprocess on a loopback port, both checked against ``mdmt predict`` on the
same rows; malformed rows get 422 naming row and field, limits 413, unseen ids score via OOV."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient

from mdmt.cli import main
from mdmt.data.table import parse_sequences
from mdmt.serve.app import create_app
from mdmt.serve.engine import open_scorer

from .shop import shop_table, write_project

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# the app, in process
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> dict[str, Path]:
    root = write_project(tmp_path_factory.mktemp("shop"), model="mmoe", epochs=1)
    run_dir = root / "runs" / "r"
    assert main(["train", str(root / "exp.yaml"), "--run-dir", str(run_dir)]) == 0
    assert main(["export", str(run_dir), "--out", str(root / "export")]) == 0
    new = shop_table(300, seed=11).with_columns(  # a third of the users and items unseen in training
        pl.when(pl.int_range(pl.len()) % 3 == 0).then(pl.col("user_id") + 5000).otherwise(pl.col("user_id")).alias("user_id"))
    new.write_csv(root / "new.csv")
    assert main(["predict", str(root / "export"), str(root / "new.csv"), "--out", str(root / "scores.parquet")]) == 0
    return {"root": root, "run": run_dir, "export": root / "export", "csv": root / "new.csv",
            "scores": root / "scores.parquet"}


def _rows(shop, n: int | None = None) -> list[dict]:
    spec = open_scorer(shop["export"]).feature_map.spec
    frame = parse_sequences(pl.read_csv(shop["csv"]), spec).drop("click", "order", "ts")
    return frame.head(n).to_dicts() if n else frame.to_dicts()


def _probs(body: dict) -> np.ndarray:
    return np.array([[p[t] for t in body["tasks"]] for p in body["predictions"]], dtype=np.float64)


@pytest.mark.parametrize("engine", ["onnx", "torch"])
def test_score_matches_mdmt_predict(shop, engine):
    scorer = open_scorer(shop["export"] if engine == "onnx" else shop["run"], engine=engine)
    client = TestClient(create_app(scorer, max_rows=1000))
    expected = pl.read_parquet(shop["scores"]).select("click", "order").to_numpy()
    rows = _rows(shop)
    for lo, hi in ((0, 1), (1, 65), (0, 300)):  # small requests (row encoder) and a large one (the data layer's)
        r = client.post("/score", json={"rows": rows[lo:hi]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["tasks"] == ["click", "order"] and len(body["predictions"]) == hi - lo
        np.testing.assert_allclose(_probs(body), expected[lo:hi], atol=1e-5)
        assert {"validate", "encode", "model"} <= {p.split(";")[0].strip() for p in r.headers["server-timing"].split(",")}


def test_malformed_rows_get_422_naming_row_and_field(shop):
    client = TestClient(create_app(open_scorer(shop["export"]), max_rows=50))
    rows = _rows(shop, 4)
    cases = [
        (2, "price", lambda r: r.update(price="cheap"), "number"),
        (1, "tab", lambda r: r.update(tab="nowhere"), "not a domain"),
        (3, "tab", lambda r: r.pop("tab"), "required"),
        (0, "user_id", lambda r: r.update(user_id=[1, 2]), "an id"),
        (2, "hist", lambda r: r.update(hist="1|2"), "list of ids"),
        (1, "hist", lambda r: r.update(hist=[1, {"a": 1}]), "entry 1"),
        (0, "user_id", lambda r: r.update(user_id=True), "an id"),
    ]
    for row, field, spoil, words in cases:
        bad = [dict(r) for r in rows]
        spoil(bad[row])
        res = client.post("/score", json={"rows": bad})
        assert res.status_code == 422, (field, res.text)
        body = res.json()
        assert body["errors"][0]["row"] == row and body["errors"][0]["field"] == field
        assert f"row {row}" in body["message"] and field in body["message"] and words in body["message"]
    for payload in (b"{nope", b"[]", b'{"rows": []}', b'{"rows": 3}', b'{"rows": [1]}', b'{"rows": [{}], "x": 1}'):
        res = client.post("/score", content=payload, headers={"content-type": "application/json"})
        assert res.status_code == 422, payload
        assert res.json()["message"]
    assert client.get("/healthz").json() == {"status": "ok"}  # still serving


def test_unseen_ids_score_via_oov_and_extra_keys_are_ignored(shop):
    client = TestClient(create_app(open_scorer(shop["export"])))
    row = _rows(shop, 1)[0] | {"user_id": "never-seen", "item_id": 10**12, "hist": [10**9, "z"], "click": 1, "note": "x"}
    res = client.post("/score", json={"rows": [row]})
    assert res.status_code == 200
    p = res.json()["predictions"][0]
    assert 0 < p["click"] < 1 and 0 < p["order"] < 1


def test_limits_answer_413(shop):
    client = TestClient(create_app(open_scorer(shop["export"]), max_rows=10, max_bytes=4000))
    rows = _rows(shop, 30)
    res = client.post("/score", json={"rows": rows[:11]})
    assert res.status_code == 413 and "11 rows" in res.json()["message"]
    big = json.dumps({"rows": rows[:8] + [rows[0] | {"pad": "x" * 5000}]})
    res = client.post("/score", content=big, headers={"content-type": "application/json"})
    assert res.status_code == 413 and "bytes" in res.json()["message"]
    assert client.post("/score", json={"rows": rows[:10]}).status_code == 200


def test_metadata_describes_the_model(shop):
    meta = TestClient(create_app(open_scorer(shop["export"]))).get("/metadata").json()
    assert meta["model"] == "mmoe" and meta["engine"] == "onnx" and meta["regime"] == "mdmt"
    assert meta["tasks"] == ["click", "order"] and meta["domains"] == ["home", "search"]
    assert {f["column"] for f in meta["features"]} == {"user_id", "item_id", "price", "hist"}
    assert meta["metrics"]["test"]["cells"] and meta["limits"]["max_rows"] == 10_000


def test_an_error_inside_the_model_is_a_500_and_the_worker_keeps_serving(shop):
    scorer = open_scorer(shop["export"])
    client = TestClient(create_app(scorer), raise_server_exceptions=False)
    real = scorer.score
    scorer.score = lambda batch: (_ for _ in ()).throw(RuntimeError("boom"))  # type: ignore[method-assign]
    res = client.post("/score", json={"rows": _rows(shop, 2)})
    assert res.status_code == 500 and "boom" in res.json()["message"]
    scorer.score = real  # type: ignore[method-assign]
    assert client.post("/score", json={"rows": _rows(shop, 2)}).status_code == 200


# ---------------------------------------------------------------------------------------------
# a real server process on a loopback port
# ---------------------------------------------------------------------------------------------
def _start(args: list[str], timeout: float = 90.0) -> tuple[subprocess.Popen, str]:
    """``mdmt serve ... --port 0`` in a subprocess; returns it and its base URL (from its first line)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "mdmt", "serve", *args, "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + timeout
    line = ""
    assert proc.stdout is not None
    while time.monotonic() < deadline and "listening on" not in line:
        if proc.poll() is not None:
            raise AssertionError(f"mdmt serve exited: {proc.stderr.read() if proc.stderr else ''}")
        line = proc.stdout.readline()
    assert "listening on http://127.0.0.1:" in line, line
    url = line.split()[2]
    for _ in range(100):  # bounded: the socket is bound before the line is printed; wait for the app
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    return proc, url


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


@pytest.mark.parametrize("engine", ["onnx", "torch"])
def test_a_real_server_process_over_http(shop, engine):
    target = shop["export"] if engine == "onnx" else shop["run"]
    proc, url = _start([str(target), "--engine", engine, "--max-rows", "100"])
    try:
        expected = pl.read_parquet(shop["scores"]).select("click", "order").to_numpy()
        rows = _rows(shop)
        with httpx.Client(base_url=url, timeout=30) as http:
            for lo in range(0, 100, 25):
                r = http.post("/score", json={"rows": rows[lo:lo + 25]})
                assert r.status_code == 200, r.text
                np.testing.assert_allclose(_probs(r.json()), expected[lo:lo + 25], atol=1e-5)
            bad = [dict(rows[0]), rows[1] | {"price": "x"}]
            r = http.post("/score", json={"rows": bad})
            assert r.status_code == 422 and r.json()["errors"][0]["row"] == 1
            assert http.post("/score", json={"rows": rows[:101]}).status_code == 413
            assert http.get("/metadata").json()["engine"] == engine
            assert http.get("/healthz").json() == {"status": "ok"}
    finally:
        _stop(proc)


def test_a_port_in_use_is_a_clear_error(shop, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", str(shop["export"]), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "--port" in err and "Traceback" not in err
