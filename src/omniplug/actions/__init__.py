"""Actions: spaces, normalisation, binning, residual VQ, the demonstrations format and the
shared parts of the action decoders (the decoders themselves live in ``omniplug.decoders.actions_*``)."""

from omniplug.actions.space import ActionSpace, ActionTarget  # noqa: F401
