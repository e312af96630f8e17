"""What a bench would train (``mdmt bench --status``) and which records its report may show."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mdmt.bench import BenchConfig, BenchEntry, CellKey, run_bench
from mdmt.bench.harness import _duration, cell_path, cell_states, grid_status, same_configuration
from mdmt.bench.report import grid_records
from mdmt.cli import main
from mdmt.config import DataConfig, TrainConfig

TINY = DataConfig(source="synthetic", params={"preset": "douyin", "rows": 2500, "seed": 0})


def _cfg(out: Path, hidden: int = 8) -> BenchConfig:
    return BenchConfig(
        name="status",
        datasets={"tiny": TINY},
        entries=[BenchEntry(label="MLP", model="mlp", regime="cell", params={"hidden": [8]}),
                 BenchEntry(label="ShBot", model="sharedbottom", params={"tower_hidden": [hidden]})],
        seeds=[0],
        train=TrainConfig(epochs=1, batch_size=512, lr=0.01, patience=0),
        baseline="MLP",
        reuse=False,
        output_dir=str(out),
    )


def test_status_report_and_states_after_an_entry_and_the_code_change(tmp_path):
    out = tmp_path / "b"
    cfg = _cfg(out)
    run_bench(cfg, progress=False, report=False)
    sb, mlp = CellKey("tiny", "ShBot", 0), CellKey("tiny", "MLP", 0)
    assert "2 of 2 runs finished, 0 to train" in grid_status(cfg)

    # the entry changed: its record is neither finished nor reported under the new settings
    changed = _cfg(out, hidden=6)
    assert cell_states(changed)[sb][0] == "changed"
    status = grid_status(changed)
    assert "ShBot: 0 of 1 finished; 1 to train (1 of another configuration)\n" in status
    assert "plus 1 run(s) of entries with no run on record to estimate from" in status
    assert [r["label"] for r in grid_records(changed)] == ["MLP"]
    assert [r["label"] for r in grid_records(cfg)] == ["MLP", "ShBot"]

    # a record of older code, whose configuration had fewer settings: the same configuration, made by
    # other code (stale, trained again by a run, but still reported with the code that made it)
    path = cell_path(out, mlp)
    rec = json.loads(path.read_text())
    del rec["experiment"]["train"]["arch_every"]
    rec.update(fingerprint="0" * 64, code={"mdmt": "0.0.1", "code": "f" * 16})
    path.write_text(json.dumps(rec))
    assert same_configuration(cfg, mlp, rec)
    assert cell_states(cfg)[mlp][0] == "stale"
    status = grid_status(cfg)
    # the time left is estimated from the wall time of the run on record
    assert f"MLP: 0 of 1 finished; 1 to train (1 made by other code), about {_duration(rec['wall_seconds'])}" in status
    assert "mdmt 0.0.1, code ffffffffffffffff (1)" in status
    assert [r["label"] for r in grid_records(cfg)] == ["MLP", "ShBot"]
    # ... but a setting it states with another value is another configuration
    rec["experiment"]["train"]["lr"] = 0.5
    path.write_text(json.dumps(rec))
    assert not same_configuration(cfg, mlp, rec)
    assert cell_states(cfg)[mlp][0] == "changed"
    assert [r["label"] for r in grid_records(cfg)] == ["ShBot"]


def test_cli_status_trains_nothing_and_report_only_records_its_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(Path("b"))
    Path("bench.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_defaults=True)))
    assert main(["bench", "bench.yaml", "--status"]) == 0
    assert "0 of 2 runs finished, 2 to train" in capsys.readouterr().out
    assert not Path("b", "cells").exists()
    assert main(["bench", "bench.yaml", "--quiet"]) == 0
    # a report-only from a config with one entry less: meta.json now states that config
    cfg2 = cfg.model_copy(update={"entries": cfg.entries[:1]})
    Path("bench2.yaml").write_text(yaml.safe_dump(cfg2.model_dump(mode="json", exclude_defaults=True)))
    assert main(["bench", "bench2.yaml", "--report-only", "--quiet"]) == 0
    meta = json.loads(Path("b", "meta.json").read_text())
    assert [e["label"] for e in meta["config"]["entries"]] == ["MLP"] and meta["config_path"] == "bench2.yaml"
    assert "ShBot" not in Path("b", "results.md").read_text()
