"""Training the InstructPix2Pix-style "add an object" model (docs/method.md#training).

    from pbi_ml.train import TrainConfig, TrainingExample, train_instruct_pix2pix

Importing this package does not import torch / diffusers; they load inside the functions.
"""

from pbi_ml.train.config import TrainConfig
from pbi_ml.train.data import TrainingExample
from pbi_ml.train.loop import TrainResult, train_instruct_pix2pix

__all__ = ["TrainConfig", "TrainingExample", "TrainResult", "train_instruct_pix2pix"]
