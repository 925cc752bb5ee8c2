"""Evaluation metrics, MagicBrush protocol (SPEC "evaluation").

    l1, l2    mean absolute / mean squared difference on [0,1] pixels, after resizing the output
              to the ground truth's size (PIL bicubic). Need no weights: always computed.
    clip_i    cosine of the CLIP image embeddings (open_clip ViT-B-32, "openai") of output and
              ground truth.
    clip_t    cosine of the CLIP image embedding of the output and the CLIP text embedding of the
              sample's caption (the target caption, or the instruction when that is all there is).
    dino      cosine of DINO v1 ViT-S/16 CLS embeddings (transformers ViTModel; resize 256
              bicubic, centre crop 224, ImageNet mean / std).
    cmmd      Jayasumana et al. 2024 ("Rethinking FID"): the squared MMD between the L2-normalised
              CLIP ViT-L/14@336 embeddings of the outputs and of the ground truths, Gaussian RBF
              kernel k(x, y) = exp(-||x - y||^2 / (2 sigma^2)) with sigma = 10, the biased
              estimator (all pairs, diagonals included, as in the reference code), times 1000.
              A set-level number (summary only); rounding below 0 is clipped to 0.

A model that cannot be loaded (no internet and no local weights, unknown id ...) leaves its
metrics null with the reason (the exception's first line); nothing is ever estimated in its place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pbi_ml.config import resolve_device

SAMPLE_METRICS = ("l1", "l2", "clip_i", "clip_t", "dino")
SUMMARY_METRICS = (*SAMPLE_METRICS, "cmmd")

CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0

DINO_RESIZE = 256
DINO_CROP = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MetricsConfig:
    """Which models compute the model-based metrics. `enabled=False` leaves them all null."""

    clip_model: str = "ViT-B-32"  # open_clip name or model-config JSON path
    clip_pretrained: str = "openai"  # open_clip tag or checkpoint file
    dino_model: str = "facebook/dino-vits16"  # Hub id or local directory (transformers ViTModel)
    cmmd_clip_model: str = "ViT-L-14-336"
    cmmd_clip_pretrained: str = "openai"
    device: str = "auto"
    batch_size: int = 16
    enabled: bool = True


# --------------------------------------------------------------------------------------------
# pixel metrics


def pixel_metrics(output: np.ndarray, ground_truth: np.ndarray) -> dict:
    """{"l1", "l2"} of HxWx3 uint8 images on [0,1] pixels; the output is resized (PIL bicubic) to
    the ground truth's size first."""
    from PIL import Image

    gt_h, gt_w = ground_truth.shape[:2]
    if output.shape[:2] != (gt_h, gt_w):
        output = np.asarray(Image.fromarray(output).resize((gt_w, gt_h), Image.Resampling.BICUBIC))
    diff = output.astype(np.float64) / 255.0 - ground_truth.astype(np.float64) / 255.0
    return {"l1": float(np.abs(diff).mean()), "l2": float((diff**2).mean())}


# --------------------------------------------------------------------------------------------
# CMMD


