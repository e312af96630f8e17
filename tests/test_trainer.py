"""Trainer behaviour: loss formula, early stopping restores the best weights, optimizer groups,
checkpoints and resume, regimes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mdmt.config import TrainConfig
from mdmt.embeddings import EmbeddingCollection
from mdmt.models.base import MDMTModel, ModelOutput, OptimGroup
from mdmt.schema import StrictModel
from mdmt.train.loss import masked_bce, multitask_loss
from mdmt.train.run import regime_units
from mdmt.train.trainer import Trainer

from .conftest import make_batch, make_tiny


class _Cfg(StrictModel):
    pass


class LinearModel(MDMTModel):
    """flat input -> linear per task; optional 'arch' parameter stepped on validation batches."""

    config_class = _Cfg

    def __init__(self, spec, emb, with_arch: bool = False, dropout: float = 0.0):
        super().__init__(spec, emb)
        self.head = nn.Linear(emb.input_dim, spec.num_tasks)
        self.arch = nn.Parameter(torch.zeros(spec.num_tasks)) if with_arch else None
        self.drop = nn.Dropout(dropout)

    def forward(self, batch):
        z = self.head(self.drop(self.embeddings.flat_input(batch)))
        if self.arch is not None:
            z = z + self.arch
        return ModelOutput({t: z[:, i] for i, t in enumerate(self.task_names)})

    def optim_groups(self):
        main = [p for n, p in self.named_parameters() if n != "arch"]
        groups = [OptimGroup("main", main)]
        if self.arch is not None:
            groups.append(OptimGroup("arch", [self.arch], optimizer="sgd", lr=0.5, step_on="valid"))
        return groups


def _model(with_arch=False, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    spec, fm = make_tiny()
    return spec, fm, LinearModel(spec, EmbeddingCollection(spec, fm), with_arch, dropout)


def test_masked_bce_is_mean_over_observed_rows():
    logits = torch.tensor([0.3, -1.0, 2.0, 0.5])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    mask = torch.tensor([True, True, False, True])
    expect = np.mean([math.log1p(math.exp(-0.3)), math.log1p(math.exp(-1.0)), math.log1p(math.exp(0.5))])
    assert masked_bce(logits, labels, mask).item() == pytest.approx(expect, rel=1e-6)
    assert masked_bce(logits, labels, torch.zeros(4, dtype=torch.bool)).item() == 0.0


def test_multitask_loss_weights_and_aux():
    spec, fm = make_tiny(num_tasks=2)
    b = make_batch(spec, fm, size=8)
    b.label_mask[:3, 1] = False
    logits = {"t0": torch.randn(8), "t1": torch.randn(8)}
    out = ModelOutput(logits, aux_loss=torch.tensor(0.25))
    total, per_task = multitask_loss(out, b, ["t0", "t1"], torch.tensor([1.0, 2.0]))
    l0 = F.binary_cross_entropy_with_logits(logits["t0"], b.labels[:, 0])
    l1 = F.binary_cross_entropy_with_logits(logits["t1"][3:], b.labels[3:, 1])
    assert total.item() == pytest.approx(l0.item() + 2 * l1.item() + 0.25, rel=1e-5)
    assert per_task.tolist() == pytest.approx([l0.item(), l1.item()], rel=1e-5)


def test_early_stopping_restores_best_not_last():
    spec, fm, model = _model()
    train = make_batch(spec, fm, size=64, seed=1)
    valid = make_batch(spec, fm, size=32, seed=2)
    scores = iter([0.6, 0.9, 0.7, 0.65, 0.64, 0.63])
    snapshots = []

    def score_fn(probs):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    cfg = TrainConfig(epochs=6, batch_size=16, patience=2, lr=0.05, progress=False)
    res = Trainer(model, cfg, score_fn).fit(train, valid)
    assert res.best_epoch == 2  # 1-based: the second epoch scored 0.9
    assert res.stopped_early and not res.best_is_last
    assert len(res.history) == 4  # epochs 0..3: two bad epochs after the best, then one more -> stop
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[1][k]), f"{k} is not the best epoch's weights"
    assert not torch.equal(model.head.weight, snapshots[-1]["head.weight"])


def test_valid_group_is_not_updated_by_main_optimizer():
    spec, fm, model = _model(with_arch=True)
    train = make_batch(spec, fm, size=32, seed=1)
    valid = make_batch(spec, fm, size=32, seed=2)
    tr = Trainer(model, TrainConfig(epochs=1, batch_size=32, progress=False), lambda p: 0.0)
    before = model.arch.detach().clone()
    head_before = model.head.weight.detach().clone()
    tr.train_step(train)
    assert torch.equal(model.arch, before), "main step must not touch step_on='valid' parameters"
    assert not torch.equal(model.head.weight, head_before)
    head_after = model.head.weight.detach().clone()
    tr.arch_step(valid)
    assert not torch.equal(model.arch, before)
    assert torch.equal(model.head.weight, head_after), "the valid step must not touch main parameters"


def _recording_fit(cfg: TrainConfig, n_train: int = 100):
    """Fit the arch model with row ids in ``group``; returns (trainer, main ids, arch ids, #main, #arch steps)."""
    spec, fm, model = _model(with_arch=True)
    train = make_batch(spec, fm, size=n_train, seed=1)
    train.group = torch.arange(n_train)  # row ids
    valid = make_batch(spec, fm, size=32, seed=2)
    valid.group = 10_000 + torch.arange(32)
    tr = Trainer(model, cfg, lambda p: 0.0)
    main_ids, arch_ids, counts = [], [], {"main": 0, "arch": 0}
    train_step, arch_step = tr.train_step, tr.arch_step

    def rec_train(b):
        main_ids.append(b.group.clone())
        counts["main"] += 1
        return train_step(b)

    def rec_arch(b):
        arch_ids.append(b.group.clone())
        counts["arch"] += 1
        arch_step(b)

    tr.train_step, tr.arch_step = rec_train, rec_arch
    tr.fit(train, valid)
    return tr, torch.cat(main_ids), torch.cat(arch_ids), counts["main"], counts["arch"]


def test_arch_steps_use_held_out_training_rows_only():
    cfg = TrainConfig(epochs=3, batch_size=16, patience=0, progress=False, arch_holdout=0.2)
    tr, main_ids, arch_ids, _, _ = _recording_fit(cfg)
    main_set, arch_set = set(main_ids.tolist()), set(arch_ids.tolist())
    assert main_set.isdisjoint(arch_set), "the architecture step saw rows the main step trains on"
    assert all(i < 100 for i in arch_set), "the architecture step saw validation rows"
    assert arch_set <= set(tr.arch_rows.tolist()) and len(tr.arch_rows) == 20
    assert main_set == set(tr.main_rows.tolist()) and len(main_set) == 80  # every main row trained on
    assert set(tr.main_rows.tolist()) | set(tr.arch_rows.tolist()) == set(range(100))


@pytest.mark.parametrize("every, expect", [(1, 1.0), (2, 0.5), ("epoch", None)])
def test_arch_step_cadence(every, expect):
    cfg = TrainConfig(epochs=3, batch_size=16, patience=0, progress=False, arch_holdout=0.1, arch_every=every)
    _, _, _, n_main, n_arch = _recording_fit(cfg)
    assert n_main == 3 * 6  # 90 main rows in batches of 16
    assert n_arch == (3 if expect is None else int(n_main * expect))


def test_arch_holdout_zero_is_a_clear_error():
    from mdmt.schema import ConfigError

    cfg = TrainConfig(epochs=1, batch_size=16, progress=False, arch_holdout=0.0)
    with pytest.raises(ConfigError, match="arch_holdout"):
        _recording_fit(cfg)
    with pytest.raises(Exception, match="arch_every"):
        TrainConfig(arch_every=0)


def test_checkpoint_resume_continues(tmp_path):
    spec, fm, model = _model()
    train = make_batch(spec, fm, size=64, seed=1)
    valid = make_batch(spec, fm, size=32, seed=2)
    score = lambda p: float(-np.abs(p - 0.5).mean())  # noqa: E731
    cfg2 = TrainConfig(epochs=2, batch_size=16, patience=5, progress=False)
    Trainer(model, cfg2, score, run_dir=tmp_path, tag="m").fit(train, valid)
    assert (tmp_path / "checkpoints" / "m-last.pt").exists()
    assert (tmp_path / "checkpoints" / "m-best.pt").exists()
    lines = (tmp_path / "log-m.jsonl").read_text().splitlines()
    assert len(lines) == 2
    # resume to 4 epochs: only epochs 2 and 3 run
    spec, fm, model2 = _model(seed=5)
    cfg4 = TrainConfig(epochs=4, batch_size=16, patience=5, progress=False)
    res = Trainer(model2, cfg4, score, run_dir=tmp_path, tag="m").fit(train, valid, resume=True)
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4]
    assert len((tmp_path / "log-m.jsonl").read_text().splitlines()) == 4


