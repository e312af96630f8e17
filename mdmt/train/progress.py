"""Live progress display for training: a rich progress bar with loss and samples per second."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["RunProgress"]


class RunProgress:
    """Context manager fed by :meth:`Trainer.fit`'s ``progress`` callback.

    Shows one bar per epoch of the current unit with the live loss and training samples/s, and
    prints a line per finished epoch (validation score, best epoch).
    """

    def __init__(self, enabled: bool = True, units: int = 1, epochs: int = 1, console: Console | None = None) -> None:
        self.enabled = enabled
        self.units = units
        self.epochs = epochs
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task = None
        self._unit = ""
        self._t0 = time.perf_counter()

    def __enter__(self) -> "RunProgress":
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TextColumn("{task.fields[sps]:>9,.0f} samples/s"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start_unit(self, tag: str, steps: int | None) -> None:
        self._unit = tag

    def update(self, event: str, **info) -> None:
        if self._progress is None:
            return
        if event == "step":
            desc = f"{info['tag']} epoch {info['epoch']}/{self.epochs}"
            if self._task is None or info["step"] == 0:
                if self._task is not None:
                    self._progress.remove_task(self._task)
                self._task = self._progress.add_task(desc, total=info["steps"], loss=float("nan"), sps=0.0)
                self._t0 = time.perf_counter()
            dt = time.perf_counter() - self._t0  # info["rows"]: rows trained so far this epoch
            self._progress.update(self._task, completed=info["step"] + 1, loss=info["loss"],
                                  sps=info["rows"] / dt if dt > 0 else 0.0)
        elif event == "epoch":
            if self._task is not None:
                self._progress.remove_task(self._task)
                self._task = None
            sps = info.get("samples_per_sec") or 0.0
            best = info["best_epoch"] if info["best_epoch"] is not None else "none (score undefined)"
            self._progress.console.print(
                f"[dim]{info['tag']}[/] epoch {info['epoch']}: train loss {info['train_loss']:.4f}  "
                f"valid score {info['valid_score']:.4f}  best epoch {best}  {sps:,.0f} samples/s"
            )
