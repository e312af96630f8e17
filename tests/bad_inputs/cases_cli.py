"""Bad command-line use: run directories, flags and output paths."""

from __future__ import annotations

from . import Workspace, bad_input


@bad_input("cli", "train into a directory that already holds a run", expect="already holds a run")
def train_over_a_run(ws: Workspace) -> list[str]:
    ws.trained_run()
    return ["train", "exp.yaml", "--run-dir", "runs/done"]


@bad_input("cli", "--resume a directory without a checkpoint", expect="no checkpoint")
def resume_without_checkpoint(ws: Workspace) -> list[str]:
    ws.project()
    ws.write("runs/r/config.yaml", ws.path("exp.yaml").read_text())
    return ["train", "exp.yaml", "--run-dir", "runs/r", "--resume"]


@bad_input("cli", "--resume without --run-dir", expect="--run-dir")
def resume_without_run_dir(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--resume"]


@bad_input("cli", "--resume and --overwrite together", expect="give one of them")
def resume_and_overwrite(ws: Workspace) -> list[str]:
    ws.trained_run()
    return ["train", "exp.yaml", "--run-dir", "runs/done", "--resume", "--overwrite"]


@bad_input("cli", "--resume a run with another model", expect="differs")
def resume_with_another_model(ws: Workspace) -> list[str]:
    ws.trained_run()
    return ["train", "exp.yaml", "--run-dir", "runs/done", "--resume", "--set", "model.name=mmoe"]


@bad_input("cli", "--run-dir names a file", expect="is a file")
def run_dir_is_a_file(ws: Workspace) -> list[str]:
    ws.project()
    ws.write("taken", "x\n")
    return ["train", "exp.yaml", "--run-dir", "taken"]


@bad_input("cli", "demo with zero rows", expect="--rows")
def demo_zero_rows(ws: Workspace) -> list[str]:
    return ["demo", "--rows", "0", "--output-dir", "runs"]


@bad_input("cli", "--set without a value", expect="KEY=VALUE")
def set_without_value(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "train.lr"]


@bad_input("cli", "--freeze-loaded without --warm-start", expect="--warm-start")
def freeze_without_warm_start(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--freeze-loaded"]


@bad_input("cli", "predict --keep a column named like a task", expect="score column")
def keep_column_named_like_a_task(ws: Workspace) -> list[str]:
    ws.trained_run()
    return ["predict", "runs/done", "rows.csv", "--out", "scores.parquet", "--keep", "user_id", "click"]


@bad_input("cli", "predict --out names a directory", expect="is a directory")
def predict_out_is_a_directory(ws: Workspace) -> list[str]:
    ws.trained_run()
    ws.path("scores").mkdir()
    return ["predict", "runs/done", "rows.csv", "--out", "scores"]


@bad_input("cli", "predict --out under a file", expect="is a file")
def predict_out_under_a_file(ws: Workspace) -> list[str]:
    ws.trained_run()
    ws.write("out", "x\n")
    return ["predict", "runs/done", "rows.csv", "--out", "out/scores.parquet"]


@bad_input("cli", "predict a file that does not exist", expect="not found")
def predict_missing_input(ws: Workspace) -> list[str]:
    ws.trained_run()
    return ["predict", "runs/done", "nothing.csv", "--out", "scores.parquet"]


@bad_input("cli", "bench: proposed names an entry that does not exist", expect="are not entry labels")
def bench_proposed_unknown(ws: Workspace) -> list[str]:
    ws.write("bench.yaml", "name: x\ndatasets: {a: {source: synthetic}}\nentries: [{label: A, model: mlp}]\n"
                           "seeds: [0]\nbaseline: best\nproposed: [B]\noutput_dir: out\n")
    return ["bench", "bench.yaml"]


@bad_input("cli", "bench: an entry warm-started from an entry that comes after it", expect="must come before it")
def bench_warm_start_later_entry(ws: Workspace) -> list[str]:
    ws.write("bench.yaml", "name: x\ndatasets: {a: {source: synthetic}}\n"
                           "entries: [{label: P, model: pmta, warm_start: {entry: S}}, {label: S, model: sharedbottom}]\n"
                           "seeds: [0]\nbaseline: S\noutput_dir: out\n")
    return ["bench", "bench.yaml"]


@bad_input("cli", "bench --jobs 0", expect="--jobs must be at least 1")
def bench_jobs_zero(ws: Workspace) -> list[str]:
    ws.write("bench.yaml", "name: x\ndatasets: {a: {source: synthetic}}\nentries: [{label: A, model: mlp}]\n"
                           "seeds: [0]\nbaseline: A\noutput_dir: out\n")
    return ["bench", "bench.yaml", "--jobs", "0"]


@bad_input("cli", "bench --jobs above the CPUs this process may use", expect="more worker processes than")
def bench_jobs_above_cpus(ws: Workspace) -> list[str]:
    ws.write("bench.yaml", "name: x\ndatasets: {a: {source: synthetic}}\nentries: [{label: A, model: mlp}]\n"
                           "seeds: [0]\nbaseline: A\noutput_dir: out\n")
    return ["bench", "bench.yaml", "--jobs", "4096"]
