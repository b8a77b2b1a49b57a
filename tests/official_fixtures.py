"""The official LaCT code's tiny models and outputs (``../shared/reference/official``), for the
converter tests; they skip cleanly where that folder is absent."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import REPO_ROOT

OFFICIAL = REPO_ROOT.parent / "shared/reference/official"


def load_cases(filename: str) -> tuple[list[dict], list[str], pytest.MarkDecorator]:
    """(cases, their names, a skip mark for when the file is absent) of one fixture file."""
    path = OFFICIAL / filename
    cases = torch.load(path, weights_only=False) if path.exists() else []
    skip = pytest.mark.skipif(not path.exists(), reason="official reference outputs not available")
    return cases, [c["name"] for c in cases], skip


def by_name(cases: list[dict], name: str) -> dict:
    return next(c for c in cases if c["name"] == name)
