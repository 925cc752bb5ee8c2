"""Evaluation metrics, computed as the reference implementations compute them (docs/method.md#evaluation).

Per sample (MagicBrush's evaluation/image_eval.py, "all turns" setting: one (input, instruction,
ground truth) triple per row):

    l1, l2              mean absolute / mean squared difference on [0,1] pixels (torch's L1Loss /
                        MSELoss on ToTensor images there), after resizing the output to the ground
                        truth's size with PIL bicubic (PIL's default there). Need no weights.
    clip_i              cosine of the CLIP image embeddings of output and ground truth: OpenAI CLIP
                        ViT-B/32 (`clip.load("ViT-B/32")` there; open_clip "ViT-B-32" / "openai"
                        here, built with QuickGELU as those weights were trained) with the model's
                        own preprocessing (resize shortest side 224 bicubic, centre crop 224, CLIP
                        normalisation).
    clip_t              cosine of the CLIP image embedding of the output and the CLIP text
                        embedding of the ground truth's LOCAL CAPTION (MagicBrush's
                        `local_captions.json`, the caption of the target image). Null, with the
                        reason, when the sample has no caption (PIPE test has none).
    clip_t_instruction  the same cosine against the edit instruction instead. Not a published
                        metric: kept under its own name so it is never mistaken for CLIP-T.
    dino                cosine of DINO v1 ViT-S/16 CLS embeddings (`dino_vits16` from torch.hub
                        there; transformers ViTModel "facebook/dino-vits16" here): resize shortest
                        side 256 bicubic, centre crop 224, ImageNet mean / std.

Per set (google-research/cmmd, Jayasumana et al. 2024, "Rethinking FID"):

    cmmd                the squared MMD between the CLIP ViT-L/14@336 image embeddings of the
                        outputs and of the ground truths, Gaussian RBF kernel
                        k(x, y) = exp(-||x - y||^2 / (2 sigma^2)), sigma = 10, the biased
                        estimator (all pairs, diagonals included), times 1000, as the reference
                        computes it: images in sorted file order, centre-cropped to a square and
                        resized to 336 with PIL bicubic, embedded in batches of 32 with
                        drop_remainder=True (so only the first floor(N / 32) * 32 images count:
                        128 of MagicBrush-add's 144), embeddings and kernel sums in float32, the
                        value not clipped at 0. Null, with the reason, when N < 32.
    cmmd_n              how many images of each set `cmmd` used.
    cmmd_all            the same estimator on ALL N images (float32 too): not the reference's
                        number; useful when N is small or not a multiple of 32.

A model that cannot be loaded (no internet and no local weights, unknown id ...) leaves its
metrics null with the reason (the exception's first line); nothing is ever estimated in its place.
A CLIP model whose activation would not match its weights' (see `pbi_ml.clip_embedder`) is an
error, never a null metric.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pbi_ml.config.fields import check_fields
from pbi_ml.devices import resolve_device

SAMPLE_METRICS = ("l1", "l2", "clip_i", "clip_t", "clip_t_instruction", "dino")
SET_METRICS = ("cmmd", "cmmd_all")
SUMMARY_METRICS = (*SAMPLE_METRICS, *SET_METRICS)

CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0
CMMD_BATCH_SIZE = 32  # google-research/cmmd's default batch size; the remainder is dropped
NO_CAPTION = "no target caption (MagicBrush's CLIP-T scores the target's local caption; see clip_t_instruction)"

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
    cmmd_batch_size: int = CMMD_BATCH_SIZE  # the reference's; `cmmd` uses floor(N / this) * this images
    device: str = "auto"
    batch_size: int = 16
    enabled: bool = True

    def __post_init__(self):
        check_fields(self, cmmd_batch_size="positive", batch_size="positive")


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
    """scale * MMD^2(x, y) with a Gaussian RBF kernel of bandwidth sigma (biased estimator) of
    (N, D) and (M, D) embedding sets, in float32 like google-research/cmmd's distance.mmd (squared
    norms from the Gram matrices' diagonals, no clipping: rounding can leave a tiny negative value
    for two equal sets)."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    gamma = np.float32(1.0 / (2.0 * sigma**2))
    x_sq = np.diag(x @ x.T)
    y_sq = np.diag(y @ y.T)

    def mean_kernel(a, a_sq, b, b_sq):
        return np.mean(np.exp(-gamma * (np.float32(-2.0) * (a @ b.T) + a_sq[:, None] + b_sq[None, :])))

    k_xx = mean_kernel(x, x_sq, x, x_sq)
    k_yy = mean_kernel(y, y_sq, y, y_sq)
    k_xy = mean_kernel(x, x_sq, y, y_sq)
    return float(np.float32(scale) * (k_xx + k_yy - np.float32(2.0) * k_xy))


