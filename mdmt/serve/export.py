"""Export a trained run to ONNX: one graph that scores every unit of the regime with its routing.

The exported folder is self-contained::

    model.onnx         inputs = the encoded Batch tensors (dynamic batch dimension "batch"),
                       output "probs" [batch, T] = sigmoid of each task's logit, schema task order
    feature_map.json   how raw rows are encoded (vocabularies, statistics, column order)
    manifest.json      tasks, domains, input layout, opset, the run's metrics, package versions

Input layout (names and shapes; ``F`` sparse columns, ``Dn`` dense columns, ``L`` a sequence's
``max_len``)::

    sparse         int64   [batch, F]   order = feature_map.sparse
    dense          float32 [batch, Dn]  order = feature_map.dense   (absent when Dn = 0)
    domain         int64   [batch]
    seq__<name>    int64   [batch, L]   one per sequence feature, order = feature_map.sequences
    len__<name>    int64   [batch]

Multi-unit regimes (``mtl``: a model per domain, ``mdl``: a model per task, ``cell``: a model per
(domain, task)) become one graph: every unit's model scores every row and each output column takes
the unit that owns the row's domain and the task (``torch.where`` on a domain mask), exactly as
:meth:`mdmt.train.run.LoadedRun.predict` routes rows. Cells of a skipped unit are NaN.

The exporter is ``torch.onnx.export(dynamo=True)`` (``torch.export`` then the ONNX translation).
Two operators have no standard translation and get one from :mod:`mdmt.serve.onnx_ops`: the
stable sort of rows by domain and the segment GEMM (``mdmt::segment_linear``) of the models that
route every row through its own domain's weights (``m3oe``, ``m2m``).
The legacy TorchScript tracer is not used: on this code base it exported at least one model
(``star``) to a graph that silently disagreed with PyTorch. Every export is checked before it is
written: onnxruntime and PyTorch score a probe batch of another size and must agree to 1e-5.

Example::

    from mdmt.serve.export import export_run
    export_run("runs/demo-mmoe-mdmt-s0-20260101-120000", "exports/demo")
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..batch import Batch
from ..featuremap import FIRST_ID, FeatureMap
from ..models.base import MDMTModel
from . import ServeError

__all__ = [
    "OPSET",
    "ScoringModule",
    "input_names",
    "model_inputs",
    "probe_batch",
    "export_module",
    "export_run",
    "MANIFEST",
    "EXPORT_FORMAT",
]

OPSET = 18
MANIFEST = "manifest.json"
EXPORT_FORMAT = "mdmt-onnx-export"
TOLERANCE = 1e-5


def input_names(fm: FeatureMap) -> list[str]:
    """The scoring module's inputs, in call order (see the module docstring)."""
    names = ["sparse"] + (["dense"] if fm.dense else []) + ["domain"]
    for s in fm.sequences:
        names += [f"seq__{s}", f"len__{s}"]
    return names


def model_inputs(batch: Batch, fm: FeatureMap) -> dict[str, Tensor]:
    """``{input name: tensor}`` of an encoded batch, in :func:`input_names` order."""
    out: dict[str, Tensor] = {"sparse": batch.sparse}
    if fm.dense:
        out["dense"] = batch.dense
    out["domain"] = batch.domain
    for s in fm.sequences:
        out[f"seq__{s}"] = batch.sequences[s]
        out[f"len__{s}"] = batch.seq_lengths[s]
    return out