def cmmd(x: np.ndarray, y: np.ndarray, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """scale * MMD^2(x, y) with a Gaussian RBF kernel of bandwidth sigma (biased estimator), for
    (N, D) and (M, D) embedding sets."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    gamma = 1.0 / (2.0 * sigma**2)

    def mean_kernel(a, b):
        sq = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
        return np.exp(-gamma * np.maximum(sq, 0.0)).mean()

    value = scale * (mean_kernel(x, x) + mean_kernel(y, y) - 2.0 * mean_kernel(x, y))
    return float(max(value, 0.0))  # a squared RKHS norm: a negative value is float rounding only


# --------------------------------------------------------------------------------------------
# DINO


class DinoEmbedder:
    """DINO v1 CLS embeddings (L2-normalised) through transformers `ViTModel`, loaded by Hub id or
    local directory on first use."""

    def __init__(self, model: str, device: str = "auto", batch_size: int = 16):
        self.model_id = model
        self.device_request = device
        self.batch_size = max(1, int(batch_size))
        self._model = None
        self._device = None

    def load(self) -> "DinoEmbedder":
        if self._model is None:
            import torch
            from transformers import ViTModel

            device = resolve_device(self.device_request)
            model = ViTModel.from_pretrained(self.model_id, add_pooling_layer=False, dtype=torch.float32)
            self._model = model.to(device).eval()
            self._device = device
        return self

    def preprocess(self, image: np.ndarray):
        """Resize the shortest side to 256 (bicubic), centre crop 224, ImageNet normalisation."""
        import torch
        from PIL import Image

        pil = Image.fromarray(image)
        w, h = pil.size
        if w <= h:
            size = (DINO_RESIZE, int(DINO_RESIZE * h / w))
        else:
            size = (int(DINO_RESIZE * w / h), DINO_RESIZE)
        pil = pil.resize(size, Image.Resampling.BICUBIC)
        w, h = pil.size
        left, top = int(round((w - DINO_CROP) / 2.0)), int(round((h - DINO_CROP) / 2.0))
        pil = pil.crop((left, top, left + DINO_CROP, top + DINO_CROP))
        array = np.asarray(pil, dtype=np.float32) / 255.0
        array = (array - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(IMAGENET_STD, dtype=np.float32)
        return torch.from_numpy(array.transpose(2, 0, 1).copy())

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        import torch

        self.load()
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[start : start + self.batch_size]]).to(
                self._device
            )
            with torch.inference_mode():
                cls = self._model(pixel_values=batch).last_hidden_state[:, 0]
            cls = cls.float().cpu().numpy()
            out.append(cls / np.maximum(np.linalg.norm(cls, axis=1, keepdims=True), 1e-12))
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


# --------------------------------------------------------------------------------------------
# all metrics


def compute_metrics(
    outputs: list[np.ndarray],
    ground_truths: list[np.ndarray],
    captions: list[str | None],
    config: MetricsConfig,
) -> tuple[list[dict], dict]:
    """Per-sample rows (l1, l2, clip_i, clip_t, dino, null_reason) and a summary (the mean of each
    sample metric over the samples that have it, cmmd, n, and `<metric>_null_reason` for every
    metric that is null)."""
    if not (len(outputs) == len(ground_truths) == len(captions)):
        raise ValueError(
            f"outputs ({len(outputs)}), ground_truths ({len(ground_truths)}) and captions ({len(captions)}) differ in length"
        )
    n = len(outputs)
    rows = [pixel_metrics(o, g) for o, g in zip(outputs, ground_truths)]
    reasons: list[dict[str, str]] = [{} for _ in range(n)]  # per sample: metric -> reason
    cmmd_value, cmmd_reason = None, None
    loaded: dict = {}

    def load(kind: str, model: str, pretrained: str | None = None):
        """A loaded embedder, or the reason it could not be loaded (as a str)."""
        key = (kind, model, pretrained)
        if key not in loaded:
            if not config.enabled:
                loaded[key] = "model metrics disabled (MetricsConfig.enabled = False)"
            else:
                # open_clip logs a root-level ERROR before raising when weights are absent; the
                # failure is expected and recorded as the metric's null reason, so keep it quiet
                logging.disable(logging.ERROR)
                try:
                    if kind == "clip":
                        from pbi_ml.clip_embedder import ClipEmbedder

                        loaded[key] = ClipEmbedder(
                            model, pretrained, device=config.device, batch_size=config.batch_size
                        ).load()
                    else:
                        loaded[key] = DinoEmbedder(model, device=config.device, batch_size=config.batch_size).load()
                except Exception as exc:  # offline without weights, unknown id, corrupt file ...
                    loaded[key] = _load_failure(kind, model, pretrained, exc)
                finally:
                    logging.disable(logging.NOTSET)
        return loaded[key]

    # CLIP-I / CLIP-T
    clip = load("clip", config.clip_model, config.clip_pretrained) if n else "no samples"
    if isinstance(clip, str):
        for r, why in zip(rows, reasons):
            r["clip_i"] = r["clip_t"] = None
            why["clip_i"] = why["clip_t"] = clip
    else:
        out_emb = clip.embed_images(list(outputs))
        gt_emb = clip.embed_images(list(ground_truths))
        texted = [i for i, c in enumerate(captions) if c]
        text_emb = dict(zip(texted, clip.embed_texts([captions[i] for i in texted]))) if texted else {}
        for i, (r, why) in enumerate(zip(rows, reasons)):
            r["clip_i"] = _cos(out_emb[i], gt_emb[i])
            r["clip_t"] = _cos(out_emb[i], text_emb[i]) if i in text_emb else None
            if i not in text_emb:
                why["clip_t"] = "no caption"

    # DINO
    dino = load("dino", config.dino_model) if n else "no samples"
    if isinstance(dino, str):
        for r, why in zip(rows, reasons):
            r["dino"] = None
            why["dino"] = dino
    else:
        out_emb, gt_emb = dino.embed_images(list(outputs)), dino.embed_images(list(ground_truths))
        for i, r in enumerate(rows):
            r["dino"] = _cos(out_emb[i], gt_emb[i])

    # CMMD
    cmmd_clip = load("clip", config.cmmd_clip_model, config.cmmd_clip_pretrained) if n else "no samples"
    if isinstance(cmmd_clip, str):
        cmmd_reason = cmmd_clip
    else:
        cmmd_value = cmmd(cmmd_clip.embed_images(list(outputs)), cmmd_clip.embed_images(list(ground_truths)))

    for r, why in zip(rows, reasons):
        r["null_reason"] = _join_reasons(why)

    summary: dict = {"n": n}
    for m in SAMPLE_METRICS:
        values = [r[m] for r in rows if r[m] is not None]
        summary[m] = float(np.mean(values)) if values else None
        if values:
            summary[f"{m}_null_reason"] = None
        else:
            first = next((why[m] for why in reasons if m in why), "no samples")
            summary[f"{m}_null_reason"] = first
    summary["cmmd"] = cmmd_value
    summary["cmmd_null_reason"] = cmmd_reason
    return [{k: r[k] for k in (*SAMPLE_METRICS, "null_reason")} for r in rows], summary


def _join_reasons(why: dict[str, str]) -> str | None:
    """ "clip_i, clip_t: <reason>; dino: <reason>" (metrics sharing a reason are named together)."""
    grouped: dict[str, list[str]] = {}
    for m in SAMPLE_METRICS:
        if m in why:
            grouped.setdefault(why[m], []).append(m)
    return "; ".join(f"{', '.join(ms)}: {reason}" for reason, ms in grouped.items()) or None


def _load_failure(kind: str, model: str, pretrained: str | None, exc: Exception) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    what = f"open_clip {model!r} / {pretrained!r}" if kind == "clip" else f"DINO ViTModel {model!r}"
    return f"{what} could not be loaded: {type(exc).__name__}: {first_line}".rstrip(": ")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.astype(np.float64), b.astype(np.float64)))
