"""A bench entry warm-started from another entry's run of the same seed (PMTA §2.4 in a bench table)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mdmt.bench import BenchConfig, BenchEntry, BenchWarmStart, CellKey, run_bench
from mdmt.bench.harness import cell_experiment, cell_fingerprint, cell_run_dir, cell_states
from mdmt.config import DataConfig, TrainConfig

BASE = {"backbone": "mlp", "backbone_params": {"hidden": [8]}, "tower_hidden": [4]}
PMTA = {**BASE, "width": 8, "num_heads": 2, "num_layers": 1, "prompt_dim": 4, "tpe_hidden": 4}


def _cfg(tmp_path: Path, freeze: bool = True, **kw) -> BenchConfig:
    base = dict(
        name="warm",
        datasets={"tiny": DataConfig(source="synthetic", params={"preset": "douyin", "rows": 2500, "seed": 0})},
        entries=[
            BenchEntry(label="ShBot", model="sharedbottom", params=BASE),
            BenchEntry(label="PMTA warm", model="pmta", params=PMTA,
                       warm_start=BenchWarmStart(entry="ShBot", freeze=freeze)),
        ],
        seeds=[0],
        train=TrainConfig(epochs=1, batch_size=512, lr=0.01, patience=0),
        baseline="ShBot",
        output_dir=str(tmp_path / "out"),
    )
    base.update(kw)
    return BenchConfig(**base)


def _best(run_dir: Path) -> dict[str, torch.Tensor]:
    (ckpt,) = sorted((run_dir / "checkpoints").glob("*-best.pt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    return state["model"] if "model" in state else state


def test_warm_started_cell_names_its_source_run_and_depends_on_its_config(tmp_path):
    cfg = _cfg(tmp_path)
    key = CellKey("tiny", "PMTA warm", 0)
    ws = cell_experiment(cfg, key).train.warm_start
    assert ws is not None and ws.freeze
    assert Path(ws.run_dir) == cell_run_dir(cfg, CellKey("tiny", "ShBot", 0))
    assert cell_experiment(cfg, CellKey("tiny", "ShBot", 0)).train.warm_start is None
    # changing only the source entry changes the warm-started run's fingerprint
    other = _cfg(tmp_path, entries=[
        BenchEntry(label="ShBot", model="sharedbottom", params={**BASE, "tower_hidden": [6]}),
        cfg.entries[1],
    ])
    assert cell_experiment(other, key) .train == cell_experiment(cfg, key).train
    assert cell_fingerprint(other, key) != cell_fingerprint(cfg, key)


@pytest.mark.parametrize("entries, match", [
    ([BenchEntry(label="P", model="pmta", warm_start=BenchWarmStart(entry="X"))], "not an entry label"),
    ([BenchEntry(label="P", model="pmta", warm_start=BenchWarmStart(entry="S")),
      BenchEntry(label="S", model="sharedbottom")], "must come before it"),
    ([BenchEntry(label="S", model="sharedbottom", regime="mtl"),
      BenchEntry(label="P", model="pmta", warm_start=BenchWarmStart(entry="S"))], "regime"),
    ([BenchEntry(label="S", model="sharedbottom"),
      BenchEntry(label="P", model="pmta", warm_start=BenchWarmStart(entry="S"),
                 train={"warm_start": {"run_dir": "x"}})], "entry.warm_start"),
])
def test_bad_warm_start_entries_are_refused_with_the_reason(tmp_path, entries, match):
    with pytest.raises(ValueError, match=match):
        _cfg(tmp_path, entries=entries, baseline="best")


def test_warm_started_entry_loads_the_source_seed_and_keeps_frozen_weights(tmp_path):
    cfg = _cfg(tmp_path)
    res = run_bench(cfg, progress=False, report=False)
    src_dir, dst_dir = cell_run_dir(cfg, CellKey("tiny", "ShBot", 0)), cell_run_dir(cfg, CellKey("tiny", "PMTA warm", 0))
    src, dst = _best(src_dir), _best(dst_dir)
    shared = [n for n in src if n in dst and src[n].shape == dst[n].shape]
    assert any(n.startswith("backbone") or ".backbone" in n for n in shared)
    for n in shared:  # frozen: the loaded tensors are bit-identical after training
        assert torch.equal(src[n], dst[n]), n
    assert len(res.records) == 2

    # a fresh clone keeps the records but not the runs: resuming a changed warm-started entry
    # trains its source again first, then the entry
    shutil.rmtree(tmp_path / "out" / "runs")
    cfg2 = _cfg(tmp_path, freeze=False)
    states = cell_states(cfg2)
    assert states[CellKey("tiny", "ShBot", 0)][0] == "done"
    assert states[CellKey("tiny", "PMTA warm", 0)][0] == "changed"
    res2 = run_bench(cfg2, progress=False, report=False)
    assert res2.ran == [CellKey("tiny", "ShBot", 0), CellKey("tiny", "PMTA warm", 0)]
    assert _best(dst_dir).keys() == dst.keys()


def test_an_identical_run_of_another_bench_is_copied_not_trained(tmp_path):
    from mdmt.bench import run_bench as run
    from mdmt.bench.harness import BenchEntry as E

    entries = [E(label="ShBot", model="sharedbottom", params=BASE)]
    first = _cfg(tmp_path, entries=entries, output_dir=str(tmp_path / "results" / "a"))
    run(first, progress=False, report=False)
    # another bench beside it: the same run under another label, and a run of another configuration
    second = _cfg(tmp_path, entries=[E(label="SB again", model="sharedbottom", params=BASE),
                                     E(label="SB wider", model="sharedbottom", params={**BASE, "tower_hidden": [6]})],
                  baseline="SB again", output_dir=str(tmp_path / "results" / "b"))
    res = run(second, progress=False, report=False)
    assert res.copied == [CellKey("tiny", "SB again", 0)]
    assert res.ran == [CellKey("tiny", "SB wider", 0)]
    rec = res.records[CellKey("tiny", "SB again", 0)]
    orig = res.records[CellKey("tiny", "SB again", 0)]["copied_from"]
    assert orig == "a/cells/tiny__shbot__seed0.json"
    assert rec["label"] == "SB again" and rec["bench"] == second.name
    assert rec["test"] == run(first, progress=False, report=False).records[CellKey("tiny", "ShBot", 0)]["test"]
    # the copy counts as finished: nothing runs again
    again = run(second, progress=False, report=False)
    assert again.ran == [] and again.copied == []
    # reuse off: trained
    third = second.model_copy(update={"reuse": False, "output_dir": str(tmp_path / "results" / "c")})
    assert run(third, progress=False, report=False).copied == []


def test_the_same_warm_start_in_another_bench_is_the_same_run(tmp_path):
    """Where a bench writes is not a setting: a warm-started run's fingerprint names its source by the
    source's configuration, not by the path of the source's run directory."""
    key = CellKey("tiny", "PMTA warm", 0)
    a = _cfg(tmp_path, output_dir=str(tmp_path / "results" / "a"))
    b = _cfg(tmp_path, name="warm elsewhere", output_dir=str(tmp_path / "results" / "b"))
    assert cell_experiment(a, key).train.warm_start.run_dir != cell_experiment(b, key).train.warm_start.run_dir
    assert cell_fingerprint(a, key) == cell_fingerprint(b, key)
    # what the warm start does still counts: freezing or not, and the source's own configuration
    assert cell_fingerprint(_cfg(tmp_path, freeze=False, output_dir=a.output_dir), key) != cell_fingerprint(a, key)
    wider = _cfg(tmp_path, output_dir=a.output_dir, entries=[
        BenchEntry(label="ShBot", model="sharedbottom", params={**BASE, "tower_hidden": [6]}), a.entries[1]])
    assert cell_fingerprint(wider, key) != cell_fingerprint(a, key)

    first = run_bench(a, progress=False, report=False)
    second = run_bench(b, progress=False, report=False)
    # the source is trained again (its weights must be in this bench's own run directory); the
    # warm-started run is copied from the first bench
    assert second.ran == [CellKey("tiny", "ShBot", 0)] and second.copied == [key]
    assert second.records[key]["test"] == first.records[key]["test"]
    # the retrained source is the same run, so what was copied is what this bench would have trained
    assert second.records[CellKey("tiny", "ShBot", 0)]["test"] == first.records[CellKey("tiny", "ShBot", 0)]["test"]
