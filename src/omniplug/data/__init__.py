"""Data: chat templates, collation, dataset readers and the procedural world."""

from omniplug.data import collate, conversation, sample  # noqa: F401
