"""Feature commands (train, eval, infer, world, serve, ...). Every module in this package is
imported by the CLI and registers its command(s) with ``omniplug.cli.command``."""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
