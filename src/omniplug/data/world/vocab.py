"""The closed vocabulary of the procedural world: shapes, colours, sizes, composites, stuff.

Every name, RGB value and category id used anywhere in the world lives here, once.
Colours are chosen so that every object colour is at least ~90 RGB units away from
every other colour (objects, parts and stuff), so nearest-colour classification is
unambiguous; renders are not anti-aliased, so clean images use these values exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

WORLD_VERSION = "1.0"

# Side of the reference canvas: every length below is given in pixels of a 64x64 image
# and scaled by ``size / REFERENCE_SIZE`` for other image sizes.
REFERENCE_SIZE = 64

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon")
COMPOSITES: tuple[str, ...] = ("house", "tree", "car")
SIZES: tuple[str, ...] = ("small", "large")

# Bounding-square side (pixels at 64x64) of each simple-shape size.
SIZE_PIXELS: dict[str, int] = {"small": 10, "large": 18}
# Composites are drawn at a single scale; their recorded size is always this one.
COMPOSITE_SIZE = "large"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 135, 0),
    "yellow": (240, 235, 40),
    "green": (30, 210, 70),
    "blue": (30, 60, 230),
    "purple": (140, 40, 200),
    "pink": (255, 130, 210),
    "white": (250, 250, 250),
}

STUFF: tuple[str, ...] = ("sky", "grass", "water")
STUFF_COLOURS: dict[str, tuple[int, int, int]] = {
    "sky": (140, 200, 245),
    "grass": (110, 150, 70),
    "water": (40, 110, 140),
}

# Parts of each composite, in drawing order (later parts are drawn over earlier ones).
COMPOSITE_PARTS: dict[str, tuple[str, ...]] = {
    "house": ("wall", "door", "roof"),
    "tree": ("trunk", "crown"),
    "car": ("body", "wheel"),
}
# The part whose position defines the composite when parsing an image back.
COMPOSITE_ANCHOR: dict[str, str] = {"house": "wall", "tree": "crown", "car": "body"}
PART_COLOURS: dict[str, tuple[int, int, int]] = {
    "roof": (170, 60, 100),
    "wall": (225, 195, 150),
    "door": (90, 50, 20),
    "crown": (20, 110, 50),
    "trunk": (160, 110, 50),
    "body": (150, 150, 160),
    "wheel": (20, 20, 20),
}
PARTS: tuple[str, ...] = tuple(p for parts in COMPOSITE_PARTS.values() for p in parts)
PART_PARENT: dict[str, str] = {p: c for c, parts in COMPOSITE_PARTS.items() for p in parts}

# Compositional hold-out: these colour-shape combinations never appear in
# train/val/test; the `holdout` split puts at least one of them in every scene.
DEFAULT_HOLDOUT: tuple[tuple[str, str], ...] = (
    ("red", "star"),
    ("blue", "hexagon"),
    ("yellow", "triangle"),
    ("purple", "circle"),
)

SPLITS: tuple[str, ...] = ("train", "val", "test", "holdout")

PLURALS: dict[str, str] = {
    "circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
    "hexagon": "hexagons", "house": "houses", "tree": "trees", "car": "cars",
}


@dataclass(frozen=True)
class Category:
    """One COCO-style category. ``isthing`` is False for stuff, ``kind`` says which table it is in."""

    id: int
    name: str
    supercategory: str
    isthing: bool
    kind: str  # "stuff" | "shape" | "composite" | "part"


def _build_categories() -> tuple[Category, ...]:
    cats: list[Category] = []
    for name in STUFF:
        cats.append(Category(id=len(cats) + 1, name=name, supercategory="stuff", isthing=False, kind="stuff"))
    for name in SHAPES:
        cats.append(Category(id=len(cats) + 1, name=name, supercategory="shape", isthing=True, kind="shape"))
    for name in COMPOSITES:
        cats.append(Category(id=len(cats) + 1, name=name, supercategory="composite", isthing=True, kind="composite"))
    seen: set[str] = set()
    for parent, parts in COMPOSITE_PARTS.items():
        for name in parts:
            if name not in seen:
                seen.add(name)
                cats.append(Category(id=len(cats) + 1, name=name, supercategory=parent, isthing=True, kind="part"))
    return tuple(cats)


# Ids: 1-3 stuff, 4-8 shapes, 9-11 composites, 12-18 parts. Label 0 is "unlabelled".
CATEGORIES: tuple[Category, ...] = _build_categories()
CATEGORY_ID: dict[str, int] = {c.name: c.id for c in CATEGORIES}
CATEGORY_BY_ID: dict[int, Category] = {c.id: c for c in CATEGORIES}

# Semantic label map values: index in this tuple (0 = unlabelled, never produced by clean renders).
SEMANTIC_CLASSES: tuple[str, ...] = ("unlabelled",) + STUFF + SHAPES + COMPOSITES
PANOPTIC_CATEGORIES: tuple[Category, ...] = tuple(c for c in CATEGORIES if c.kind in ("stuff", "shape", "composite"))
INSTANCE_CATEGORIES: tuple[Category, ...] = tuple(c for c in CATEGORIES if c.kind != "stuff")

# Every colour a clean render can contain, by name (objects, parts, stuff).
ALL_COLOURS: dict[str, tuple[int, int, int]] = {**COLOURS, **PART_COLOURS, **STUFF_COLOURS}


def parse_holdout(text: str) -> tuple[tuple[str, str], ...]:
    """Parse ``"red star, blue hexagon"`` into ``(("red", "star"), ("blue", "hexagon"))``."""
    combos: list[tuple[str, str]] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        words = item.split()
        if len(words) != 2:
            raise ValueError(f"hold-out entry {item!r} must be '<colour> <shape>', e.g. 'red star'")
        combos.append((words[0], words[1]))
    return validate_holdout(combos)


def validate_holdout(combos: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for colour, shape in combos:
        if colour not in COLOURS:
            raise ValueError(f"unknown hold-out colour {colour!r}; available: {', '.join(COLOURS)}")
        if shape not in SHAPES:
            raise ValueError(f"unknown hold-out shape {shape!r}; available: {', '.join(SHAPES)}")
        out.append((colour, shape))
    if len(set(out)) == len(COLOURS) * len(SHAPES):
        raise ValueError("the hold-out list covers every colour-shape combination; leave some for training")
    return tuple(out)