class ScoringModule(nn.Module):
    """Every unit model of a run plus its routing, as one tensor-only module.

    Args:
        fm: the run's feature map.
        models: one model per unit (``None`` for a skipped unit).
        domains: per unit, the domain indices it owns (``None`` = all).
        tasks: per unit, the schema task indices it scores (``None`` = all, in schema order).

    ``forward(*inputs)`` takes the tensors of :func:`input_names` and returns probabilities
    ``[B, T]`` in schema task order (NaN where no unit owns the cell).
    """

    def __init__(
        self,
        fm: FeatureMap,
        models: list[MDMTModel | None],
        domains: list[list[int] | None],
        tasks: list[list[int] | None],
    ) -> None:
        super().__init__()
        self.fm = fm
        self.num_tasks = fm.spec.num_tasks
        self.has_dense = bool(fm.dense)
        self.sequences = list(fm.sequences)
        keep = [i for i, m in enumerate(models) if m is not None]
        self.units = nn.ModuleList([models[i] for i in keep])
        self.unit_tasks: list[list[int]] = [
            list(range(self.num_tasks)) if tasks[i] is None else list(tasks[i]) for i in keep
        ]
        self.unit_all_domains = [domains[i] is None for i in keep]
        for k, i in enumerate(keep):  # the domains a unit owns, as a buffer (tensor ops only)
            self.register_buffer(f"unit_domains_{k}", torch.tensor(domains[i] or [0], dtype=torch.long),
                                 persistent=False)

    def _batch(self, inputs: tuple[Tensor, ...]) -> Batch:
        it = iter(inputs)
        sparse = next(it)
        size = sparse.shape[0]
        dense = next(it) if self.has_dense else torch.zeros(size, 0)
        domain = next(it)
        seqs, lens = {}, {}
        for s in self.sequences:
            seqs[s], lens[s] = next(it), next(it)
        return Batch(
            sparse=sparse, dense=dense, domain=domain,
            labels=torch.zeros(size, self.num_tasks),
            label_mask=torch.ones(size, self.num_tasks, dtype=torch.bool),
            group=torch.zeros(size, dtype=torch.long),
            sequences=seqs, seq_lengths=lens,
        )

    def forward(self, *inputs: Tensor) -> Tensor:
        batch = self._batch(inputs)
        if len(self.units) == 1 and self.unit_all_domains[0] and self.unit_tasks[0] == list(range(self.num_tasks)):
            # one model for every cell (the mdmt regime): one sigmoid over the stacked logits
            out = self.units[0](batch).logits
            return torch.sigmoid(torch.stack([out[name] for name in self.units[0].task_names], dim=1))  # [B, T]
        nan = torch.full_like(batch.domain, 0, dtype=torch.float32) + float("nan")  # [B]
        cols: list[Tensor] = [nan] * self.num_tasks
        for k, model in enumerate(self.units):
            out = model(batch).logits
            owns = None
            if not self.unit_all_domains[k]:
                doms = getattr(self, f"unit_domains_{k}")
                owns = (batch.domain.unsqueeze(1) == doms.unsqueeze(0)).any(dim=1)  # [B]
            for task_name, t in zip(model.task_names, self.unit_tasks[k]):
                p = torch.sigmoid(out[task_name])  # [B]
                cols[t] = p if owns is None else torch.where(owns, p, cols[t])
        return torch.stack(cols, dim=1)  # [B, T]

    @torch.no_grad()
    def score(self, batch: Batch) -> np.ndarray:
        """Probabilities ``[N, T]`` (float32) of an encoded batch, in eager PyTorch."""
        return self(*model_inputs(batch, self.fm).values()).numpy()


def probe_batch(fm: FeatureMap, size: int, seed: int = 0) -> Batch:
    """Random encoded rows (OOV, known ids, every domain, every sequence length) to trace and check with."""
    g = torch.Generator().manual_seed(seed)
    spec = fm.spec
    sparse = torch.stack([torch.randint(1, fm.vocab_size(f), (size,), generator=g) for f in fm.sparse], 1) \
        if fm.sparse else torch.zeros(size, 0, dtype=torch.long)
    seqs, lens = {}, {}
    for name in fm.sequences:
        f = spec.feature(name)
        ln = torch.randint(0, f.max_len + 1, (size,), generator=g)
        ids = torch.randint(1, max(fm.vocab_size(name), FIRST_ID + 1), (size, f.max_len), generator=g)
        seqs[name] = ids * (torch.arange(f.max_len).unsqueeze(0) < ln.unsqueeze(1))
        lens[name] = ln
    return Batch(
        sparse=sparse, dense=torch.randn(size, len(fm.dense), generator=g),
        domain=torch.arange(size) % spec.num_domains,
        labels=torch.zeros(size, spec.num_tasks), label_mask=torch.ones(size, spec.num_tasks, dtype=torch.bool),
        group=torch.zeros(size, dtype=torch.long), sequences=seqs, seq_lengths=lens,
    )


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's progress lines and warnings (e.g. optional torchvision ops) are not the user's concern."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _summary(err: BaseException) -> str:
    """The exporter's one-line reason (its messages carry pages of advice around it)."""
    text = str(err)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith("## Exception summary") and i + 1 < len(lines):
            return lines[i + 1][:500]
    return f"{type(err).__name__}: {lines[0][:500] if lines else ''}"


