"""The run directory: never damaged by a rejected command, --overwrite / --resume semantics, kill -9
then --resume, and what a finished run holds (1-based epochs, predictions with keys and labels,
selection warnings)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from mdmt.cli import main

from .shop import write_project


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture
def done(tmp_path: Path) -> Path:
    write_project(tmp_path, epochs=2)
    run = tmp_path / "runs" / "done"
    assert main(["train", str(tmp_path / "exp.yaml"), "--run-dir", str(run), "--set", "train.progress=false"]) == 0
    return run


def test_rejected_commands_leave_a_finished_run_intact(done: Path, capsys):
    exp = str(done.parents[1] / "exp.yaml")
    before = _hashes(done)
    rejected = [
        ["train", exp, "--run-dir", str(done)],  # no --resume / --overwrite
        ["train", exp, "--run-dir", str(done), "--resume", "--set", "model.name=mmoe"],  # another model
        ["train", exp, "--run-dir", str(done), "--resume", "--set", "model.name=nope"],  # unknown model
        ["train", exp, "--run-dir", str(done), "--overwrite", "--set", "model.params.bogus=1"],
        ["train", exp, "--run-dir", str(done), "--overwrite", "--set", "train.device=cuda:77"],
    ]
    for argv in rejected:
        assert main(argv) == 2, argv
        assert _hashes(done) == before, argv
    assert main(["evaluate", str(done)]) == 0
    assert "avg AUC" in capsys.readouterr().out


def test_a_failed_new_run_leaves_no_directory(tmp_path: Path):
    write_project(tmp_path, epochs=1)
    # the data fails validation after the config passed: nothing is written
    (tmp_path / "rows.csv").write_text("user_id,item_id\n1,2\n")
    assert main(["train", str(tmp_path / "exp.yaml"), "--run-dir", str(tmp_path / "runs" / "new")]) == 2
    assert not (tmp_path / "runs").exists()


def test_a_failure_during_training_removes_the_new_run(tmp_path: Path, monkeypatch):
    write_project(tmp_path, epochs=1)
    from mdmt.train import trainer

    def boom(self, *a, **k):
        raise FloatingPointError("the training loss became non-finite")

    monkeypatch.setattr(trainer.Trainer, "fit", boom)
    assert main(["train", str(tmp_path / "exp.yaml"), "--run-dir", str(tmp_path / "runs" / "new")]) == 2
    assert not (tmp_path / "runs" / "new").exists()


def test_overwrite_replaces_a_run_and_keeps_the_old_one_if_it_fails(done: Path, monkeypatch):
    exp = str(done.parents[1] / "exp.yaml")
    before = _hashes(done)
    from mdmt.train import trainer

    real_fit = trainer.Trainer.fit
    monkeypatch.setattr(trainer.Trainer, "fit", lambda *a, **k: (_ for _ in ()).throw(FloatingPointError("x")))
    assert main(["train", exp, "--run-dir", str(done), "--overwrite"]) == 2
    assert _hashes(done) == before  # the old run is back, untouched
    assert not done.with_name(done.name + ".replaced").exists()
    monkeypatch.setattr(trainer.Trainer, "fit", real_fit)
    assert main(["train", exp, "--run-dir", str(done), "--overwrite", "--set", "train.epochs=1",
                 "--set", "train.progress=false"]) == 0
    log = [json.loads(x) for x in (done / "log-all.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1]  # a new run, not an appended one


def test_finished_run_files(done: Path):
    m = json.loads((done / "metrics.json").read_text())
    log = [json.loads(x) for x in (done / "log-all.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert m["best_epoch"] == log[-1]["best_epoch"] and m["best_epoch"] in (1, 2)  # 1-based like the logs
    report = (done / "report.md").read_text()
    assert f"- best epoch: {m['best_epoch']};" in report
    assert "| all | 1 |" in report and "| all | 2 |" in report
    pred = pl.read_parquet(done / "predictions_test.parquet")
    assert pred.columns == ["row", "domain", "user_id", "label_click", "label_order", "p_click", "p_order"]
    assert pred["row"].to_list() == list(range(pred.height))
    assert set(pred["domain"].unique()) <= {"home", "search"}
    # order is observed in search only: null labels in home
    assert pred.filter(pl.col("domain") == "home")["label_order"].null_count() == (pred["domain"] == "home").sum()
    assert pred["label_click"].null_count() == 0 and set(pred["label_click"].unique()) <= {0, 1}
    # every checkpoint of the run loads without unpickling Python objects
    import torch

    for ckpt in sorted((done / "checkpoints").glob("*.pt")):
        assert torch.load(ckpt, map_location="cpu", weights_only=True), ckpt
    # the scores are those of `mdmt evaluate`: the same rows in the same order
    from mdmt.data import load_prepared
    from mdmt.train.run import load_run

    run = load_run(done)
    test = load_prepared(run.config.data, progress=False).splits["test"]
    assert pred["label_click"].to_numpy().tolist() == test.labels[:, 0].int().tolist()


def test_best_epoch_last_warns(tmp_path: Path, capsys):
    write_project(tmp_path, epochs=2)
    from mdmt.train import trainer

    orig = trainer.Trainer.__init__

    def rising(self, model, cfg, score_fn, *a, **k):
        scores = iter([0.6, 0.7])
        orig(self, model, cfg, lambda p: next(scores), *a, **k)

    import unittest.mock as mock

    with mock.patch.object(trainer.Trainer, "__init__", rising):
        assert main(["train", str(tmp_path / "exp.yaml"), "--run-dir", str(tmp_path / "runs" / "r"),
                     "--set", "train.progress=false"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "best epoch is the last one (2 of 2)" in out
    assert "each cell: AUC / GAUC / LogLoss" in out  # the legend of the console table
    m = json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())
    assert any("last one" in n for n in m["selection_notes"])
    assert "**warning**: the best epoch is the last one" in (tmp_path / "runs" / "r" / "report.md").read_text()


def test_undefined_validation_score_is_reported_not_hidden(tmp_path: Path, capsys):
    write_project(tmp_path, epochs=2)
    from mdmt.train import trainer

    orig = trainer.Trainer.__init__

    def nan_scores(self, model, cfg, score_fn, *a, **k):
        orig(self, model, cfg, lambda p: float("nan"), *a, **k)

    import unittest.mock as mock

    with mock.patch.object(trainer.Trainer, "__init__", nan_scores):
        assert main(["train", str(tmp_path / "exp.yaml"), "--run-dir", str(tmp_path / "runs" / "r"),
                     "--set", "train.progress=false"]) == 0
    m = json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())
    assert m["best_epoch"] is None
    report = (tmp_path / "runs" / "r" / "report.md").read_text()
    assert "best epoch: none" in report and "last epoch's weights are used" in report


def test_resume_needs_a_checkpoint(tmp_path: Path, capsys):
    write_project(tmp_path, epochs=1)
    assert main(["train", str(tmp_path / "exp.yaml"), "--run-dir", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "config.yaml" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


def test_kill_9_mid_epoch_then_resume_gives_the_uninterrupted_result(tmp_path: Path):
    """A real ``python -m mdmt train`` is killed with SIGKILL during an epoch after the first
    checkpoint; ``--resume`` then finishes with exactly the metrics of an uninterrupted run."""
    write_project(tmp_path, epochs=6)
    exp = str(tmp_path / "exp.yaml")
    sets = ["--set", "train.patience=0", "--set", "train.batch_size=64", "--set", "train.max_steps_per_epoch=6",
            "--set", "train.progress=false"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "mdmt", "train", exp]
    assert main(["train", exp, "--run-dir", str(tmp_path / "full"), *sets]) == 0  # the uninterrupted run

    killed = tmp_path / "killed"
    log = killed / "log-all.jsonl"
    proc = subprocess.Popen([*cmd, "--run-dir", str(killed), *sets], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (killed / "checkpoints" / "all-last.pt").exists():  # epoch 1 is checkpointed: kill in epoch 2
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    epochs_before = len(log.read_text().splitlines())
    assert 1 <= epochs_before < 6
    assert not (killed / "metrics.json").exists()
    done = subprocess.run([*cmd, "--run-dir", str(killed), "--resume", *sets], capture_output=True, env=env, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    for key in ("best_epoch", "valid", "test"):
        assert a[key] == b[key], key
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k not in ("epoch_seconds", "samples_per_sec")}  # noqa: E731
                       for x in p.read_text().splitlines()]
    assert strip(tmp_path / "full" / "log-all.jsonl") == strip(log)


def _extreme_price(tmp_path: Path, value: float) -> None:
    write_project(tmp_path, epochs=1)
    (tmp_path / "schema.yaml").write_text((tmp_path / "schema.yaml").read_text().replace(
        "kind: dense, source: item", "kind: dense, source: item, transform: none"))
    t = pl.read_csv(tmp_path / "rows.csv")
    t.with_columns(pl.when(pl.col("ts") == 5).then(value).otherwise(pl.col("price")).alias("price")).write_csv(
        tmp_path / "rows.csv")


def test_extreme_dense_value_is_named_when_the_loss_blows_up(tmp_path: Path, monkeypatch, capsys):
    _extreme_price(tmp_path, 1e30)
    from mdmt.train import trainer

    def blow_up(self, *a, **k):
        raise FloatingPointError("all: the training loss became non-finite by epoch 1, step 0; lower train.lr")

    monkeypatch.setattr(trainer.Trainer, "fit", blow_up)
    assert main(["train", str(tmp_path / "exp.yaml"), "--set", "train.progress=false"]) == 2
    err = capsys.readouterr().err
    assert "dense column 'price' reaches 1e+30" in err and "lower train.lr" not in err
    assert "mdmt: warning" in err  # it was already flagged before training


def test_extreme_dense_value_warns_before_training(tmp_path: Path):
    _extreme_price(tmp_path, 1e8)
    from mdmt.config import load_experiment
    from mdmt.train.run import run_experiment

    with pytest.warns(UserWarning, match="dense column 'price' reaches 1e\\+08"):
        run_experiment(load_experiment(tmp_path / "exp.yaml"), quiet=True)


def test_unwritable_output_paths_are_refused(tmp_path: Path, monkeypatch, capsys):
    write_project(tmp_path, epochs=1)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    assert main(["train", str(tmp_path / "exp.yaml"), "--run-dir", str(tmp_path / "r")]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "r"), str(tmp_path / "rows.csv"), "--out", str(tmp_path / "s.parquet")]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_predict_keeps_a_label_column_beside_prefixed_scores(done: Path, tmp_path: Path):
    rows = done.parents[1] / "rows.csv"
    out = tmp_path / "s.parquet"
    assert main(["predict", str(done), str(rows), "--out", str(out), "--keep", "user_id", "click",
                 "--score-prefix", "p_"]) == 0
    scores = pl.read_parquet(out)
    assert scores.columns == ["row", "user_id", "click", "p_click", "p_order"]
    assert scores["click"].to_list() == pl.read_csv(rows)["click"].to_list()  # the input column, not a score
