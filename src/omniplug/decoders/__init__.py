"""Task decoders. Each module registers itself with DECODERS."""

from omniplug.decoders import diffusion, sam  # noqa: F401
from omniplug.decoders import actions_bins, actions_newtokens, actions_regress, actions_rvq, actions_words  # noqa: F401,E501
