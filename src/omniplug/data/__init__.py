"""Data: chat templates, collation, dataset readers and the procedural world."""

from omniplug.data import collate, conversation, sample  # noqa: F401
from omniplug.data import generation, llava_json, reason_seg, refcoco, semantic_seg  # noqa: F401  (dataset readers)
from omniplug.data import demos  # noqa: F401  (expert demonstrations for action decoders)
from omniplug.data import coco_panoptic, coco_parts, world_tasks  # noqa: F401,E402
