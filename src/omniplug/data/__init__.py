"""Data: chat templates, collation, dataset readers and the procedural world."""

from omniplug.data import collate, conversation, sample  # noqa: F401
from omniplug.data import generation, llava_json, reason_seg, refcoco, semantic_seg, shards  # noqa: F401  (dataset readers)
from omniplug.data import babyai_where, demos  # noqa: F401  (expert demonstrations, grounding questions on them)
from omniplug.data import coco_detection, coco_panoptic, coco_parts, world_tasks  # noqa: F401,E402
from omniplug.data import clip_generation  # noqa: F401,E402  (text -> clip pairs of the moving world)
