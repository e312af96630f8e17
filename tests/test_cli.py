"""The command line end to end on a small bring-your-own-data table: train, evaluate, predict
(unseen ids included), data prepare/stats, models, --help, and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from mdmt.cli import main
from mdmt.models import REGISTRY

from .shop import shop_table, write_project

@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path)


def test_train_evaluate_predict(project: Path, capsys):
    run_dir = project / "runs" / "r1"
    assert main(["train", str(project / "exp.yaml"), "--run-dir", str(run_dir)]) == 0
    for name in ("config.yaml", "feature_map.json", "metrics.json", "report.md", "heatmap_test_auc.png",
                 "training_curves.png",
                 "predictions_test.parquet", "checkpoints/all-best.pt"):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cells = {(c["domain"], c["task"]) for c in metrics["test"]["cells"]}
    assert ("home", "click") in cells and ("search", "order") in cells
    home_order = [c for c in metrics["test"]["cells"] if c["domain"] == "home" and c["task"] == "order"][0]
    assert home_order["auc"] is None and home_order["reason"]  # never observed there: NaN + reason
    out = capsys.readouterr().out
    assert "click" in out and "home" in out

    assert main(["evaluate", str(run_dir), "--split", "test"]) == 0
    assert "avg AUC" in capsys.readouterr().out

    new = shop_table(50, seed=9).with_columns(pl.col("user_id") + 10_000)  # unseen users -> OOV, no crash
    new = new.drop("click", "order")
    new.write_csv(project / "new.csv")
    assert main(["predict", str(run_dir), str(project / "new.csv"), "--out", str(project / "s.parquet"),
                 "--keep", "user_id"]) == 0
    scores = pl.read_parquet(project / "s.parquet")
    assert scores.columns == ["row", "user_id", "click", "order"]
    assert scores.height == 50 and scores["click"].is_between(0, 1).all()


def test_resume_continues_a_run(project: Path):
    run_dir = project / "runs" / "r2"
    assert main(["train", str(project / "exp.yaml"), "--run-dir", str(run_dir)]) == 0
    assert main(["train", str(project / "exp.yaml"), "--run-dir", str(run_dir), "--resume",
                 "--set", "train.epochs=3", "--set", "train.patience=0"]) == 0
    log = (run_dir / "log-all.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in log] == [1, 2, 3]


def test_regimes_cover_every_cell(project: Path):
    for regime in ("mtl", "mdl", "cell"):
        run_dir = project / "runs" / regime
        assert main(["train", str(project / "exp.yaml"), "--run-dir", str(run_dir), "--set", f"train.regime={regime}",
                     "--set", "model.name=mlp", "--set", "train.epochs=1"]) == 0
        m = json.loads((run_dir / "metrics.json").read_text())
        aucs = {(c["domain"], c["task"]): c["auc"] for c in m["test"]["cells"]}
        assert aucs[("home", "click")] is not None and aucs[("search", "click")] is not None
        assert aucs[("search", "order")] is not None
        units = json.loads((run_dir / "units.json").read_text())
        if regime == "cell":  # (home, order) is never observed: no model is trained for it
            assert [u["tag"] for u in units if u["skipped"]] == ["cell-home-order"]
        # a multi-model run scores new rows with each row's own domain/task model
        out = project / f"scores-{regime}.parquet"
        assert main(["predict", str(run_dir), str(project / "rows.csv"), "--out", str(out)]) == 0
        scores = pl.read_parquet(out)
        assert scores.height == 3000 and scores["click"].is_not_nan().all()


def test_unknown_config_key_is_a_clear_error(project: Path, capsys):
    bad = project / "bad.yaml"
    bad.write_text((project / "exp.yaml").read_text().replace("lr: 0.01", "lr: 0.01, learning_rte: 3"))
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "learning_rte" in err and str(bad) in err and "Traceback" not in err


def test_missing_column_is_a_clear_error(project: Path, capsys):
    shop_table().drop("price").write_csv(project / "rows.csv")
    assert main(["data", "prepare", str(project / "exp.yaml")]) == 2
    err = capsys.readouterr().err
    assert "price" in err and "rows.csv" in err


def test_bad_label_is_a_clear_error(project: Path, capsys):
    shop_table().with_columns(pl.when(pl.col("ts") == 17).then(2).otherwise(pl.col("click")).alias("click")).write_csv(
        project / "rows.csv")
    assert main(["data", "prepare", str(project / "exp.yaml")]) == 2
    err = capsys.readouterr().err
    assert "click" in err and "17" in err


def test_data_prepare_and_stats(project: Path, capsys):
    assert main(["data", "prepare", str(project / "exp.yaml")]) == 0
    assert "vocabulary sizes" in capsys.readouterr().out
    assert main(["data", "stats", str(project / "exp.yaml")]) == 0
    out = capsys.readouterr().out
    assert "home" in out and "search" in out


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert name in out


@pytest.mark.parametrize("verb", [["demo"], ["train"], ["evaluate"], ["predict"], ["data", "prepare"],
                                  ["data", "stats"], ["bench"], ["models"]])
def test_every_verb_has_help_with_example(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([*verb, "--help"])
    assert e.value.code == 0
    assert "example" in capsys.readouterr().out


def test_demo_small(tmp_path: Path, capsys):
    assert main(["demo", "--rows", "20000", "--output-dir", str(tmp_path), "--set", "train.epochs=1",
                 "--set", "data.params.num_items=500",
                 "--set", "train.progress=false"]) == 0
    out = capsys.readouterr().out
    assert "oracle" in out and "finish" in out
    run = next(tmp_path.iterdir())
    assert (run / "report.md").read_text().count("oracle") >= 1


def test_streaming_training_from_parquet_shards(project: Path):
    exp = (project / "exp.yaml").read_text().replace(
        "data: {source: table,", f"data: {{cache_dir: {project / 'cache'}, source: table,")
    (project / "stream.yaml").write_text(exp)
    run_dir = project / "runs" / "stream"
    assert main(["train", str(project / "stream.yaml"), "--run-dir", str(run_dir),
                 "--set", "train.streaming=true", "--set", "train.shuffle_buffer=500"]) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["test"]["avg_auc"] > 0.55
    log = [json.loads(x) for x in (run_dir / "log-all.jsonl").read_text().splitlines()]
    assert log[0]["samples_per_sec"] > 0
    # streaming without a cache is a clear error
    assert main(["train", str(project / "exp.yaml"), "--set", "train.streaming=true"]) == 2


def test_predict_with_a_missing_column_is_a_clear_error(project: Path, capsys):
    run_dir = project / "runs" / "r3"
    assert main(["train", str(project / "exp.yaml"), "--run-dir", str(run_dir), "--set", "train.epochs=1"]) == 0
    shop_table(20).drop("price").write_csv(project / "bad.csv")
    assert main(["predict", str(run_dir), str(project / "bad.csv"), "--out", str(project / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert "price" in err and "bad.csv" in err and "Traceback" not in err


def test_deterministic_mode_reproduces_a_run_exactly(project: Path):
    """train.deterministic switches torch to deterministic algorithms (a process-wide setting, so
    each run gets its own interpreter) and two runs give identical metrics."""
    import subprocess
    import sys

    outs = []
    for k in range(2):
        run_dir = project / "runs" / f"det{k}"
        subprocess.run([sys.executable, "-m", "mdmt", "train", str(project / "exp.yaml"), "--run-dir", str(run_dir),
                        "--set", "train.deterministic=true", "--set", "model.name=ple"],
                       check=True, capture_output=True)
        outs.append(json.loads((run_dir / "metrics.json").read_text())["test"])
    assert outs[0] == outs[1]
