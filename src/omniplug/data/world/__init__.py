"""The procedural multi-task world omniplug trains its default model on.

Scenes of coloured shapes and composite objects (house, tree, car) on sky / grass / water,
rendered exactly and written in standard formats (LLaVA JSON, COCO instances and panoptic,
refCOCO-style refs, ReasonSeg, semantic maps, generation and editing pairs). See docs/world.md.

Typical use::

    from omniplug.data.world import analyse, expected_from_caption, read_scenes, render_scene, score_objects
    scenes = read_scenes("data/world/val")          # a split written by `omniplug world generate`
    rendering = render_scene(scenes[0])             # its image and exact masks
    found = analyse(rendering.image)                # objects parsed back from pixels
    score_objects(detected=found, expected=scenes[0].objects, position_tolerance=2.0).exact
    score_objects(detected=analyse(generated), expected=expected_from_caption(prompt)).f1
"""

from .analyser import (
    AccuracyReport, DetectedObject, ExpectedObject, MatchScore, analyse, colour_score, default_tolerance,
    expected_from_caption, expected_from_scene, measure_accuracy, quantise, score_objects,
)
from .editing import Edit, edit_mask, sample_edit
from .language import QA, DescribedObject, Referral, caption, parse_caption, referrals, vqa
from .masks import decode_rle, encode_rle, fill_polygons, mask_to_polygons, rgb_to_ids
from .reasoning import Query, ReasonTarget, evaluate, reasoning_query
from .render import DENSE_CHANNELS, ObjectAnnotation, PartAnnotation, Rendering, render_scene
from .scene import Scene, SceneObject, Water, WorldConfig, sample_scene, scene_rng
from .vocab import (
    CATEGORIES, COLOURS, COMPOSITES, DEFAULT_HOLDOUT, PARTS, SEMANTIC_CLASSES, SHAPES, SIZES, SPLITS, STUFF,
    WORLD_VERSION,
)
from .writers import SplitSummary, config_from_meta, read_meta, read_scenes, scene_record, write_split

__all__ = [
    "AccuracyReport", "CATEGORIES", "COLOURS", "DENSE_CHANNELS", "COMPOSITES", "DEFAULT_HOLDOUT", "DescribedObject", "DetectedObject",
    "Edit", "ExpectedObject", "MatchScore", "ObjectAnnotation", "PARTS", "PartAnnotation", "QA", "Query",
    "ReasonTarget", "Referral", "Rendering", "SEMANTIC_CLASSES", "SHAPES", "SIZES", "SPLITS", "STUFF", "Scene",
    "SceneObject", "SplitSummary", "WORLD_VERSION", "Water", "WorldConfig", "analyse", "caption", "colour_score", "config_from_meta",
    "decode_rle", "default_tolerance", "edit_mask", "encode_rle", "evaluate", "expected_from_caption",
    "expected_from_scene", "fill_polygons", "mask_to_polygons", "measure_accuracy", "parse_caption", "quantise",
    "read_meta", "read_scenes", "reasoning_query", "referrals", "render_scene", "rgb_to_ids", "sample_edit",
    "sample_scene", "scene_record", "scene_rng", "score_objects", "vqa", "write_split",
]
