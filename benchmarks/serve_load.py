"""Load test of ``mdmt serve``: throughput under concurrency and one-at-a-time latency, both engines.

For each engine (``torch`` on the run directory, ``onnx`` on its export), this script starts
``mdmt serve`` as a subprocess on a free loopback port (127.0.0.1) and measures:

1. **Throughput**: ``--requests`` requests (default 10,000) sent by ``--concurrency`` concurrent
   clients (default 32) over keep-alive connections, at batch 1 and at batch 64 rows per request;
   ``--malformed`` of them (default 10 %) carry one bad row (a domain that does not exist, text in
   a number field, or a missing field). Reported: requests/s and scored rows/s (valid requests
   only), and the status codes. Asserted: no 5xx, every malformed request answered 422, every
   valid one 200.
2. **Latency**, one request at a time (``--latency-requests`` valid requests after a warm-up): p50
   and p99 of the client-side time at batch 1 and batch 64, split by the service's
   ``Server-Timing`` header into validation, encoding and the model; the rest (HTTP, JSON, the
   client) is reported as "http".

The model: MMoE on the demo schema (the ``mdmt demo`` config: synthetic douyin preset, 2 domains,
6 tasks), trained for one epoch on ``--train-rows`` rows unless ``--run-dir`` names a finished run;
``--model`` trains another registered model instead (PMTA joins the table with the same bar).
The bar (issue 15): p99 under 5 ms at batch 1 with onnxruntime. The server and this client share
the machine's cores; the service runs with ``--threads`` intra-op threads (default 1).

Results are printed and written to ``results/serve_load.json`` beside this file.

Run::

    python benchmarks/serve_load.py
    python benchmarks/serve_load.py --requests 2000 --latency-requests 300    # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

try:
    import mdmt  # noqa: F401
except ImportError:  # run from a source checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, describe_line  # noqa: E402
from predict_speed import demo_config, train_demo  # noqa: E402

from mdmt.data import load_raw  # noqa: E402
from mdmt.serve.export import export_run  # noqa: E402
from mdmt.serve.score import raw_columns  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def demo_rows(n: int, tmp: Path) -> tuple[list[dict[str, Any]], str, str]:
    """``n`` raw demo rows as JSON-ready dicts (seed 2: some ids unseen), the domain column and a dense column."""
    raw = load_raw(demo_config(n, 2, tmp).data)
    frame = raw.frame.select(raw_columns(raw.spec))
    dense = next(f.raw_column for f in raw.spec.features if f.kind == "dense")
    return frame.to_dicts(), raw.spec.domain.column, dense


def spoil(row: dict[str, Any], k: int, domain_col: str, dense_col: str) -> dict[str, Any]:
    """One of three kinds of malformed row."""
    bad = dict(row)
    if k % 3 == 0:
        bad[domain_col] = "no-such-domain"
    elif k % 3 == 1:
        bad[dense_col] = "not a number"
    else:
        bad.pop(domain_col)
    return bad


def payloads(rows: list[dict], batch: int, count: int, malformed: float, domain_col: str, dense_col: str,
             seed: int = 0) -> list[tuple[bytes, bool]]:
    """``count`` request bodies of ``batch`` rows; a share ``malformed`` has one bad row (flag True)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        start = rng.randrange(0, len(rows) - batch)
        chunk = rows[start:start + batch]
        bad = rng.random() < malformed
        if bad:
            j = rng.randrange(batch)
            chunk = chunk[:j] + [spoil(chunk[j], i, domain_col, dense_col)] + chunk[j + 1:]
        out.append((json.dumps({"rows": chunk}).encode(), bad))
    return out


