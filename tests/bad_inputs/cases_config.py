"""Bad inputs in experiment configs and command-line overrides."""

from __future__ import annotations

import polars as pl

from . import Workspace, bad_input


@bad_input("config", "A misspelt training option", expect="learning_rte")
def misspelt_train_key(ws: Workspace) -> list[str]:
    ws.project()
    ws.edit("exp.yaml", "lr: 0.01", "lr: 0.01, learning_rte: 3")
    return ["train", "exp.yaml"]


@bad_input("config", "An unknown model name", expect="unknown model")
def unknown_model(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "model.name=mmoee"]


@bad_input("config", "An option the model does not have", expect="num_expertz")
def unknown_model_param(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "model.name=mmoe", "--set", "model.params.num_expertz=3"]


@bad_input("config", "A negative gradient-clipping norm", expect="grad_clip")
def negative_grad_clip(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "train.grad_clip=-1"]


@bad_input("config", "Zero steps per epoch", expect="max_steps_per_epoch")
def zero_steps_per_epoch(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "train.max_steps_per_epoch=0"]


@bad_input("config", "A negative number of CPU threads", expect="num_threads")
def negative_threads(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "train.num_threads=-4"]


@bad_input("config", "A CUDA device that this machine does not have", expect="train.device")
def missing_cuda(ws: Workspace) -> list[str]:
    import torch

    ws.project()
    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    return ["train", "exp.yaml", "--set", f"train.device={device}"]


@bad_input("config", "A device name torch does not know", expect="not a device")
def unknown_device(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "train.device=gpu0"]


@bad_input("config", "Streaming training without a data cache", expect="cache_dir")
def streaming_without_cache(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "train.streaming=true"]


@bad_input("config", "A value of the wrong type", expect="epochs")
def wrong_type(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "train.epochs=many"]


@bad_input("config", "A config file that is not valid YAML", expect="not valid YAML")
def invalid_yaml(ws: Workspace) -> list[str]:
    ws.project()
    ws.write("exp.yaml", ws.path("exp.yaml").read_text() + "train: [unclosed\n")
    return ["train", "exp.yaml"]


@bad_input("config", "A base config that does not exist", expect="nothing.yaml")
def missing_base(ws: Workspace) -> list[str]:
    ws.project()
    ws.write("exp.yaml", "base: nothing.yaml\n" + ws.path("exp.yaml").read_text())
    return ["train", "exp.yaml"]


def _search_never_validated(ws: Workspace) -> None:
    """Every 'search' row comes before every 'home' row in time: the temporal split's validation
    and test rows are all 'home'."""
    ws.project()
    t = ws.table()
    t = t.sort(pl.col("tab") == "home", maintain_order=True).with_columns(pl.Series("ts", range(t.height)))
    t.write_csv(ws.path("rows.csv"))


@bad_input("config", "One model per domain when a domain has no validation rows", expect="no rows in the validation split")
def mtl_domain_missing_from_valid(ws: Workspace) -> list[str]:
    _search_never_validated(ws)
    return ["train", "exp.yaml", "--set", "train.regime=mtl"]


@bad_input("config", "One model per task when a task's domain has no validation rows", expect="no observed label")
def mdl_domain_missing_from_valid(ws: Workspace) -> list[str]:
    _search_never_validated(ws)
    return ["train", "exp.yaml", "--set", "train.regime=mdl"]


@bad_input("config", "The output directory is a file", expect="is a file")
def output_dir_is_a_file(ws: Workspace) -> list[str]:
    ws.project()
    ws.write("runs", "not a directory\n")
    return ["train", "exp.yaml", "--set", "output_dir=runs"]


@bad_input("config", "The data cache directory lies under a file", expect="data.cache_dir")
def cache_dir_under_a_file(ws: Workspace) -> list[str]:
    ws.project()
    ws.write("cachefile", "x\n")
    return ["train", "exp.yaml", "--set", "data.cache_dir=cachefile/cache"]


@bad_input("config", "A dense value so large that it overflows when encoded", expect="price")
def overflowing_dense_value(ws: Workspace) -> list[str]:
    ws.project()
    ws.edit("schema.yaml", "kind: dense, source: item", "kind: dense, source: item, transform: none")
    t = ws.table()
    t.with_columns(pl.when(pl.col("ts") == 5).then(1e200).otherwise(pl.col("price")).alias("price")).write_csv(
        ws.path("rows.csv"))
    return ["train", "exp.yaml"]


@bad_input("data file", "A required column is missing from the data file", expect="price")
def missing_column(ws: Workspace) -> list[str]:
    ws.project()
    ws.table().drop("price").write_csv(ws.path("rows.csv"))
    return ["data", "prepare", "exp.yaml"]


@bad_input("config", "A domain-specific embedding for a feature the data set does not have",
           expect="data.domain_specific: unknown feature 'user'")
def domain_specific_unknown_feature(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "data.domain_specific=[user]"]


@bad_input("config", "A model with architecture weights (M3oE) and no held-out training rows for them",
           expect="train.arch_holdout")
def arch_holdout_zero(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "model.name=m3oe", "--set", "train.arch_holdout=0"]


@bad_input("config", "An architecture-step cadence that is neither a step count nor 'epoch'", expect="arch_every")
def arch_every_bad(ws: Workspace) -> list[str]:
    ws.project()
    return ["train", "exp.yaml", "--set", "train.arch_every=0"]


@bad_input("config", "A negative domain shift for the synthetic generator", expect="domain_shift must be")
def negative_domain_shift(ws: Workspace) -> list[str]:
    ws.write("synthetic.yaml", "name: s\ndata:\n  source: synthetic\n  params: {preset: douyin, rows: 2000, "
             "domain_shift: -0.5}\nmodel: {name: mlp}\ntrain: {epochs: 1}\noutput_dir: runs\n")
    return ["train", "synthetic.yaml"]
