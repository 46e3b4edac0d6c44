"""Tokenizers. Importing this package registers every plugin module in it."""

from omniplug.registry import import_plugin_modules

import_plugin_modules(__name__, __path__)
