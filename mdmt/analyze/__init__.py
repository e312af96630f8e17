"""``mdmt analyze RUN_DIR``: what a trained PMTA run learned, as JSON numbers and PNG plots.

:mod:`mdmt.analyze.pmta` computes (attention maps per domain and layer, DAR scale distributions
per domain, prompt norms), :mod:`mdmt.analyze.plots` renders; :func:`analyze_run` ties them to a
run directory.

Example::

    mdmt analyze runs/ml100k-temporal-pmta-pmta-mdmt-s0-20260101-120000 --split test
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..schema import ConfigError
from .pmta import PMTAAnalysis, analyze_model

__all__ = ["AnalyzeOutput", "analyze_run", "PMTAAnalysis", "analyze_model"]


@dataclass
class AnalyzeOutput:
    """What :func:`analyze_run` wrote: ``json`` and the PNGs, and the analyses per unit tag."""

    json: Path
    pngs: list[Path] = field(default_factory=list)
    analyses: dict[str, PMTAAnalysis] = field(default_factory=dict)


def analyze_run(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    split: str = "test",
    data_dir: str | None = None,
    max_rows: int | None = 50_000,
    seed: int = 0,
) -> AnalyzeOutput:
    """Analyse a finished ``pmta`` run on one split of its data and write the results.

    Args:
        run_dir: a run directory written by ``mdmt train`` with ``model.name: pmta``.
        out: where to write (default: ``run_dir``): ``analysis.json``, ``attention.png``,
            ``dar_scales.png``, ``prompt_norms.png`` (suffixed ``-<unit>`` when a regime trains
            several models).
        split: ``train``, ``valid`` or ``test``.
        data_dir: root of local data sets (default: ``MDMT_DATA_DIR``).
        max_rows: analyse at most this many rows of the split (a seeded random subset); None = all.
        seed: seed of that subset.

    Raises:
        FileNotFoundError: ``run_dir`` is not a finished run directory.
        ConfigError: the run is not of model ``pmta``, or its data changed since training.
    """
    from ..data import load_prepared
    from ..train.run import _rows, _subset, load_run
    from .plots import plot_attention, plot_dar_scales, plot_prompt_norms

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    run = load_run(run_dir)
    if run.config.model.name != "pmta":
        raise ConfigError(
            f"{run_dir / 'config.yaml'}: the run is of model {run.config.model.name!r}; "
            "mdmt analyze reads runs of model 'pmta'"
        )
    prepared = load_prepared(run.config.data, data_dir=data_dir, progress=False)
    if prepared.feature_map.model_dump() != run.feature_map.model_dump():
        raise ConfigError(f"{run_dir / 'feature_map.json'}: the data no longer matches the run; analyse it on the data it was trained on")
    data = prepared.splits[split]
    if max_rows is not None and len(data) > max_rows:
        g = torch.Generator().manual_seed(seed)
        data = data.index(torch.randperm(len(data), generator=g)[:max_rows].sort().values)
    spec = run.feature_map.spec
    out_dir = Path(out) if out is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    result = AnalyzeOutput(json=out_dir / "analysis.json")
    live = [(u, m) for u, m in zip(run.units, run.models) if m is not None]
    for unit, model in live:
        sub = _subset(data, _rows(data, unit.domains), unit.tasks)
        res = analyze_model(model, sub, spec.domain_names)  # type: ignore[arg-type]
        result.analyses[unit.tag] = res
        suffix = "" if len(live) == 1 else f"-{unit.tag}"
        title = f"{run.config.name} ({unit.tag}, {split})"
        for fn, name, what in ((plot_attention, "attention", "task × task attention, mean over rows and heads"),
                               (plot_dar_scales, "dar_scales", "DAR scales per domain"),
                               (plot_prompt_norms, "prompt_norms", "prompt and token norms")):
            path = fn(res, out_dir / f"{name}{suffix}.png", title=f"PMTA {what}: {title}")
            if path is not None:
                result.pngs.append(path)
    payload = {
        "run_dir": str(run_dir),
        "split": split,
        "rows": len(data),
        "units": {tag: a.to_dict() for tag, a in result.analyses.items()},
    }
    tmp = result.json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(result.json)
    return result
