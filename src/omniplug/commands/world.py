"""``omniplug world generate|analyse|examples``: the procedural world (see docs/world.md)."""

from omniplug.cli import command
from omniplug.data.world import cli as world_cli

command("world", "generate the procedural multi-task world, measure its analyser, draw examples")(
    world_cli.add_arguments)(world_cli.run)
