"""The HTTP scoring service (``mdmt serve``): FastAPI on uvicorn.

Endpoints:

* ``POST /score``: ``{"rows": [{raw column: value, ...}, ...]}`` -> ``{"model", "tasks",
  "predictions": [{task: probability, ...}, ...]}`` in row order (``null`` where the run has no
  model for the row's (domain, task) cell). Rows are validated by a pydantic model generated from
  the feature map (:func:`mdmt.serve.rows.row_model`); unseen ids score through the OOV row.
* ``GET /healthz``: ``{"status": "ok"}``.
* ``GET /metadata``: model, regime, engine, tasks, domains, features (raw column, kind, vocabulary
  size), the training run's metrics, the request limits.

Errors: a malformed body or row -> 422 with ``{"message", "errors": [{"row", "field", "message"}]}``
naming the first bad row and its field; more than ``max_rows`` rows or a body over ``max_bytes``
-> 413; anything unexpected while scoring -> 500 with a message, and the worker keeps serving.

Each ``/score`` answer carries a ``Server-Timing`` header (``validate``, ``encode``, ``model`` in
milliseconds) so a client can split its latency into these and the HTTP layer.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import socket
import sys
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from ..data.base import DataError
from ..data.records import RecordEncoder
from . import ServeError
from .engine import Scorer, open_scorer
from .rows import request_model

__all__ = ["create_app", "serve", "bind"]

log = logging.getLogger("mdmt.serve")
#: requests up to this many rows are encoded by the record encoder (no Polars query overhead), larger
#: ones by the frame encoder; both give the same batch
RECORD_ROWS = 256


def _errors(err: ValidationError) -> list[dict[str, Any]]:
    out, seen = [], set()
    for e in err.errors(include_url=False):
        loc = list(e.get("loc", ()))
        row = loc[1] if len(loc) > 1 and loc[0] == "rows" and isinstance(loc[1], int) else None
        rest = loc[2:] if row is not None else loc
        field = str(rest[0]) if rest else ("rows" if loc == ["rows"] else None)
        if (row, field) in seen:  # one message per (row, field)
            continue
        seen.add((row, field))
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        out.append({"row": row, "field": field, "message": msg})
    return out


def _describe(first: dict[str, Any]) -> str:
    where = []
    if first["row"] is not None:
        where.append(f"row {first['row']}")
    if first["field"] is not None:
        where.append(f"field {first['field']!r}")
    return (", ".join(where) + ": " if where else "") + first["message"]


def _metadata(scorer: Scorer, max_rows: int, max_bytes: int) -> dict[str, Any]:
    fm = scorer.feature_map
    spec = fm.spec
    features = []
    for f in spec.features:
        item: dict[str, Any] = {"name": f.name, "column": f.raw_column, "kind": f.kind, "source": f.source}
        if f.kind == "sequence":
            item["max_len"] = f.max_len
        if f.kind != "dense" or f.transform == "bucketize":
            item["vocab_size"] = fm.vocab_size(f.name)
        features.append(item)
    meta = dict(scorer.metadata)
    meta.update({
        "engine": scorer.engine,
        "tasks": spec.task_names,
        "domains": spec.domain_names,
        "domain_column": spec.domain.column,
        "features": features,
        "limits": {"max_rows": max_rows, "max_bytes": max_bytes},
    })
    return meta


def create_app(scorer: Scorer, max_rows: int = 10_000, max_bytes: int = 8 * 2**20):
    """The FastAPI app serving ``scorer`` (see the module docstring)."""
    from ..data.preprocess import encode_for_scoring

    fm = scorer.feature_map
    Request_ = request_model(fm.spec)
    encoder = RecordEncoder(fm)
    tasks = fm.spec.task_names
    metadata = _metadata(scorer, max_rows, max_bytes)
    app = FastAPI(title="mdmt scoring service", version=str(metadata.get("versions", {}).get("mdmt", "")),
                  docs_url=None, redoc_url=None, openapi_url=None)

    def fail(status: int, message: str, errors: list | None = None) -> JSONResponse:
        body: dict[str, Any] = {"message": message}
        if errors is not None:
            body["errors"] = errors
        return JSONResponse(body, status_code=status)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metadata")
    def get_metadata() -> dict[str, Any]:
        return metadata

    async def score(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            return fail(413, f"request body of {int(declared):,} bytes is over the limit of {max_bytes:,} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                return fail(413, f"request body is over the limit of {max_bytes:,} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        t0 = time.perf_counter()
        try:
            raw = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            return fail(422, f"the body is not valid JSON ({err})", [{"row": None, "field": None, "message": str(err)}])
        if isinstance(raw, dict) and isinstance(raw.get("rows"), list) and len(raw["rows"]) > max_rows:
            return fail(413, f"{len(raw['rows']):,} rows is over the limit of {max_rows:,} rows per request")
        try:
            rows = Request_.model_validate(raw).model_dump(by_alias=True)["rows"]
        except ValidationError as err:
            errors = _errors(err)
            return fail(422, _describe(errors[0]), errors)
        t1 = time.perf_counter()
        try:
            if len(rows) <= RECORD_ROWS:
                batch = encoder.encode(rows)
            else:
                import polars as pl

                batch = encode_for_scoring(pl.DataFrame(rows, infer_schema_length=None), fm, source="request")
            t2 = time.perf_counter()
            probs = scorer.score(batch)
            t3 = time.perf_counter()
        except DataError as err:  # a row the encoder rejects although it validated
            return fail(422, str(err), [{"row": None, "field": None, "message": str(err)}])
        except Exception as err:  # never take the worker down: answer 500 and keep serving
            log.exception("scoring failed")
            return fail(500, f"scoring failed: {type(err).__name__}: {err}")
        preds = [{t: (None if math.isnan(v) else v) for t, v in zip(tasks, row)} for row in probs.astype(np.float64).tolist()]
        payload = json.dumps({"model": metadata.get("model"), "tasks": tasks, "predictions": preds})
        timing = f"validate;dur={(t1 - t0) * 1e3:.3f}, encode;dur={(t2 - t1) * 1e3:.3f}, model;dur={(t3 - t2) * 1e3:.3f}"
        return Response(payload, media_type="application/json", headers={"Server-Timing": timing})

    # a plain Starlette route: the endpoint reads the raw request itself, so FastAPI's parameter
    # resolution (about a tenth of a one-row request's time in the service) has nothing to do
    app.router.add_route("/score", score, methods=["POST"])
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (``port`` 0: any free port); a clear ServeError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: a response written as headers then body must not wait for
    # the client's delayed ACK (~40 ms per request otherwise)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {err.strerror or err}; "
                         f"choose another --port (or --port 0 for any free one)") from err
    sock.listen(2048)
    return sock


def _fast_io() -> dict[str, str]:
    """uvloop and the httptools parser when installed (the ``serve`` extra installs both): about a
    quarter of the per-request time of the pure-Python h11 parser on the default event loop."""
    import importlib.util

    out = {}
    if importlib.util.find_spec("uvloop") is not None:
        out["loop"] = "uvloop"
    if importlib.util.find_spec("httptools") is not None:
        out["http"] = "httptools"
    return out


def serve(
    path: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    engine: str | None = None,
    max_rows: int = 10_000,
    max_bytes: int = 8 * 2**20,
    threads: int | None = None,
) -> None:
    """Load ``path`` (run directory or export folder), bind ``host:port`` and serve until interrupted.

    Prints ``listening on http://HOST:PORT`` once the socket is bound (with ``--port 0`` that
    line names the port the system chose).
    """
    import uvicorn

    if max_rows < 1 or max_bytes < 1:
        raise ServeError(f"--max-rows and --max-bytes must be positive (got {max_rows}, {max_bytes})")
    scorer = open_scorer(path, engine=engine, threads=threads)
    app = create_app(scorer, max_rows=max_rows, max_bytes=max_bytes)
    # what is loaded now (the libraries, the model, the app) lives as long as the process: keep
    # it out of the garbage collector's full passes, whose pause would land on some request
    gc.collect()
    gc.freeze()
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on http://{shown}:{bound} ({scorer.metadata.get('model')}, engine {scorer.engine})", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", **_fast_io())
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    sys.stdout.flush()