def test_regime_units():
    spec, _ = make_tiny(num_tasks=2, num_domains=3)
    assert len(regime_units("mdmt", spec)) == 1
    assert [u.domains for u in regime_units("mtl", spec)] == [[0], [1], [2]]
    assert [u.tasks for u in regime_units("mdl", spec)] == [[0], [1]]
    cells = regime_units("cell", spec)
    assert len(cells) == 6 and cells[4].domains == [2] and cells[4].tasks == [0]


def test_unassigned_parameter_is_an_error():
    spec, fm, model = _model()
    model.optim_groups = lambda: [OptimGroup("main", [model.head.weight])]
    with pytest.raises(ValueError, match="no optimizer group"):
        Trainer(model, TrainConfig(progress=False), lambda p: 0.0)


@pytest.mark.parametrize("sched", ["cosine", "warmup_cosine", "step"])
def test_learning_rate_schedules(sched):
    spec, fm, model = _model()
    train = make_batch(spec, fm, size=64, seed=1)
    valid = make_batch(spec, fm, size=32, seed=2)
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.1, scheduler=sched, warmup_steps=2 if sched == "warmup_cosine" else 0,
                      step_gamma=0.5, patience=0, progress=False)
    tr = Trainer(model, cfg, lambda p: 0.0)
    res = tr.fit(train, valid)
    lrs = [h["lr"] for h in res.history]  # lr after each epoch (4 steps per epoch, 16 steps in all)
    if sched == "step":
        assert lrs == pytest.approx([0.05, 0.025, 0.0125, 0.00625])
    else:
        w = cfg.warmup_steps
        expect = [0.1 * 0.5 * (1 + math.cos(math.pi * (s - w) / (16 - w))) for s in (4, 8, 12, 16)]
        assert lrs == pytest.approx(expect, abs=1e-9)


