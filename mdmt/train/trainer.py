"""The trainer: optimizers, schedule, early stopping with best-weight restore, checkpoints, logs.

The trainer never asks which model it holds (DESIGN §2): it asks the model for its
:meth:`~mdmt.models.base.MDMTModel.optim_groups` and builds one optimizer per group. Groups with
``step_on="train"`` are stepped on training batches with the task loss; groups with
``step_on="valid"`` (e.g. M3oE's architecture weights) are stepped on their own batches, drawn from
a held-out share of the training rows (``train.arch_holdout``, :mod:`mdmt.train.arch`) at the
cadence ``train.arch_every``, and never receive the main optimizer's updates; the main step never
sees the held-out rows.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
from torch import Tensor

from ..batch import Batch
from ..config import TrainConfig
from ..data.loader import BatchIterator
from ..models.base import MDMTModel, OptimGroup
from .arch import ArchSteps, holdout_rows
from .checkpoint import atomic_save, load_checkpoint, load_weights, rng_state, set_rng_state
from .hostmem import keep_freed_memory
from .loss import multitask_loss

__all__ = ["Trainer", "BatchSource", "FitResult", "seed_everything", "resolve_device", "atomic_save", "predict"]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally switch torch to deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA when available, else CPU. A device that does not exist here raises a ConfigError."""
    from ..schema import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"train.device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {name!r} requested but CUDA is not available on this machine "
                              "(use device: auto or cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device: {name!r} requested but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"train.device: {name!r} requested but MPS is not available on this machine")
    elif dev.type != "cpu":
        raise ConfigError(f"train.device: {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return dev


@torch.inference_mode()
def predict(model: MDMTModel, data: Batch, batch_size: int, device: torch.device) -> np.ndarray:
    """Probabilities ``[N, T]`` (task order = ``model.task_names``), in eval mode."""
    was_training = model.training
    model.eval()
    outs = []
    for start in range(0, len(data), batch_size):
        b = data.slice(start, start + batch_size).to(device)
        out = model(b)
        outs.append(torch.stack([out.logits[t] for t in model.task_names], 1).float().sigmoid().cpu())
    model.train(was_training)
    if not outs:
        return np.zeros((0, model.num_tasks))
    return torch.cat(outs).numpy().astype(np.float64)


class BatchSource(Protocol):
    """What :meth:`Trainer.fit` iterates: batches of one epoch per ``iter()``, reshuffled by ``set_epoch``."""

    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...


_OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
}


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns.

    ``best_epoch`` is 1-based (as in every log, report and ``metrics.json``), or None when no
    epoch had a defined validation score: then nothing could be selected and the model keeps the
    last epoch's weights (``selection`` says so). ``epochs_run`` counts the epochs trained in all,
    ``stopped_early`` is True when patience ended training before ``train.epochs``.
    """

    best_epoch: int | None
    best_score: float
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    samples_seen: int = 0
    epochs_run: int = 0
    stopped_early: bool = False
    selection: str = "best"  # "best": best validation epoch restored; "last": score undefined, last epoch kept

    @property
    def best_is_last(self) -> bool:
        """True when the budget ran out while the score was still improving (more epochs may help)."""
        return (self.selection == "best" and not self.stopped_early and self.best_epoch is not None
                and self.best_epoch == self.epochs_run)

    @property
    def samples_per_sec(self) -> float:
        return self.samples_seen / self.train_seconds if self.train_seconds > 0 else float("nan")


class Trainer:
    """Trains one model on one training split with early stopping on a validation score.

    Args:
        model: any registered model.
        cfg: the training config.
        score_fn: ``score_fn(probs [N, T]) -> float`` on the validation split (higher is better),
            e.g. the mean validation AUC over all (domain, task) cells.
        run_dir: where ``checkpoints/`` and ``log.jsonl`` go; None keeps everything in memory.
        tag: a name for this model inside a run (several per run in the per-domain/per-task regimes).
        task_weights: ``w_t`` of the loss ``Σ_t w_t · BCE_t`` in ``model.task_names`` order
            (``TaskSpec.weight``); default 1 for every task.
        groups: the optimizer groups; default ``model.optim_groups()`` (a warm start splits them,
            :mod:`mdmt.train.warmstart`). Every parameter that requires grad must be in one group.

    Example::

        trainer = Trainer(model, TrainConfig(epochs=3), score_fn=lambda p: evaluate(p, ...).avg_auc)
        result = trainer.fit(train_batch, valid_batch)   # restores the best epoch's weights
    """

    def __init__(
        self,
        model: MDMTModel,
        cfg: TrainConfig,
        score_fn: Callable[[np.ndarray], float],
        run_dir: Path | None = None,
        tag: str = "model",
        task_weights: list[float] | None = None,
        groups: list[OptimGroup] | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.score_fn = score_fn
        self.run_dir = run_dir
        self.tag = tag
        self.device = resolve_device(cfg.device)
        if cfg.keep_host_memory and self.device.type == "cpu":
            keep_freed_memory()  # no fresh pages for the step's large tensors (mdmt.train.hostmem)
        self.model.to(self.device)
        self.task_names = model.task_names
        if task_weights is not None and len(task_weights) != len(self.task_names):
            raise ValueError(f"{len(task_weights)} task weights for {len(self.task_names)} tasks")
        self._weights = torch.tensor(task_weights or [1.0] * len(self.task_names), device=self.device)
        groups = model.optim_groups() if groups is None else groups
        self._check_groups(groups)
        self.train_groups = [g for g in groups if g.step_on == "train"]
        self.valid_groups = [g for g in groups if g.step_on == "valid"]
        self.optimizers = [self._make_optimizer(g) for g in groups]
        self._train_opts = [o for o, g in zip(self.optimizers, groups) if g.step_on == "train"]
        self._valid_opts = [o for o, g in zip(self.optimizers, groups) if g.step_on == "valid"]
        self._train_params = [p for g in self.train_groups for p in g.params]
        self._valid_params = [p for g in self.valid_groups for p in g.params]
        self.schedulers: list[torch.optim.lr_scheduler.LRScheduler] = []
        self.log_path = (run_dir / f"log-{tag}.jsonl") if run_dir else None

    # ---- set-up ------------------------------------------------------------------------
    def _check_groups(self, groups: list[OptimGroup]) -> None:
        seen: set[int] = set()
        for g in groups:
            for p in g.params:
                if id(p) in seen:
                    raise ValueError(f"parameter appears in two optimizer groups (group {g.name!r})")
                seen.add(id(p))
        missing = [n for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in seen]
        if missing:
            raise ValueError(f"parameters in no optimizer group: {missing[:5]}")

    def _make_optimizer(self, g: OptimGroup) -> torch.optim.Optimizer:
        """One optimizer for ``g``; a field the group leaves at None inherits the training config's."""
        lr = self.cfg.lr if g.lr is None else g.lr
        kind = self.cfg.optimizer if g.optimizer is None else g.optimizer
        wd = self.cfg.weight_decay if g.weight_decay is None else g.weight_decay
        return _OPTIMIZERS[kind](g.params, lr=lr, weight_decay=wd)

    def _make_schedulers(self, total_steps: int) -> None:
        c = self.cfg
        if c.scheduler == "none":
            return

        def factor(step: int) -> float:
            if c.warmup_steps and step < c.warmup_steps:
                return (step + 1) / c.warmup_steps
            if c.scheduler in ("cosine", "warmup_cosine"):
                t = (step - c.warmup_steps) / max(1, total_steps - c.warmup_steps)
                return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
            if c.scheduler == "step":  # decay by step_gamma every epoch
                return c.step_gamma ** (step // max(1, self._steps_per_epoch))
            return 1.0

        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in self.optimizers]

    # ---- one step ---------------------------------------------------------------------------
    def _loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        out = self.model(batch)
        return multitask_loss(out, batch, self.task_names, self._weights)

    def train_step(self, batch: Batch) -> tuple[float, Tensor]:
        """One step of every train-group optimizer on ``batch``. Returns (loss, per-task loss [T])."""
        for o in self._train_opts:
            o.zero_grad(set_to_none=True)
        loss, per_task = self._loss(batch)
        loss.backward(inputs=self._train_params)
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self._train_params, self.cfg.grad_clip)
        for o in self._train_opts:
            o.step()
        return loss.detach(), per_task

    def arch_step(self, batch: Batch) -> None:
        """One step of the ``step_on="valid"`` groups on a held-out batch (bi-level search, M3oE Eq. 11).

        Only those groups' parameters get gradients; every other parameter is left untouched."""
        for o in self._valid_opts:
            o.zero_grad(set_to_none=True)
        loss, _ = self._loss(batch)
        loss.backward(inputs=self._valid_params)
        for o in self._valid_opts:
            o.step()

    def _arch_holdout(self, train: Batch | BatchSource) -> tuple[Batch, ArchSteps]:
        """Set ``train.arch_holdout`` of the training rows aside for the architecture steps.

        Returns the main rows and the :class:`ArchSteps` over the held-out rows. The split is
        seeded by ``train.seed``, so a resumed run holds out the same rows."""
        from ..schema import ConfigError

        c = self.cfg
        if not isinstance(train, Batch):
            raise ConfigError("the model has architecture weights (bi-level steps on held-out training rows): "
                              "it needs the training split in memory; set train.streaming: false")
        if c.arch_holdout <= 0:
            raise ConfigError("train.arch_holdout must be > 0 for a model with architecture weights "
                              f"(groups {[g.name for g in self.valid_groups]}): they are stepped on held-out "
                              "training rows, e.g. arch_holdout: 0.1")
        main_rows, arch_rows = holdout_rows(len(train), c.arch_holdout, c.seed)
        self.main_rows, self.arch_rows = main_rows, arch_rows
        steps = ArchSteps(train.index(arch_rows), c.batch_size, c.arch_every, self.arch_step,
                          seed=c.seed + 7919, device=self.device)
        return train.index(main_rows), steps

    # ---- checkpoints ----------------------------------------------------------------------
    def _ckpt_dir(self) -> Path | None:
        return self.run_dir / "checkpoints" if self.run_dir else None

    def _state(self, epochs_done: int, best: dict, history: list[dict]) -> dict:
        """The resumable training state; tensors and plain data only (loads with ``weights_only=True``)."""
        return {
            "epochs_done": epochs_done,
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "best": best,
            "history": history,
            "rng": rng_state(),
        }

    def _log(self, record: dict) -> None:
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _check_finite(self, loss_sum: Tensor, epoch: int, step: int) -> None:
        if not bool(torch.isfinite(loss_sum)):
            raise FloatingPointError(
                f"{self.tag}: the training loss became non-finite by epoch {epoch + 1}, step {step}; "
                "lower train.lr or set train.grad_clip"
            )

    def _should_stop(self, bad_epochs: int) -> bool:
        """Stop after ``patience`` epochs in a row without improvement (``patience=0``: never)."""
        return self.cfg.patience > 0 and bad_epochs >= self.cfg.patience

    # ---- the loop ---------------------------------------------------------------------------
    def fit(
        self, train: Batch | BatchSource, valid: Batch, resume: bool = False, progress: Callable | None = None
    ) -> FitResult:
        """Train with early stopping on ``score_fn(valid)``, then restore the best weights.

        ``train`` is a whole split in memory (sliced per batch by a shuffling
        :class:`~mdmt.data.loader.BatchIterator`) or any batch source with ``set_epoch`` and
        ``__len__``, e.g. a :class:`~mdmt.data.loader.ParquetStream` for data larger than memory.
        ``resume`` continues from ``checkpoints/<tag>-last.pt`` when it exists (weights, optimizer
        and scheduler states, RNG states, best epoch so far and history), else starts afresh.
        ``progress`` (optional) is called as ``progress(event, **info)`` for a live display.

        Epochs are numbered from 1 in the returned history, the logs and ``best_epoch``. An epoch
        whose validation score is NaN (e.g. no validation cell holds both classes) never counts as
        an improvement; when no epoch has a defined score, the last epoch's weights are kept and
        ``FitResult.selection`` is ``"last"``.
        """
        c = self.cfg
        it = train if not isinstance(train, Batch) else BatchIterator(train, c.batch_size, shuffle=True, seed=c.seed)
        self._steps_per_epoch = len(it) if c.max_steps_per_epoch is None else min(len(it), c.max_steps_per_epoch)
        arch: ArchSteps | None = None
        if self.valid_groups:  # bi-level: architecture steps on held-out training rows
            train, arch = self._arch_holdout(train)
            it = BatchIterator(train, c.batch_size, shuffle=True, seed=c.seed)
            self._steps_per_epoch = len(it) if c.max_steps_per_epoch is None else min(len(it), c.max_steps_per_epoch)
        self._make_schedulers(self._steps_per_epoch * c.epochs)
        history: list[dict] = []
        best: dict = {"score": -math.inf, "epoch": None, "state": None}
        start_epoch, stopped = 0, False
        ckpt_dir = self._ckpt_dir()
        last = ckpt_dir / f"{self.tag}-last.pt" if ckpt_dir else None
        if resume and last is not None and last.exists():
            state = load_checkpoint(last, map_location=self.device)
            self._restore(state, last)
            best, history = state["best"], state["history"]
            start_epoch = int(state["epochs_done"])
            stopped = bool(state.get("stopped"))
        seen, seconds, bad_epochs = 0, 0.0, 0
        if history:
            bad_epochs = history[-1].get("bad_epochs", 0)
        self.model.train()
        for epoch in range(start_epoch, c.epochs):
            if stopped:
                break
            it.set_epoch(epoch)
            if arch is not None:
                arch.start_epoch(epoch)
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=self.device)
            steps = rows = 0
            for step, batch in enumerate(it):
                if c.max_steps_per_epoch is not None and step >= c.max_steps_per_epoch:
                    break
                batch = batch.to(self.device, non_blocking=True)
                loss, _ = self.train_step(batch)
                if arch is not None:
                    arch.after_main_step()
                for s in self.schedulers:
                    s.step()
                loss_sum += loss
                steps += 1
                rows += len(batch)
                if step % 20 == 0:  # a host sync only every 20 steps
                    self._check_finite(loss_sum, epoch, step)
                if progress is not None and (step % 20 == 0):
                    progress("step", tag=self.tag, epoch=epoch + 1, step=step, steps=self._steps_per_epoch,
                             loss=float(loss), rows=rows)
            if arch is not None:
                arch.after_epoch()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            epoch_seconds = time.perf_counter() - t0
            self._check_finite(loss_sum, epoch, steps)
            seconds += epoch_seconds
            seen += rows
            probs = predict(self.model, valid, c.eval_batch_size, self.device)
            score = float(self.score_fn(probs))
            improved = math.isfinite(score) and score > best["score"] + c.min_delta
            if improved:
                best = {"score": score, "epoch": epoch + 1, "state": copy.deepcopy(self.model.state_dict())}
                bad_epochs = 0
            else:
                bad_epochs += 1
            stopped = self._should_stop(bad_epochs)
            rec = {
                "tag": self.tag,
                "epoch": epoch + 1,
                "train_loss": float(loss_sum) / max(steps, 1),
                "valid_score": score,
                "best_epoch": best["epoch"],
                "lr": self.optimizers[0].param_groups[0]["lr"],
                "epoch_seconds": epoch_seconds,
                "samples_per_sec": rows / epoch_seconds if epoch_seconds > 0 else None,
                "bad_epochs": bad_epochs,
            }
            values = self.model.report_values()
            if values:  # e.g. M3oE's α, β after this epoch
                rec["model_values"] = values
            history.append(rec)
            self._log(rec)
            if progress is not None:
                progress("epoch", **rec)
            if last is not None:
                state = self._state(epoch + 1, best, history)
                state["stopped"] = stopped
                atomic_save(state, last)
        selection = "best"
        if best["state"] is not None:  # restore the best epoch, never the last
            self.model.load_state_dict(best["state"])
        else:
            selection = "last"
        if ckpt_dir is not None:
            atomic_save(self.model.state_dict(), ckpt_dir / f"{self.tag}-best.pt")
        return FitResult(best_epoch=best["epoch"], best_score=best["score"], history=history,
                         train_seconds=seconds, samples_seen=seen, epochs_run=len(history),
                         stopped_early=stopped and len(history) < c.epochs, selection=selection)

    def _restore(self, state: dict, path: Path) -> None:
        """Load a ``-last.pt`` training state (weights, optimizers, schedulers, RNG) into this trainer."""
        from .checkpoint import CheckpointError

        keys = {"epochs_done", "model", "optimizers", "schedulers", "best", "history", "rng"}
        if not isinstance(state, dict) or not keys <= set(state):
            raise CheckpointError(f"{path}: not a training checkpoint (expected the keys {sorted(keys)})")
        load_weights(self.model, state["model"], path, f"model {self.tag!r} of this run")
        if len(state["optimizers"]) != len(self.optimizers) or len(state["schedulers"]) != len(self.schedulers):
            raise CheckpointError(f"{path}: written with {len(state['optimizers'])} optimizer(s) and "
                                  f"{len(state['schedulers'])} scheduler(s), this run has {len(self.optimizers)} "
                                  f"and {len(self.schedulers)}; resume with the run's own training settings")
        try:
            for o, s in zip(self.optimizers, state["optimizers"]):
                o.load_state_dict(s)
            for sch, s in zip(self.schedulers, state["schedulers"]):
                sch.load_state_dict(s)
            set_rng_state(state["rng"])
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{path}: its optimizer or RNG state does not fit this run: {err}") from None
