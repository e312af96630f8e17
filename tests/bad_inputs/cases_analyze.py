"""Bad inputs to ``mdmt analyze``."""

from __future__ import annotations

from . import Workspace, bad_input


@bad_input("cli", "Analysing a run of a model other than PMTA", expect="mdmt analyze reads runs of model 'pmta'")
def analyze_other_model(ws: Workspace) -> list[str]:
    ws.trained_run()
    return ["analyze", "runs/done"]


@bad_input("cli", "Analysing a run directory that does not exist", expect="no such run directory")
def analyze_missing_run(ws: Workspace) -> list[str]:
    ws.project()
    return ["analyze", "runs/typo"]
