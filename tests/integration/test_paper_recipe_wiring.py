"""The paper's recipe is configuration only: every real backend, chosen through Dagster run config,
runs through the real assets end to end. Weights are tiny random models the test builds and saves
(and the real SmolLM2 for the LLM), loaded through the same from_pretrained / open_clip paths a
user's Hub ids take. The numbers mean nothing; the wiring is what is tested."""

from __future__ import annotations

import duckdb

from pbi_assets.partitions import PROJECT
from pbi_ml.storage import Storage
from tests.support.pipeline_helpers import materialize_partition, materialize_unpartitioned, metadata_of
from tests.support.tiny_clip import save_tiny_clip, save_tiny_dino


def test_all_real_backends_by_configuration(tmp_path, tiny_vlm_dir, smollm2_dir):
    from pbi_ml.tiny_sd import save_tiny_inpaint_pipeline, save_tiny_text2image_pipeline

    inpaint_dir = save_tiny_inpaint_pipeline(tmp_path / "sd-inpaint")
    sd_dir = save_tiny_text2image_pipeline(tmp_path / "sd15")
    clip_config, clip_weights = save_tiny_clip(tmp_path / "clip", name="pbi-wiring-clip")
    dino_dir = save_tiny_dino(tmp_path / "dino")
    root = tmp_path / "data"

    partitioned = {
        "ops": {
            "class_scores": {
                "config": {
                    "backend": "clip",
                    "clip_model": clip_config,
                    "clip_pretrained": clip_weights,
                    "device": "cpu",
                    "min_class_sim": -1.0,  # a random CLIP: keep every object, this tests wiring
                }
            },
            "removals": {
                "config": {
                    "backend": "diffusers",
                    "model": str(inpaint_dir),
                    "steps": 2,
                    "resolution": 64,
                    "device": "cpu",
                }
            },
            "removal_scores": {
                "config": {
                    "backend": "clip",
                    "clip_model": clip_config,
                    "clip_pretrained": clip_weights,
                    "device": "cpu",
                    # a random CLIP would reject everything: open the gates, this tests wiring not quality
                    "clip_max_consensus_std": 10.0,
                    "clip_max_removal_sim": 1.0,
                    "clip_max_importance_sim": 1.01,
                }
            },
            "descriptions": {
                "config": {"backend": "vlm", "model": str(tiny_vlm_dir), "max_new_tokens": 6, "device": "cpu"}
            },
            "instructions": {
                "config": {"backend": "llm", "model": str(smollm2_dir), "max_new_tokens": 12, "device": "cpu"}
            },
            "splits": {"config": {"test_fraction": 0.5}},
        }
    }
    for shard in PROJECT.shard_keys:
        assert materialize_partition("gen_coco", shard, root, run_config=partitioned).success
    unpartitioned = {
        "ops": {
            "checkpoint": {
                "config": {
                    "recipe": "paper",
                    "init_model": str(sd_dir),
                    "resolution": 32,
                    "train_batch_size": 2,
                    "gradient_accumulation_steps": 1,
                    "max_steps": 2,
                    "num_epochs": None,
                    "checkpoint_every": 1,
                    "device": "cpu",
                }
            },
            "evaluation": {
                "config": {
                    "num_inference_steps": 2,
                    "resolution": 64,
                    "max_samples": 2,
                    "device": "cpu",
                    "clip_model": clip_config,
                    "clip_pretrained": clip_weights,
                    "dino_model": str(dino_dir),
                    "cmmd_clip_model": clip_config,
                    "cmmd_clip_pretrained": clip_weights,
                }
            },
        }
    }
    result = materialize_unpartitioned(root, run_config=unpartitioned)
    assert result.success

    con = duckdb.connect(str(Storage(root).catalog_path), read_only=True)
    assert {r[0] for r in con.execute("SELECT DISTINCT backend FROM removals").fetchall()} == {"diffusers"}
    assert {r[0] for r in con.execute("SELECT DISTINCT method FROM removals").fetchall()} == {
        "sd seed=0",
        "sd seed=1",
        "sd seed=2",
    }
    assert con.execute("SELECT count(*) FROM class_scores WHERE clip_class_sim IS NULL").fetchone()[0] == 0
    assert {r[0] for r in con.execute("SELECT DISTINCT class_filter FROM candidates WHERE kept").fetchall()} == {
        "passed"
    }
    nulls = con.execute(
        "SELECT count(*) FROM removal_scores WHERE clip_removal_sim IS NULL OR clip_importance_sim IS NULL OR clip_null_reason IS NOT NULL"
    ).fetchone()[0]
    assert nulls == 0
    rows = con.execute(
        "SELECT description, instruction_vlm_llm_raw, instruct_backend FROM pairs JOIN instructions USING (pair_id)"
    ).fetchall()
    assert rows and all(d is not None for d, _, _ in rows) and {b for *_, b in rows} == {"llm"}
    assert all(raw for _, raw, _ in rows), "SmolLM2 answered every pair"
    evaluation = con.execute(
        "SELECT n, l1, clip_i, clip_t_instruction, dino, cmmd_all, clip_t_null_reason, cmmd_null_reason "
        "FROM evaluations WHERE benchmark = 'pipe_test'"
    ).fetchone()
    con.close()
    n, l1, clip_i, clip_t_instruction, dino, cmmd_all, clip_t_why, cmmd_why = evaluation
    assert n >= 1 and None not in (l1, clip_i, clip_t_instruction, dino, cmmd_all), evaluation
    # PIPE test pairs have no target caption (MagicBrush's CLIP-T), and 2 images fill no CMMD batch of 32
    assert clip_t_why and cmmd_why, evaluation
    meta = metadata_of(result, "checkpoint")
    assert meta["recipe"] == "paper" and meta["smoke_model"] is False and meta["steps"] == 2
