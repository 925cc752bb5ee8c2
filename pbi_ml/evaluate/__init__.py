"""Evaluation of checkpoints (docs/method.md#evaluation): generation of edits and the MagicBrush metrics.

Submodules: `pbi_ml.evaluate.metrics` (L1, L2, CLIP-I, CLIP-T, DINO, CMMD) and
`pbi_ml.evaluate.generate` (InstructPix2Pix inference). Importing this package loads no torch.
"""