def test_same_seed_same_weights_and_scores():
    from mdmt.train.trainer import seed_everything

    def run():
        seed_everything(3)
        spec, fm, model = _model(seed=3)
        train = make_batch(spec, fm, size=64, seed=1)
        valid = make_batch(spec, fm, size=32, seed=2)
        seen = []
        cfg = TrainConfig(epochs=2, batch_size=16, seed=3, patience=0, progress=False)
        Trainer(model, cfg, lambda p: seen.append(p.copy()) or 0.0).fit(train, valid)
        return model.state_dict(), seen

    (a, pa), (b, pb) = run(), run()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert all(np.array_equal(x, y) for x, y in zip(pa, pb))


def test_task_weights_scale_the_loss():
    spec, fm, model = _model()
    b = make_batch(spec, fm, size=32, seed=1)
    plain = Trainer(model, TrainConfig(progress=False), lambda p: 0.0)
    weighted = Trainer(model, TrainConfig(progress=False), lambda p: 0.0, task_weights=[2.0, 0.0, 1.0])
    with torch.no_grad():
        _, per_task = plain._loss(b)
        total, _ = weighted._loss(b)
    assert total.item() == pytest.approx(2 * per_task[0].item() + per_task[2].item(), rel=1e-6)
    with pytest.raises(ValueError, match="task weights"):
        Trainer(model, TrainConfig(progress=False), lambda p: 0.0, task_weights=[1.0])


def test_non_finite_loss_is_reported_clearly():
    spec, fm, model = _model()
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    train = make_batch(spec, fm, size=32, seed=1)
    with pytest.raises(FloatingPointError, match="non-finite"):
        Trainer(model, TrainConfig(epochs=1, batch_size=16, progress=False), lambda p: 0.0).fit(train, train)


def test_progress_display_shows_live_loss_and_speed():
    import io

    from rich.console import Console

    from mdmt.train.progress import RunProgress

    buf = io.StringIO()
    console = Console(file=buf, width=120, color_system=None)
    spec, fm, model = _model()
    train = make_batch(spec, fm, size=64, seed=1)
    events = []
    with RunProgress(enabled=True, epochs=2, console=console) as prog:
        def record(event, **info):
            events.append((event, info))
            prog.update(event, **info)

        Trainer(model, TrainConfig(epochs=2, batch_size=16, patience=0, progress=True), lambda p: 0.5).fit(
            train, train, progress=record)
    steps = [i for e, i in events if e == "step"]
    assert [s["rows"] for s in steps] == [16, 16]  # steps 0 of each epoch: rows trained so far that epoch
    assert all(math.isfinite(s["loss"]) for s in steps)
    out = buf.getvalue()
    assert "epoch 2: train loss" in out and "samples/s" in out


# ---- optimizer groups: explicit settings are used as given, unset ones inherit ---------------------


