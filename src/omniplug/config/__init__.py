"""Configuration: YAML in the seed format (:mod:`.loader`) checked against plugin signatures (:mod:`.schema`).

``load_config(path, overrides) -> Config`` is the entry point; every problem is a :class:`ConfigError`
that names the file, the entry, the key and what is accepted.
"""

from omniplug.config.loader import (CATALOGUES, Config, DataConfig, EntryConfig, EnvConfig, OneModelConfig, TrainerConfig, as_dict,
                                    load_config)
from omniplug.config.schema import ConfigError

__all__ = ["CATALOGUES", "Config", "ConfigError", "DataConfig", "EntryConfig", "EnvConfig", "OneModelConfig", "TrainerConfig",
           "as_dict", "load_config"]