class Server:
    """``mdmt serve`` in a subprocess on 127.0.0.1 and a free port (``--port 0``)."""

    def __init__(self, target: Path, engine: str, threads: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mdmt", "serve", str(target), "--engine", engine, "--host", "127.0.0.1",
             "--port", "0", "--threads", str(threads)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline, line = time.monotonic() + 180, ""
        assert self.proc.stdout is not None
        while time.monotonic() < deadline and "listening on" not in line:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mdmt serve exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.stop()
            raise RuntimeError("mdmt serve did not start within 180 s")
        self.url = line.split()[2]
        for _ in range(200):
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("mdmt serve does not answer /healthz")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


def _request(host: str, body: bytes) -> bytes:
    return (f"POST /score HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


async def _load(url: str, bodies: list[tuple[bytes, bool]], concurrency: int) -> tuple[list[tuple[int, bool]], float]:
    """A small keep-alive HTTP/1.1 client on asyncio streams (a general-purpose async client costs
    more CPU per request than the service itself, on the same cores)."""
    hostport = url.split("//", 1)[1]
    host, port = hostport.rsplit(":", 1)
    results: list[tuple[int, bool]] = []
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    body, bad = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                writer.write(_request(hostport, body))
                await writer.drain()
                status, headers = _parse_head((await reader.readuntil(b"\r\n\r\n"))[:-4])
                await reader.readexactly(int(headers.get("content-length", "0")))
                results.append((status, bad))
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - t0


def throughput(url: str, bodies: list[tuple[bytes, bool]], batch: int, concurrency: int) -> dict[str, Any]:
    results, seconds = asyncio.run(_load(url, bodies, concurrency))
    codes: dict[str, int] = {}
    for code, _ in results:
        codes[str(code)] = codes.get(str(code), 0) + 1
    five = sum(1 for c, _ in results if c >= 500)
    bad_not_422 = sum(1 for c, bad in results if bad and c != 422)
    good_not_200 = sum(1 for c, bad in results if not bad and c != 200)
    valid = sum(1 for _, bad in results if not bad)
    return {
        "batch": batch, "requests": len(results), "malformed": sum(1 for _, b in results if b), "seconds": seconds,
        "requests_per_s": len(results) / seconds, "rows_per_s": valid * batch / seconds, "status_codes": codes,
        "responses_5xx": five, "malformed_not_422": bad_not_422, "valid_not_200": good_not_200,
    }


def latency(url: str, bodies: list[tuple[bytes, bool]], batch: int, warmup: int = 50) -> dict[str, Any]:
    """One request at a time on one keep-alive connection (a blocking socket: the least client time)."""
    valid = [b for b, bad in bodies if not bad]
    total, parts = [], {"validate": [], "encode": [], "model": []}
    hostport = url.split("//", 1)[1]
    host, port = hostport.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, body in enumerate(valid):
            req = _request(hostport, body)
            t0 = time.perf_counter()
            sock.sendall(req)
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += sock.recv(1 << 16)
            head, rest = buf.split(b"\r\n\r\n", 1)
            status, headers = _parse_head(head)
            need = int(headers.get("content-length", "0"))
            while len(rest) < need:
                rest += sock.recv(1 << 16)
            dt = (time.perf_counter() - t0) * 1e3
            assert status == 200, rest[:300]
            if i < warmup:
                continue
            total.append(dt)
            timing = dict(p.strip().split(";dur=") for p in headers["server-timing"].split(","))
            for k in parts:
                parts[k].append(float(timing[k]))
    t = np.array(total)
    server = sum(np.array(v) for v in parts.values())
    http = t - server
    out = {"batch": batch, "requests": len(t), "p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)),
           "mean_ms": float(t.mean())}
    for k, v in list(parts.items()) + [("http", list(http))]:
        a = np.array(v)
        out[f"{k}_p50_ms"] = float(np.percentile(a, 50))
        out[f"{k}_share"] = float(a.mean() / t.mean())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=10_000, help="requests per throughput run (default 10,000)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--malformed", type=float, default=0.10, help="share of malformed requests (default 0.10)")
    ap.add_argument("--latency-requests", type=int, default=1000, help="one-at-a-time requests per latency run")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--engines", nargs="+", default=["torch", "onnx"])
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of the service (default 1)")
    ap.add_argument("--train-rows", type=int, default=100_000)
    ap.add_argument("--run-dir", default=None, help="a finished demo run (skip training)")
    ap.add_argument("--model", default="mmoe", help="registered model trained on the demo schema (default mmoe)")
    ap.add_argument("--out", default=str(RESULTS / "serve_load.json"))
    args = ap.parse_args(argv)

    load_before = os.getloadavg()[0]
    report: dict[str, Any] = {"benchmark": "serve_load", "model": None, "schema": "demo (synthetic douyin preset)",
                              "concurrency": args.concurrency, "malformed_share": args.malformed,
                              "service_threads": args.threads, "throughput": [], "latency": []}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mdmt-serve-load-") as tmp_name:
        tmp = Path(tmp_name)
        run_dir = Path(args.run_dir) if args.run_dir else train_demo(args.train_rows, tmp, args.model)
        export_dir = export_run(run_dir, tmp / "export")
        report["model"] = json.loads((export_dir / "manifest.json").read_text())["model"]
        rows, domain_col, dense_col = demo_rows(20_000, tmp)
        for engine in args.engines:
            server = Server(export_dir if engine == "onnx" else run_dir, engine, args.threads)
            try:
                for batch in args.batches:
                    bodies = payloads(rows, batch, args.requests, args.malformed, domain_col, dense_col, seed=batch)
                    r = throughput(server.url, bodies, batch, args.concurrency) | {"engine": engine}
                    report["throughput"].append(r)
                    print(f"{engine:5s} batch {batch:3d}: {r['requests_per_s']:8,.0f} requests/s {r['rows_per_s']:10,.0f} rows/s "
                          f"codes {r['status_codes']}")
                    for key in ("responses_5xx", "malformed_not_422", "valid_not_200"):
                        if r[key]:
                            failures.append(f"{engine} batch {batch}: {r[key]} {key}")
                    lat_bodies = payloads(rows, batch, args.latency_requests + 50, 0.0, domain_col, dense_col, seed=100 + batch)
                    lt = latency(server.url, lat_bodies, batch) | {"engine": engine}
                    report["latency"].append(lt)
                    print(f"{engine:5s} batch {batch:3d}: p50 {lt['p50_ms']:.2f} ms p99 {lt['p99_ms']:.2f} ms "
                          f"(shares: validate {lt['validate_share']:.0%}, encode {lt['encode_share']:.0%}, "
                          f"model {lt['model_share']:.0%}, http {lt['http_share']:.0%})")
            finally:
                server.stop()
    bar = [x for x in report["latency"] if x["engine"] == "onnx" and x["batch"] == 1]  # the same bar for every model
    report["bar"] = {"p99_ms_batch1_onnx": bar[0]["p99_ms"] if bar else None, "target_ms": 5.0,
                     "met": bool(bar and bar[0]["p99_ms"] < 5.0)}
    m = describe()
    report.update(machine=m, machine_line=describe_line(m),
                  load_average_1min={"before": load_before, "after": os.getloadavg()[0]}, failures=failures)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"bar p99 < 5 ms at batch 1 (onnx): {'met' if report['bar']['met'] else 'NOT met'} "
          f"({report['bar']['p99_ms_batch1_onnx']})")
    print(f"machine: {describe_line(m)}; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after\n"
          f"wrote {args.out}")
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
