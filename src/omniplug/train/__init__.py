"""One training loop for every task: ``omniplug train -c CONFIG`` (see ``loop.py``)."""

from omniplug.train.loop import NonFiniteLossError, TrainResult, train

__all__ = ["NonFiniteLossError", "TrainResult", "train"]