def cmmd_indices(sort_keys: list[str], batch_size: int = CMMD_BATCH_SIZE) -> list[int]:
    """Indices of the images the reference's CMMD embeds: the first floor(N / batch_size) *
    batch_size in sorted key (file name) order, i.e. batches with drop_remainder=True."""
    order = sorted(range(len(sort_keys)), key=lambda i: sort_keys[i])
    return order[: len(order) // batch_size * batch_size]


def cmmd_square(image: np.ndarray, size: int) -> np.ndarray:
    """google-research/cmmd's preprocessing: centre crop to a square of the shorter side (offsets
    (side difference) // 2), then PIL bicubic resize to size x size."""
    from PIL import Image

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    pil = Image.fromarray(np.ascontiguousarray(image[top : top + side, left : left + side]))
    if side != size:
        pil = pil.resize((size, size), resample=Image.Resampling.BICUBIC)
    return np.asarray(pil)


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

    def load(self) -> DinoEmbedder:
        if self._model is None:
            import torch
            from transformers import ViTModel

            device = resolve_device(self.device_request)
            model = ViTModel.from_pretrained(self.model_id, add_pooling_layer=False, dtype=torch.float32)
            # transformers types PreTrainedModel.to as @wraps(nn.Module.to), which pyright can't bind to the model
            self._model = model.to(device).eval()  # pyright: ignore[reportArgumentType]
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
        model = self._model
        assert model is not None, "load() sets the model"
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[start : start + self.batch_size]]).to(
                self._device
            )
            with torch.inference_mode():
                cls = model(pixel_values=batch).last_hidden_state[:, 0]
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
    instructions: list[str | None] | None = None,
    sort_keys: list[str] | None = None,
) -> tuple[list[dict], dict]:
    """Per-sample rows and a summary (see the module docstring for each metric).

    `captions`: the ground truth's caption per sample (None: clip_t null with the reason);
    `instructions`: the edit instruction per sample (clip_t_instruction; None: all null);
    `sort_keys`: the file name each sample's images are stored under, which orders the images for
    CMMD's drop-remainder batching (None: the sample order).

    Rows hold SAMPLE_METRICS and `null_reason`; the summary holds n, the mean of each sample
    metric over the samples that have it, cmmd, cmmd_all, cmmd_n, and `<metric>_null_reason` for
    every metric that is null."""
    n = len(outputs)
    instructions = list(instructions) if instructions is not None else [None for _ in range(n)]
    sort_keys = list(sort_keys) if sort_keys is not None else [f"{i:09d}" for i in range(n)]
    lengths = {len(ground_truths), len(captions), len(instructions), len(sort_keys)}
    if lengths != {n}:
        raise ValueError(
            f"outputs ({n}), ground_truths ({len(ground_truths)}), captions ({len(captions)}), "
            f"instructions ({len(instructions)}) and sort_keys ({len(sort_keys)}) differ in length"
        )
    rows = [pixel_metrics(o, g) for o, g in zip(outputs, ground_truths, strict=True)]
    reasons: list[dict[str, str]] = [{} for _ in range(n)]  # per sample: metric -> reason
    loaded: dict = {}

    def load(kind: str, model: str, pretrained: str | None = None, precision: str = "auto"):
        """A loaded embedder, or the reason it could not be loaded (as a str)."""
        from pbi_ml.clip_embedder import ActivationMismatchError, ClipEmbedder

        key = (kind, model, pretrained, precision)
        if key not in loaded:
            if not config.enabled:
                loaded[key] = "model metrics disabled (MetricsConfig.enabled = False)"
            else:
                try:
                    if kind == "clip":  # (open_clip's own ERROR log lines are dropped by the embedder)
                        loaded[key] = ClipEmbedder(
                            model, pretrained, device=config.device, batch_size=config.batch_size, precision=precision
                        ).load()
                    else:
                        # a failed load is expected offline and recorded as the null reason: keep
                        # the library's log line about it quiet
                        logging.disable(logging.ERROR)
                        try:
                            loaded[key] = DinoEmbedder(model, device=config.device, batch_size=config.batch_size).load()
                        finally:
                            logging.disable(logging.NOTSET)
                except ActivationMismatchError:
                    raise  # wrong activation for the weights: a configuration error, never a null metric
                except Exception as exc:  # offline without weights, unknown id, corrupt file ...
                    loaded[key] = _load_failure(kind, model, pretrained, exc)
        return loaded[key]

    # CLIP-I / CLIP-T / CLIP-T against the instruction
    clip = load("clip", config.clip_model, config.clip_pretrained) if n else "no samples"
    if isinstance(clip, str):
        for r, why in zip(rows, reasons, strict=True):
            for m in ("clip_i", "clip_t", "clip_t_instruction"):
                r[m] = None
                why[m] = clip
    else:
        out_emb = clip.embed_images(list(outputs))
        gt_emb = clip.embed_images(list(ground_truths))
        texts = sorted({t for t in (*captions, *instructions) if t})
        text_emb = dict(zip(texts, clip.embed_texts(texts), strict=True)) if texts else {}
        for i, (r, why) in enumerate(zip(rows, reasons, strict=True)):
            r["clip_i"] = _cos(out_emb[i], gt_emb[i])
            caption, instruction = captions[i], instructions[i]
            r["clip_t"] = _cos(out_emb[i], text_emb[caption]) if caption else None
            if not caption:
                why["clip_t"] = NO_CAPTION
            r["clip_t_instruction"] = _cos(out_emb[i], text_emb[instruction]) if instruction else None
            if not instruction:
                why["clip_t_instruction"] = "no instruction"

    # DINO
    dino = load("dino", config.dino_model) if n else "no samples"
    if isinstance(dino, str):
        for r, why in zip(rows, reasons, strict=True):
            r["dino"] = None
            why["dino"] = dino
    else:
        out_emb, gt_emb = dino.embed_images(list(outputs)), dino.embed_images(list(ground_truths))
        for i, r in enumerate(rows):
            r["dino"] = _cos(out_emb[i], gt_emb[i])

    # CMMD (float32 embeddings, as the reference)
    summary: dict = {"n": n, "cmmd": None, "cmmd_all": None, "cmmd_n": None}
    cmmd_clip = load("clip", config.cmmd_clip_model, config.cmmd_clip_pretrained, "fp32") if n else "no samples"
    if isinstance(cmmd_clip, str):
        summary["cmmd_null_reason"] = summary["cmmd_all_null_reason"] = cmmd_clip
    else:
        size = cmmd_clip.image_size
        out_emb = cmmd_clip.embed_images([cmmd_square(o, size) for o in outputs])
        gt_emb = cmmd_clip.embed_images([cmmd_square(g, size) for g in ground_truths])
        summary["cmmd_all"] = cmmd(gt_emb, out_emb)
        summary["cmmd_all_null_reason"] = None
        used = cmmd_indices(sort_keys, config.cmmd_batch_size)
        summary["cmmd_n"] = len(used)
        if used:
            summary["cmmd"] = cmmd(gt_emb[used], out_emb[used])
            summary["cmmd_null_reason"] = None
        else:
            summary["cmmd_null_reason"] = (
                f"{n} images: fewer than one batch of {config.cmmd_batch_size} (the reference CMMD drops "
                f"the remainder of its batches); see cmmd_all"
            )

    for r, why in zip(rows, reasons, strict=True):
        r["null_reason"] = _join_reasons(why)
    for m in SAMPLE_METRICS:
        values = [r[m] for r in rows if r[m] is not None]
        summary[m] = float(np.mean(values)) if values else None
        if values:
            summary[f"{m}_null_reason"] = None
        else:
            summary[f"{m}_null_reason"] = next((why[m] for why in reasons if m in why), "no samples")
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
