"""Every case of the bad-input catalogue (``tests/bad_inputs``) ends with one clear message and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from .bad_inputs import load_cases, run_case
from .bad_inputs.make_doc import DOC

CASES = load_cases()


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_bad_input_gets_one_clear_message(case_id: str, tmp_path: Path):
    case = CASES[case_id]
    argv, outcome = run_case(case, tmp_path)
    assert outcome.code == 2, f"{argv}: exit {outcome.code}\n{outcome.stderr}"
    assert "Traceback" not in outcome.stderr + outcome.stdout
    message = outcome.message
    assert message.startswith(("mdmt: error", "usage:")), outcome.stderr
    assert len(message.splitlines()) <= 3 or message.startswith("usage:"), f"not one message: {message}"
    assert case.expect.lower() in message.lower(), f"{case.expect!r} not in: {message}"
    assert not outcome.changed, f"the failed command created or changed files under runs/: {outcome.changed}"


def test_errors_doc_lists_every_case():
    text = DOC.read_text()
    missing = [cid for cid in CASES if f'id="{cid}"' not in text]
    assert not missing, f"docs/errors.md is stale (run python -m tests.bad_inputs.make_doc): {missing}"
