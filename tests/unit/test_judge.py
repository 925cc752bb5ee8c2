"""The pair judge (pbi_ml/judge.py): the answer parser on well-formed and malformed answers, the
rubric's capping rule, the split filter on its scores, and the vlm backend on the tiny Qwen2-VL."""

from __future__ import annotations

import pytest
import skimage.data

from pbi_ml.config import SplitConfig
from pbi_ml.errors import ConfigError
from pbi_ml.judge import JUDGE_PROMPT, UNPARSED_ANSWER, JudgeConfig, JudgeItem, judgment, lowest_judged, make_judge
from pbi_ml.judge import parse_judgment as parse
from pbi_ml.splits import judged_out


def test_a_json_answer_is_read_with_its_reason():
    row = parse('{"compliance": 4, "naturalness": 3, "coherence": 5, "reason": "The dog sits on the grass."}')
    assert (row["judge_compliance"], row["judge_naturalness"], row["judge_coherence"]) == (4, 3, 4)  # 5 capped by 4
    assert row["judge_score"] == pytest.approx(11 / 3, abs=1e-4)
    assert row["judge_reason"] == "The dog sits on the grass."
    assert row["judge_null_reason"] is None


def test_the_last_two_scores_are_capped_by_compliance():
    row = judgment(1, 5, 4, reason="no cat was added")
    assert (row["judge_compliance"], row["judge_naturalness"], row["judge_coherence"]) == (1, 1, 1)
    assert row["judge_score"] == 1.0
    row = judgment(5, 2, 3)
    assert (row["judge_naturalness"], row["judge_coherence"], row["judge_score"]) == (
        2,
        3,
        pytest.approx(10 / 3, abs=1e-4),
    )


def test_answers_in_prose_fences_or_with_string_scores_are_read():
    fenced = 'Sure!\n```json\n{"Compliance": "5", "Naturalness": 4, "Coherence": 4, "Reason": "Looks real."}\n```'
    assert parse(fenced)["judge_score"] == pytest.approx(13 / 3, abs=1e-4)
    prose = "Prompt compliance: 3/5\nVisual naturalness: 2\nPhysical and detail coherence - 4\nReason: a bit flat."
    row = parse(prose)
    assert (row["judge_compliance"], row["judge_naturalness"], row["judge_coherence"]) == (3, 2, 3)
    assert row["judge_reason"] == "a bit flat."
    # a broken JSON object falls back to the key: value reading
    row = parse('{"compliance": 2, "naturalness": 2, "coherence": 1, "reason": "unterminated')
    assert (row["judge_compliance"], row["judge_coherence"]) == (2, 1)


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "I cannot judge this image.",
        '{"compliance": 4, "naturalness": 3}',  # a score missing
        '{"compliance": 7, "naturalness": 3, "coherence": 2}',  # out of range
        '{"compliance": 4.5, "naturalness": 3, "coherence": 2}',  # not an integer
        "compliance: 10, naturalness: 3, coherence: 2",  # 10 is not 1
        "[1, 2, 3]",
        None,
    ],
)
def test_a_malformed_answer_is_a_row_with_null_scores_and_the_reason(answer):
    row = parse(answer)
    assert row["judge_score"] is None and row["judge_compliance"] is None
    assert row["judge_null_reason"] == UNPARSED_ANSWER
    assert row["judge_raw"] == (answer or "")


def test_lowest_judged_skips_unscored_rows_and_sorts_up():
    rows = [
        {"pair_id": "a", "judge_score": 4.0},
        {"pair_id": "b", "judge_score": None},
        {"pair_id": "c", "judge_score": 1.5},
        {"pair_id": "d", "judge_score": 1.5},
    ]
    assert [r["pair_id"] for r in lowest_judged(rows, 2)] == ["c", "d"]


def test_the_split_filter_leaves_out_low_scores_and_keeps_unscored_pairs():
    scores = {"low": 1.0, "edge": 3.0, "high": 4.5, "unscored": None}
    assert judged_out(scores, SplitConfig()) == set()  # off by default
    assert judged_out(scores, SplitConfig(min_judge_score=3.0)) == {"low"}
    with pytest.raises(ConfigError, match="SplitConfig.min_judge_score"):
        SplitConfig(min_judge_score=-1)


def test_the_off_backend_has_no_model_and_bad_configs_name_the_field():
    assert not JudgeConfig().uses_device and JudgeConfig(backend="vlm").uses_device
    with pytest.raises(ConfigError, match="no model"):
        make_judge(JudgeConfig())
    with pytest.raises(ConfigError, match="JudgeConfig.backend"):
        JudgeConfig(backend="gpt")
    assert "{instruction}" in JUDGE_PROMPT


def test_vlm_judge_code_path_with_tiny_qwen2_vl(tiny_vlm_dir):
    cat = skimage.data.chelsea()[::4, ::4].copy()
    cup = skimage.data.coffee()[::8, ::8].copy()
    items = [
        JudgeItem(cat, cat[:, ::-1].copy(), "add a cat"),
        JudgeItem(cup, cup, "add a cup on the table"),
        JudgeItem(cat, cat, "add a mouse"),
    ]
    judge = make_judge(
        JudgeConfig(backend="vlm", model=str(tiny_vlm_dir), batch_size=2, max_new_tokens=8, device="cpu")
    )
    rows = judge.judge(items)
    assert len(rows) == 3
    # random weights: the answers are not the rubric's JSON, so each is a row with the reason and the raw text
    for row in rows:
        assert set(row) >= {"judge_score", "judge_reason", "judge_raw", "judge_null_reason"}
        assert row["judge_score"] is not None or row["judge_null_reason"] == UNPARSED_ANSWER
        assert isinstance(row["judge_raw"], str)
    assert judge.judge(items) == rows  # greedy: deterministic
    assert judge.judge(items[1:2]) == rows[1:2]  # left padding: batch-independent
