"""One training loop for every task: ``omniplug train -c CONFIG`` (see ``loop.py``)."""

from omniplug.train.loop import ExpectationError, NonFiniteLossError, TrainResult, train

__all__ = ["ExpectationError", "NonFiniteLossError", "TrainResult", "train"]