def test_optimizer_group_explicit_values_are_not_overridden():
    spec, fm, model = _model()
    emb = [p for n, p in model.named_parameters() if n.startswith("embeddings.")]
    head = [p for n, p in model.named_parameters() if not n.startswith("embeddings.")]
    model.optim_groups = lambda: [
        OptimGroup("main", head, optimizer="adam", weight_decay=0.0),  # explicit: Adam, no decay
        OptimGroup("emb", emb),  # everything inherited
    ]
    cfg = TrainConfig(optimizer="sgd", lr=0.3, weight_decay=0.1, progress=False)
    tr = Trainer(model, cfg, lambda p: 0.0)
    main, rest = tr.optimizers
    assert isinstance(main, torch.optim.Adam) and main.param_groups[0]["weight_decay"] == 0.0
    assert main.param_groups[0]["lr"] == 0.3
    assert isinstance(rest, torch.optim.SGD)
    assert rest.param_groups[0]["weight_decay"] == 0.1 and rest.param_groups[0]["lr"] == 0.3


def test_default_group_inherits_the_training_optimizer():
    spec, fm, model = _model()
    tr = Trainer(model, TrainConfig(optimizer="adagrad", lr=0.05, weight_decay=0.01, progress=False), lambda p: 0.0)
    (opt,) = tr.optimizers
    assert isinstance(opt, torch.optim.Adagrad)
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["weight_decay"] == 0.01


# ---- selection: end of budget, NaN scores ----------------------------------------------------------


def _scripted_fit(scores, epochs, patience):
    spec, fm, model = _model()
    train = make_batch(spec, fm, size=64, seed=1)
    valid = make_batch(spec, fm, size=32, seed=2)
    it = iter(scores)
    snapshots = []

    def score_fn(probs):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(it)

    cfg = TrainConfig(epochs=epochs, batch_size=16, patience=patience, lr=0.05, progress=False)
    return model, snapshots, Trainer(model, cfg, score_fn).fit(train, valid)


def test_end_of_budget_restores_best_epoch_not_last():
    """The epochs run out (no early stop) after the best epoch: its weights are restored."""
    model, snaps, res = _scripted_fit([0.5, 0.8, 0.7, 0.6], epochs=4, patience=10)
    assert res.best_epoch == 2 and res.epochs_run == 4 and not res.stopped_early
    assert not res.best_is_last
    for k, v in model.state_dict().items():
        assert torch.equal(v, snaps[1][k]), k
    assert not torch.equal(snaps[1]["head.weight"], snaps[-1]["head.weight"])


def test_best_epoch_last_is_flagged():
    model, snaps, res = _scripted_fit([0.5, 0.6, 0.7], epochs=3, patience=2)
    assert res.best_epoch == 3 and res.best_is_last


def test_nan_scores_never_count_as_best():
    model, snaps, res = _scripted_fit([math.nan, 0.7, math.nan, 0.6], epochs=4, patience=10)
    assert res.best_epoch == 2 and res.selection == "best"
    for k, v in model.state_dict().items():
        assert torch.equal(v, snaps[1][k]), k


def test_all_nan_scores_keep_last_weights_and_say_so():
    model, snaps, res = _scripted_fit([math.nan] * 3, epochs=3, patience=10)
    assert res.best_epoch is None and res.selection == "last" and not res.best_is_last
    assert all(h["best_epoch"] is None for h in res.history)
    for k, v in model.state_dict().items():
        assert torch.equal(v, snaps[-1][k]), k


def test_grad_clip_and_steps_must_be_positive():
    from pydantic import ValidationError

    for bad in ({"grad_clip": -1.0}, {"grad_clip": 0.0}, {"max_steps_per_epoch": 0}, {"num_threads": -2}):
        with pytest.raises(ValidationError):
            TrainConfig(**bad)


# ---- checkpoints: plain data only; resume equals an uninterrupted run ------------------------------


class _Stop(Exception):
    pass