def export_module(module: ScoringModule, path: str | Path, opset: int = OPSET, check: bool = True) -> float:
    """Write ``module`` to ``path`` as ONNX with a dynamic batch dimension.

    Returns the largest absolute difference between onnxruntime and PyTorch on a probe batch of
    another size (checked against 1e-5 when ``check``). Raises :class:`ServeError` naming the model
    when it cannot be exported or the exported graph disagrees.
    """
    import onnxruntime as ort

    from .onnx_ops import TRANSLATIONS

    fm = module.fm
    module = module.eval()
    name = ",".join(sorted({type(m).__name__ for m in module.units})) or "no model"
    names = input_names(fm)
    example = tuple(model_inputs(probe_batch(fm, 8, seed=0), fm).values())
    batch_dim = torch.export.Dim("batch", min=1)
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                module, example, str(path), input_names=names, output_names=["probs"], opset_version=opset,
                dynamo=True, dynamic_shapes=(tuple({0: batch_dim} for _ in names),), external_data=False,
                custom_translation_table=TRANSLATIONS,
            )
    except Exception as err:  # the exporter raises many types; the model's name is what the user needs
        raise ServeError(f"model {name} cannot be exported to ONNX: {_summary(err)}") from err
    if not check:
        return float("nan")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for size, seed in ((5, 1), (1, 2)):
        probe = probe_batch(fm, size, seed=seed)
        got = sess.run(None, {k: v.numpy() for k, v in model_inputs(probe, fm).items()})[0]
        ref = module.score(probe)
        if got.shape != ref.shape or not np.array_equal(np.isnan(got), np.isnan(ref)):
            raise ServeError(f"model {name}: the ONNX graph returns {got.shape} (NaN pattern differs) "
                             f"where PyTorch returns {ref.shape}")
        ok = ~np.isnan(ref)
        worst = max(worst, float(np.abs(got[ok] - ref[ok]).max()) if ok.any() else 0.0)
    if worst > TOLERANCE:
        raise ServeError(f"model {name}: onnxruntime and PyTorch differ by {worst:.2e} (> {TOLERANCE}) after export")
    return worst


def _package_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    from .. import __version__

    return {"mdmt": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def input_layout(fm: FeatureMap) -> list[dict[str, Any]]:
    """The manifest's description of every input."""
    out: list[dict[str, Any]] = [{"name": "sparse", "dtype": "int64", "shape": ["batch", len(fm.sparse)],
                                  "columns": list(fm.sparse)}]
    if fm.dense:
        out.append({"name": "dense", "dtype": "float32", "shape": ["batch", len(fm.dense)], "columns": list(fm.dense)})
    out.append({"name": "domain", "dtype": "int64", "shape": ["batch"], "values": list(fm.spec.domain_names)})
    for s in fm.sequences:
        L = fm.spec.feature(s).max_len
        out.append({"name": f"seq__{s}", "dtype": "int64", "shape": ["batch", L], "feature": s})
        out.append({"name": f"len__{s}", "dtype": "int64", "shape": ["batch"], "feature": s})
    return out


def export_run(
    run_dir: str | Path, out_dir: str | Path | None = None, fmt: str = "onnx", opset: int = OPSET, run: Any = None
) -> Path:
    """Export the run in ``run_dir`` to ``out_dir`` (default ``<run_dir>/export-onnx``); returns ``out_dir``.

    The folder is written beside its final place and renamed into it, so a failed export leaves
    nothing half-written; an existing export there is replaced. ``run``: the already loaded run.
    """
    from .engine import load_trained, sequence_separator

    if fmt != "onnx":
        raise ServeError(f"--format {fmt!r} is not supported; the one export format is 'onnx'")
    run = run if run is not None else load_trained(run_dir)
    module = ScoringModule(run.feature_map, run.models, [u.domains for u in run.units], [u.tasks for u in run.units])
    if not module.units:
        raise ServeError(f"{run_dir}: every unit of the run was skipped (no labels to learn from): nothing to export")
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "export-onnx"
    if out.exists() and not (out / MANIFEST).exists() and any(out.iterdir()):
        raise ServeError(f"--out {out} exists and is not an mdmt export folder; choose an empty or new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        worst = export_module(module, tmp / "model.onnx", opset=opset)
        run.feature_map.save(tmp / "feature_map.json")
        metrics_path = Path(run_dir) / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
        spec = run.feature_map.spec
        manifest = {
            "format": EXPORT_FORMAT,
            "format_version": 1,
            "model": run.config.model.name,
            "model_params": run.config.model.params,
            "regime": run.config.train.regime,
            "units": [{"tag": u.tag, "domains": u.domains, "tasks": u.tasks, "skipped": u.skipped} for u in run.units],
            "tasks": spec.task_names,
            "domains": spec.domain_names,
            "inputs": input_layout(run.feature_map),
            "outputs": [{"name": "probs", "dtype": "float32", "shape": ["batch", spec.num_tasks],
                         "meaning": "probability (sigmoid of the logit) per task; NaN where no unit scores the cell",
                         "tasks": spec.task_names}],
            "opset": opset,
            "sequence_separator": sequence_separator(run.config),
            "exporter": "torch.onnx.export(dynamo=True)",
            "max_abs_diff_vs_torch": worst,
            "versions": _package_versions(),
            "run": {"name": run.config.name, "dir_name": Path(run_dir).resolve().name},
            "metrics": metrics,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
