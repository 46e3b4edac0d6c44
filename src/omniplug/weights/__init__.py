"""Where weights come from and go to: Hugging Face checkpoints read from local folders only, safely
(:mod:`.hf_local`), and a trained OneModel's trainable weights as safetensors + its resolved config (:mod:`.trainable`)."""

from omniplug.weights.trainable import (CONFIG_NAME, WEIGHTS_NAME, InitReport, init_from, load_trainable, save_half,
                                        save_trainable, trainable_state_dict)

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "InitReport", "init_from", "load_trainable", "save_half", "save_trainable",
           "trainable_state_dict"]