def _resume_setup(tmp_path, interrupt_at=None, resume=False, seen=None):
    """Epochs 4, cosine schedule, dropout (uses the RNG), an 'arch' group stepped on valid batches."""
    from mdmt.train.trainer import seed_everything

    seed_everything(11)
    spec, fm, model = _model(with_arch=True, seed=11, dropout=0.3)
    train = make_batch(spec, fm, size=96, seed=1)
    valid = make_batch(spec, fm, size=48, seed=2)
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.05, scheduler="cosine", patience=0, progress=False, seed=11)
    tr = Trainer(model, cfg, lambda p: float(-np.abs(p - 0.5).mean()), run_dir=tmp_path, tag="m")

    def progress(event, **info):
        if event == "step" and info["step"] == 0 and info["epoch"] == 3:
            if seen is not None:  # state at the first step of epoch 3 (after a resume: right after it)
                seen["rng"] = torch.get_rng_state().clone()
                seen["np"] = np.random.get_state()[1].copy()
                seen["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
            if interrupt_at == 3:
                raise _Stop

    res = tr.fit(train, valid, resume=resume, progress=progress)
    return tr, res


def test_resume_matches_an_uninterrupted_run(tmp_path):
    a_seen, b_seen = {}, {}
    full, res_full = _resume_setup(tmp_path / "a", seen=a_seen)
    with pytest.raises(_Stop):
        _resume_setup(tmp_path / "b", interrupt_at=3)  # killed in epoch 3: the checkpoint holds epoch 2
    resumed, res_res = _resume_setup(tmp_path / "b", resume=True, seen=b_seen)
    assert torch.equal(a_seen["rng"], b_seen["rng"]) and np.array_equal(a_seen["np"], b_seen["np"])
    for k in a_seen["weights"]:
        assert torch.equal(a_seen["weights"][k], b_seen["weights"][k]), k
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    for oa, ob in zip(full.optimizers, resumed.optimizers):
        sa, sb = oa.state_dict(), ob.state_dict()
        assert sa["param_groups"] == sb["param_groups"]
        for pid in sa["state"]:
            for key, v in sa["state"][pid].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb["state"][pid][key])), (pid, key)
    assert [s.state_dict() for s in full.schedulers] == [s.state_dict() for s in resumed.schedulers]
    assert torch.equal(torch.get_rng_state(), torch.get_rng_state())
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("epoch_seconds", "samples_per_sec")} for r in h]  # noqa: E731
    assert strip(res_full.history) == strip(res_res.history)
    assert res_full.best_epoch == res_res.best_epoch


def test_every_checkpoint_loads_with_weights_only(tmp_path):
    _resume_setup(tmp_path)
    files = sorted((tmp_path / "checkpoints").glob("*.pt"))
    assert {f.name for f in files} == {"m-last.pt", "m-best.pt"}
    for f in files:
        state = torch.load(f, map_location="cpu", weights_only=True)
        assert state
    last = torch.load(tmp_path / "checkpoints" / "m-last.pt", weights_only=True)
    assert set(last["rng"]) >= {"torch", "numpy", "python"} and last["epochs_done"] == 4


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint", "truncated"])
def test_unreadable_checkpoint_is_a_clear_error(tmp_path, content):
    from mdmt.train.checkpoint import CheckpointError, load_checkpoint

    _resume_setup(tmp_path)
    path = tmp_path / "checkpoints" / "m-last.pt"
    if content == "truncated":
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="m-last.pt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="m-last.pt"):
        _resume_setup(tmp_path, resume=True)


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    from mdmt.train.checkpoint import CheckpointError, load_weights

    spec, fm, model = _model()
    other = {"layer.weight": torch.zeros(2, 2)}
    with pytest.raises(CheckpointError, match="missing .*unexpected layer.weight"):
        load_weights(model, other, tmp_path / "x.pt", "model 'mlp'")


def test_cpu_trainer_keeps_freed_memory_unless_switched_off(monkeypatch):
    import mdmt.train.trainer as trainer_module

    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(1) or True)
    _, _, model = _model()
    Trainer(model, TrainConfig(device="cpu", progress=False), lambda p: 0.0)
    assert calls == [1]
    Trainer(model, TrainConfig(device="cpu", progress=False, keep_host_memory=False), lambda p: 0.0)
    assert calls == [1]


_FAULTS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from mdmt.train.hostmem import keep_freed_memory
    assert keep_freed_memory()
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Linear(64, 576), torch.nn.LayerNorm(576), torch.nn.ReLU(), torch.nn.Linear(576, 1))
opt = torch.optim.Adam(net.parameters())
x = torch.randn(20480, 64)  # activations of 47 MB, above every mmap threshold of glibc's
def step():
    opt.zero_grad(set_to_none=True)
    net(x).square().mean().backward()
    opt.step()
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults[4:])[4])  # the median step after the first four
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="mallopt settings of the GNU C library")
def test_kept_memory_is_reused_without_page_faults():
    """A training step with large activations: with the C library's defaults every step maps its
    large tensors afresh and faults their pages in (tens of thousands of pages a step here); with the
    memory kept, once the heap has grown to the step's peak (within a few steps), a step reuses it
    and faults in (almost) nothing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def faults_per_step(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, cwd=root,
                             check=True, env={**os.environ, "PYTHONPATH": str(root)})
        return int(out.stdout.strip().splitlines()[-1])

    assert faults_per_step("default") > 20_000
    assert faults_per_step("keep") < 1_000
