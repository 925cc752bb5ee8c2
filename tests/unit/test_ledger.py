"""The item ledger (`pbi_ml.storage.Ledger`): what a kill -9 can leave in it, and how it reads."""

from __future__ import annotations

from pbi_ml.storage import Ledger


def test_a_torn_last_line_is_ignored_and_the_next_append_ends_it(tmp_path):
    ledger = Ledger(tmp_path / "items" / "ledger.jsonl")
    ledger.append([{"key": "a", "n": 1}, {"key": "b", "n": 1}])
    with open(ledger.path, "ab") as handle:  # a kill -9 in the middle of an append
        handle.write(b'{"key": "c", "n"')
    assert ledger.read() == ({"a": {"key": "a", "n": 1}, "b": {"key": "b", "n": 1}}, 3)

    ledger.append([{"key": "a", "n": 2}, {"key": "c", "n": 2}])
    records, lines = ledger.read()
    assert records == {"a": {"key": "a", "n": 2}, "b": {"key": "b", "n": 1}, "c": {"key": "c", "n": 2}}
    assert lines == 5, "the torn line is a line of its own, skipped"

    ledger.rewrite([records[key] for key in sorted(records)])
    assert ledger.read() == (records, 3)
    assert ledger.path.read_bytes().count(b"\n") == 3
    assert sorted(p.name for p in ledger.path.parent.iterdir()) == ["ledger.jsonl"], "no temp file left"


def test_an_absent_ledger_reads_empty(tmp_path):
    assert Ledger(tmp_path / "ledger.jsonl").read() == ({}, 0)


def test_verify_names_the_item_stages_for_an_unknown_stage(tmp_path):
    import pytest

    from pbi_ml.stages.item_stage import verify_report
    from pbi_ml.storage import Storage

    with pytest.raises(ValueError, match="'removal' is not an item stage; one of class_scores, removals"):
        verify_report(Storage(tmp_path), "demo", "removal")
    assert verify_report(Storage(tmp_path), "demo", "removals") == (["every finished item is intact"], True)
