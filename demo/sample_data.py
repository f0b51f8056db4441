"""Deterministic, offline "sample domains" of captioned images for demos, tests and benchmarks.

No pretrained weights or datasets can be downloaded where this project is built, so it makes its
own data to show the product's core claim: a CLIP trained on a broad `generic` domain does only
moderately well zero-shot on a shifted `target` domain, and fine-tuning on target pairs helps a
lot. Pictures are simple coloured shapes drawn with PIL; captions name the facts in the picture
in several phrasings.

Each domain is a data table (`DomainSpec`): vocabularies of shapes, colours (RGB + words),
sizes, positions, two-object layouts, relations, backgrounds, styles and caption templates.
The drawing and captioning code reads only the table, so tuning the domain shift means editing
`GENERIC` / `TARGET`, not code paths.

Output is the Kaggle Flickr8k layout, so the normal `flickr8k` loader reads it::

    out_dir/images/<name>.jpg|.png
    out_dir/captions.txt         # "image,caption" header, then one "name.jpg,caption" per row
    out_dir/captions_train.txt   # the same rows split by image ...
    out_dir/captions_test.txt    # ... (all captions of an image on one side)
    out_dir/README.txt

Same seed and arguments give byte-identical files: every random draw comes from a generator
seeded from (seed, domain, stream, image index); no global RNG is touched.
"""

from __future__ import annotations

import math
import os
import random
import re
import textwrap
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter
from tqdm.auto import tqdm

RGB = tuple[int, int, int]

# Open_clip resizes the shortest side to the model's input (64 px for ViT-Tiny-8) and center
# crops, so content lives in the central square of side min(w, h) and sizes are expressed in
# "view pixels" of that 64 px crop.
VIEW_SIZE = 64
MIN_SIDE, MAX_SIDE = 72, 160
MAX_ASPECT = 1.3
JPEG_QUALITY = 90  # fixed, so JPEG bytes are reproducible
PNG_COMPRESS_LEVEL = 1  # fast; size hardly matters for sample data
CAPTIONS_HEADER = "image,caption"
# Two picked colours (object vs background) must differ at least this much (RGB distance).
MIN_CONTRAST = 110.0


# ----------------------------------------------------------------------------------------------
# The vocabulary tables
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Colour:
    name: str
    rgb: RGB
    synonyms: tuple[str, ...] = ()  # used instead of `name` at the domain's synonym_rate


@dataclass(frozen=True)
class Shape:
    name: str
    kind: str  # drawing routine: ellipse | polygon | star | cross | heart | crescent
    sides: int = 0  # polygon / star points
    rotation: float = 0.0  # degrees; 0 puts a vertex straight up
    aspect: float = 1.0  # width / height, e.g. a diamond is a narrow square on its corner
    scale: float = 1.0  # so that shapes of one size word look about equally big
    synonyms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Size:
    name: str
    scale: float  # diameter as a fraction of the central square
    words: tuple[str, ...]
    weight: float = 1.0


@dataclass(frozen=True)
class Position:
    name: str
    xy: tuple[float, float]  # centre, as fractions of the central square
    phrases: tuple[str, ...]


@dataclass(frozen=True)
class Relation:
    """`A <phrase> B` is true when A sits at position `first` and B at position `second`."""

    first: str
    second: str
    phrases: tuple[str, ...]


@dataclass(frozen=True)
class Background:
    name: str
    pattern: str  # plain | stripes | dots | checks
    colours: tuple[RGB, ...]  # base colours to pick from
    accent: int = 0  # brightness offset of the pattern's marks relative to the base
    phrases: tuple[str, ...] = ()  # empty: never mentioned in captions
    weight: float = 1.0


@dataclass(frozen=True)
class Style:
    name: str
    outline: float  # 0: filled; otherwise outline width in view pixels
    words: tuple[str, ...]  # "" means the caption may leave the style unsaid
    weight: float = 1.0


@dataclass(frozen=True)
class Template:
    """A caption pattern. Slots: {a} {b} (object with article), {a_np} {b_np} (without),
    {pos_a} {pos_b} (position phrases), {rel} (relation of A to B), {bg} (background phrase)."""

    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class DomainSpec:
    name: str
    description: str
    shapes: tuple[Shape, ...]
    colours: tuple[Colour, ...]
    sizes: tuple[Size, ...]
    styles: tuple[Style, ...]
    positions: tuple[Position, ...]  # where a single object may sit
    layouts: tuple[tuple[str, str], ...]  # position pairs for two objects (either order)
    relations: tuple[Relation, ...]
    backgrounds: tuple[Background, ...]
    object_counts: tuple[tuple[int, float], ...]  # (number of objects, weight)
    noun_phrases: tuple[str, ...]  # e.g. "{size} {colour} {shape}"; {style} optional
    templates_one: tuple[Template, ...]
    templates_two: tuple[Template, ...]
    synonym_rate: float = 0.0  # chance of a colour/shape synonym instead of its plain name
    position_jitter: float = 0.02  # fraction of the central square
    size_jitter: float = 0.08  # relative
    rotation_jitter: float = 8.0  # degrees
    colour_jitter: int = 12  # per channel
    noise: float = 4.0  # std of per-pixel Gaussian noise
    jpeg_fraction: float = 0.6

    def vocabulary(self) -> set[str]:
        """Every word the domain's captions can use (for comparing domains)."""
        words: set[str] = set()
        texts: list[str] = [t.text for t in self.templates_one + self.templates_two]
        texts += list(self.noun_phrases)
        for c in self.colours:
            texts += [c.name, *c.synonyms]
        for s in self.shapes:
            texts += [s.name, *s.synonyms]
        for group in (self.sizes, self.styles):
            for item in group:
                texts += list(item.words)
        for group in (self.positions, self.relations, self.backgrounds):
            for item in group:
                texts += list(item.phrases)
        for text in texts:
            words.update(w for w in re.split(r"[^a-z]+", re.sub(r"\{\w+\}", " ", text)) if w)
        return words | {"a", "an"}


_LIGHT = ((250, 250, 250), (242, 240, 232), (232, 236, 240), (238, 238, 238), (246, 242, 226))
_DARK = ((24, 24, 28), (20, 26, 44), (36, 32, 30), (30, 36, 34))
_CENTRE, _LEFT, _RIGHT, _TOP, _BOTTOM = (
    (0.5, 0.5),
    (0.26, 0.5),
    (0.74, 0.5),
    (0.5, 0.26),
    (0.5, 0.74),
)

GENERIC = DomainSpec(
    name="generic",
    description=(
        "broad pre-training domain: one or two filled shapes in plain light backgrounds, "
        "named with plain colour and shape words and absolute positions"
    ),
    shapes=(
        Shape("circle", "ellipse"),
        Shape("square", "polygon", sides=4, rotation=45, scale=1.2),
        Shape("triangle", "polygon", sides=3, scale=1.25),
        Shape("star", "star", sides=5, scale=1.25),
        Shape("diamond", "polygon", sides=4, aspect=0.7, scale=1.15),
        Shape("pentagon", "polygon", sides=5, scale=1.1),
        Shape("crescent", "crescent", scale=1.1),
    ),
    colours=(
        Colour("red", (222, 40, 36)),
        Colour("orange", (246, 136, 20)),
        Colour("yellow", (240, 204, 16)),
        Colour("green", (40, 170, 60)),
        Colour("blue", (36, 86, 226)),
        Colour("purple", (140, 50, 190)),
        Colour("pink", (246, 120, 186)),
        Colour("black", (24, 24, 24)),
    ),
    sizes=(
        Size("small", 0.25, ("small", "little")),
        Size("medium", 0.32, ("medium", "medium-sized")),
        Size("large", 0.40, ("large", "big")),
    ),
    styles=(Style("filled", 0.0, ("",)),),
    positions=(
        Position("left", _LEFT, ("on the left", "at the left")),
        Position("right", _RIGHT, ("on the right", "at the right")),
        Position("top", _TOP, ("at the top", "near the top")),
        Position("bottom", _BOTTOM, ("at the bottom", "near the bottom")),
        Position("center", _CENTRE, ("in the center", "in the middle")),
    ),
    layouts=(("left", "right"), ("top", "bottom")),
    relations=(),  # generic captions say where each object is, never how they relate
    backgrounds=(Background("plain", "plain", _LIGHT),),
    object_counts=((1, 0.5), (2, 0.5)),
    noun_phrases=("{size} {colour} {shape}", "{colour} {shape}"),
    templates_one=(
        Template("{a} {pos_a}"),
        Template("{a} is {pos_a}"),
        Template("{pos_a} is {a}"),
        Template("an image of {a} {pos_a}"),
        Template("{a} drawn {pos_a}"),
    ),
    templates_two=(
        Template("{a} {pos_a} and {b} {pos_b}"),
        Template("{pos_a} is {a} and {pos_b} is {b}"),
        Template("an image of {a} {pos_a} and {b} {pos_b}"),
        Template("{a} {pos_a} with {b} {pos_b}"),
        Template("two shapes: {a} {pos_a} and {b} {pos_b}"),
    ),
    synonym_rate=0.0,
    noise=4.0,
)

TARGET = DomainSpec(
    name="target",
    description=(
        "the user's own domain, shifted from generic: mostly two shapes in a relation "
        "(above, below, left of, right of), filled or outlined, on dark, striped, dotted or "
        "checkered backgrounds, with some new shapes (hexagon, cross, heart) and colours "
        "(white, teal) and new words (crimson disc, hollow, picture of, there is)"
    ),
    shapes=(
        Shape("circle", "ellipse", synonyms=("disc", "dot")),
        Shape("square", "polygon", sides=4, rotation=45, scale=1.2, synonyms=("box", "block")),
        Shape("triangle", "polygon", sides=3, scale=1.25),
        Shape("star", "star", sides=5, scale=1.25),
        Shape("diamond", "polygon", sides=4, aspect=0.7, scale=1.15, synonyms=("rhombus",)),
        Shape("hexagon", "polygon", sides=6, rotation=30, scale=1.05),
        Shape("cross", "cross", synonyms=("plus sign",)),
        Shape("heart", "heart"),
    ),
    colours=(
        Colour("red", (206, 24, 48), ("crimson", "scarlet")),
        Colour("orange", (240, 120, 24), ("tangerine",)),
        Colour("yellow", (236, 210, 40), ("golden",)),
        Colour("green", (34, 160, 70), ("emerald",)),
        Colour("blue", (40, 100, 235), ("azure",)),
        Colour("purple", (150, 60, 200), ("violet",)),
        Colour("pink", (244, 130, 196), ("rose",)),
        Colour("white", (248, 248, 248), ("ivory",)),
        Colour("teal", (0, 150, 150), ("turquoise",)),
    ),
    sizes=(
        Size("small", 0.26, ("small", "little", "tiny"), weight=0.6),
        Size("large", 0.38, ("large", "big", "huge"), weight=0.4),
    ),
    styles=(
        Style("filled", 0.0, ("", "solid", "filled"), weight=0.6),
        Style("outlined", 3.0, ("outlined", "hollow"), weight=0.4),
    ),
    positions=(
        Position("left", _LEFT, ("on the left", "on the left side")),
        Position("right", _RIGHT, ("on the right", "on the right side")),
        Position("top", _TOP, ("at the top", "up top")),
        Position("bottom", _BOTTOM, ("at the bottom", "down below")),
        Position("center", _CENTRE, ("in the center", "in the middle")),
    ),
    layouts=(("top", "bottom"), ("left", "right")),
    relations=(
        Relation("top", "bottom", ("above", "over")),
        Relation("bottom", "top", ("below", "under", "beneath")),
        Relation("left", "right", ("to the left of", "left of")),
        Relation("right", "left", ("to the right of", "right of")),
    ),
    backgrounds=(
        Background("light", "plain", _LIGHT, 0, ("on a plain background", "on white"), 0.15),
        Background("dark", "plain", _DARK, 0, ("on a dark background", "on black"), 0.25),
        Background(
            "striped", "stripes", _LIGHT, -34, ("on a striped background", "on stripes"), 0.15
        ),
        Background(
            "dark striped",
            "stripes",
            _DARK,
            30,
            ("on a dark striped background", "on dark stripes"),
            0.15,
        ),
        Background(
            "dotted", "dots", _LIGHT, -40, ("on a dotted background", "on polka dots"), 0.15
        ),
        Background(
            "checkered",
            "checks",
            _DARK,
            26,
            ("on a checkered background", "on a dark checkerboard"),
            0.15,
        ),
    ),
    object_counts=((1, 0.15), (2, 0.85)),
    noun_phrases=(
        "{size} {style} {colour} {shape}",
        "{style} {colour} {shape}",
        "{colour} {style} {shape}",
        "{colour} {shape}",
    ),
    templates_one=(
        Template("there is {a} {pos_a}"),
        Template("a picture of {a} {pos_a} {bg}"),
        Template("{a} {pos_a} {bg}"),
        Template("{a} {pos_a}"),
        Template("an image showing {a} {pos_a}"),
        Template("a lone {a_np} {pos_a}, {bg}", weight=0.2),
    ),
    templates_two=(
        Template("{a} {rel} {b}"),
        Template("there is {a} {rel} {b}"),
        Template("a picture of {a} {rel} {b} {bg}"),
        Template("{a} {pos_a} and {b} {pos_b}"),
        Template("the {a_np} is {rel} the {b_np}"),
        Template("an image showing {a} {rel} {b}"),
        Template("{a} sits {rel} {b} {bg}"),
        Template("{a} {rel} {b}, {bg}", weight=0.2),
    ),
    synonym_rate=0.35,
    position_jitter=0.025,
    rotation_jitter=12.0,
    noise=6.0,
)

DOMAIN_SPECS: dict[str, DomainSpec] = {GENERIC.name: GENERIC, TARGET.name: TARGET}
DOMAINS = tuple(DOMAIN_SPECS)


# ----------------------------------------------------------------------------------------------
# Scenes: what is in a picture, before drawing or wording it
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    shape: Shape
    colour: Colour
    size: Size
    style: Style
    position: Position

    def key(self) -> tuple[str, ...]:
        return (self.shape.name, self.colour.name, self.size.name, self.style.name)


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: Background

    def core_key(self) -> tuple:
        """The facts every caption states: shapes, colours and where they are."""
        return tuple(sorted((o.shape.name, o.colour.name, o.position.name) for o in self.objects))

    def key(self) -> tuple:
        """Everything a caption can state (the background only where captions mention it)."""
        objs = tuple(sorted((*o.key(), o.position.name) for o in self.objects))
        return objs, (self.background.name if self.background.phrases else "")


def _weighted(rng: random.Random, items: Sequence, weights: Sequence[float]):
    return rng.choices(items, weights=weights, k=1)[0]


def _contrast_ok(rgb: RGB, background: Background) -> bool:
    # Every base colour of the background must stand apart from the object.
    return all(math.dist(rgb, base) >= MIN_CONTRAST for base in background.colours)


def _sample_scene(spec: DomainSpec, n_objects: int, rng: random.Random) -> Scene:
    by_name = {p.name: p for p in spec.positions}
    while True:  # resample the rare scene that no background contrasts with
        if n_objects == 1:
            positions = [rng.choice(spec.positions)]
        else:
            pair = list(rng.choice(spec.layouts))
            rng.shuffle(pair)
            positions = [by_name[name] for name in pair]
        objects: list[SceneObject] = []
        for position in positions:
            while True:
                shape, colour = rng.choice(spec.shapes), rng.choice(spec.colours)
                # Two identical shape+colour objects would make captions ambiguous.
                if all((o.shape, o.colour) != (shape, colour) for o in objects):
                    break
            size = _weighted(rng, spec.sizes, [s.weight for s in spec.sizes])
            style = _weighted(rng, spec.styles, [s.weight for s in spec.styles])
            objects.append(SceneObject(shape, colour, size, style, position))
        backgrounds = [
            b for b in spec.backgrounds if all(_contrast_ok(o.colour.rgb, b) for o in objects)
        ]
        if backgrounds:
            background = _weighted(rng, backgrounds, [b.weight for b in backgrounds])
            return Scene(tuple(objects), background)


def sample_scenes(spec: DomainSpec, n: int, seed: int = 0, tries: int = 24) -> list[Scene]:
    """`n` scenes, spread over the domain's combinations.

    The number of objects follows `spec.object_counts`; within it, scenes are drawn without
    replacement where possible: first one whose core facts (shape, colour and position of each
    object) are new, else one whose full description is new, else any. So a few hundred test
    images rarely share a description, and a prefix of a longer run is a shorter run.
    """
    if any(count not in (1, 2) for count, _ in spec.object_counts):
        raise ValueError(f"domain {spec.name!r}: scenes hold one or two objects")
    rng = random.Random(_stream_seed(seed, spec.name, 0))
    counts, count_weights = zip(*spec.object_counts, strict=True)
    used_core: set = set()
    used_full: set = set()
    scenes: list[Scene] = []
    tries = max(1, tries)
    for _ in range(n):
        n_objects = _weighted(rng, counts, count_weights)
        fallback: Scene | None = None
        chosen: Scene | None = None
        for _ in range(tries):
            scene = _sample_scene(spec, n_objects, rng)
            if scene.core_key() not in used_core:
                chosen = scene
                break
            if fallback is None and scene.key() not in used_full:
                fallback = scene
        chosen = chosen or fallback or scene
        used_core.add(chosen.core_key())
        used_full.add(chosen.key())
        scenes.append(chosen)
    return scenes


def count_descriptions(spec: DomainSpec) -> dict[str, int]:
    """How many different scene descriptions a domain has (ignoring contrast filtering).

    `core`: shape, colour and position of each object; `full`: plus size, style and the
    background where captions mention it.
    """
    sc = len(spec.shapes) * len(spec.colours)
    extras = len(spec.sizes) * len(spec.styles)
    backgrounds = len([b for b in spec.backgrounds if b.phrases]) or 1
    counts = dict(spec.object_counts)
    core = full = 0
    if counts.get(1):
        core += sc * len(spec.positions)
        full += sc * len(spec.positions) * extras * backgrounds
    if counts.get(2):
        # Objects differ in shape or colour, and which one sits where matters.
        ordered = len(spec.layouts) * sc * (sc - 1)
        core += ordered
        full += ordered * extras**2 * backgrounds
    return {"core": core, "full": full}


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _noun_phrase(spec: DomainSpec, obj: SceneObject, rng: random.Random) -> str:
    def word(name: str, synonyms: tuple[str, ...]) -> str:
        return rng.choice(synonyms) if synonyms and rng.random() < spec.synonym_rate else name

    form = rng.choice(spec.noun_phrases)
    return _squash(
        form.format(
            size=rng.choice(obj.size.words),
            style=rng.choice(obj.style.words),
            colour=word(obj.colour.name, obj.colour.synonyms),
            shape=word(obj.shape.name, obj.shape.synonyms),
        )
    )


def _usable_templates(spec: DomainSpec, scene: Scene) -> list[Template]:
    if len(scene.objects) == 1:
        templates = list(spec.templates_one)
    else:
        templates = list(spec.templates_two)
    a = scene.objects[0]
    b = scene.objects[-1]
    has_rel = any({r.first, r.second} == {a.position.name, b.position.name} for r in spec.relations)
    return [
        t
        for t in templates
        if ("{rel}" not in t.text or has_rel) and ("{bg}" not in t.text or scene.background.phrases)
    ]


def _caption(spec: DomainSpec, scene: Scene, template: Template, rng: random.Random) -> str:
    objs = list(scene.objects)
    rng.shuffle(objs)  # either object may be named first: different orders of the same facts
    relations = {(r.first, r.second): r for r in spec.relations}
    if (
        "{rel}" in template.text
        and (objs[0].position.name, objs[-1].position.name) not in relations
    ):
        objs.reverse()  # the table may phrase a relation in one direction only
    a, b = objs[0], objs[-1]
    a_np, b_np = _noun_phrase(spec, a, rng), _noun_phrase(spec, b, rng)
    relation = relations.get((a.position.name, b.position.name))
    rel = rng.choice(relation.phrases) if relation else ""
    bg = rng.choice(scene.background.phrases) if scene.background.phrases else ""
    text = template.text.format(
        a=_article(a_np),
        b=_article(b_np),
        a_np=a_np,
        b_np=b_np,
        pos_a=rng.choice(a.position.phrases),
        pos_b=rng.choice(b.position.phrases),
        rel=rel,
        bg=bg,
    )
    return _squash(text)


def caption_scene(spec: DomainSpec, scene: Scene, k: int, rng: random.Random) -> list[str]:
    """`k` different captions of one scene (different templates, words and orders)."""
    templates = _usable_templates(spec, scene)
    if not templates:
        raise ValueError(f"domain {spec.name!r} has no caption template for {scene.core_key()}")
    captions: list[str] = []
    seen: set[str] = set()
    used: set[str] = set()  # templates
    misses = 0
    while misses < 200:  # give up once new phrasings stop coming
        # Prefer templates not used yet, so the k captions differ in structure, not just words.
        fresh = [t for t in templates if t.text not in used] or templates
        template = _weighted(rng, fresh, [t.weight for t in fresh])
        caption = _caption(spec, scene, template, rng)
        if caption in seen:
            misses += 1
            continue
        misses = 0
        captions.append(caption)
        seen.add(caption)
        used.add(template.text)
        if len(captions) == k:
            return captions
    raise ValueError(
        f"domain {spec.name!r} cannot phrase {k} different captions for {scene.core_key()}; "
        f"lower captions_per_image or add templates/words"
    )


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------


def _polygon(sides: int, radius: float, rotation: float, aspect: float, cx: float, cy: float):
    points = []
    for i in range(sides):
        t = math.radians(rotation - 90 + 360 * i / sides)
        points.append((cx + radius * aspect * math.cos(t), cy + radius * math.sin(t)))
    return points


def _star(points: int, radius: float, rotation: float, cx: float, cy: float):
    out = []
    for i in range(2 * points):
        r = radius if i % 2 == 0 else radius * 0.42
        t = math.radians(rotation - 90 + 180 * i / points)
        out.append((cx + r * math.cos(t), cy + r * math.sin(t)))
    return out


def _cross(radius: float, rotation: float, cx: float, cy: float):
    w = 0.36 * radius  # half arm width
    base = [(-w, -radius), (w, -radius), (w, -w), (radius, -w), (radius, w), (w, w)]
    base += [(w, radius), (-w, radius), (-w, w), (-radius, w), (-radius, -w), (-w, -w)]
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]


def _heart(radius: float, rotation: float, cx: float, cy: float):
    # The classic parametric heart spans x in [-16, 16], y in [-12, 17]; centre it.
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    out = []
    for i in range(48):
        t = 2 * math.pi * i / 48
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        x, y = x / 16 * radius, (y - 2.5) / 15.5 * radius
        out.append((cx + x * c - y * s, cy + x * s + y * c))
    return out


def _shape_mask(shape: Shape, diameter: float, rotation: float, flip: bool) -> Image.Image:
    """An 'L' mask (255 inside) of the shape, on a square canvas just big enough."""
    radius = diameter / 2 * shape.scale
    side = int(math.ceil(2.2 * radius)) + 6  # room for rotated corners
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    c = side / 2
    if shape.kind == "ellipse":
        draw.ellipse((c - radius, c - radius, c + radius, c + radius), fill=255)
    elif shape.kind == "crescent":
        draw.ellipse((c - radius, c - radius, c + radius, c + radius), fill=255)
        bite = -0.45 * radius if flip else 0.45 * radius
        r2, y2 = 0.85 * radius, c - 0.1 * radius
        draw.ellipse((c + bite - r2, y2 - r2, c + bite + r2, y2 + r2), fill=0)
    elif shape.kind == "polygon":
        draw.polygon(
            _polygon(shape.sides, radius, shape.rotation + rotation, shape.aspect, c, c), 255
        )
    elif shape.kind == "star":
        draw.polygon(_star(shape.sides, radius, shape.rotation + rotation, c, c), fill=255)
    elif shape.kind == "cross":
        draw.polygon(_cross(radius, shape.rotation + rotation, c, c), fill=255)
    elif shape.kind == "heart":
        draw.polygon(_heart(radius, shape.rotation + rotation, c, c), fill=255)
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r} (shape {shape.name!r})")
    return mask


def _background(bg: Background, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array(bg.colours[rng.integers(len(bg.colours))], dtype=np.float32)
    base += rng.uniform(-6, 6, size=3)
    img = np.broadcast_to(base, (height, width, 3)).copy()
    if bg.pattern == "plain":
        return img
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    period = min(width, height) / rng.uniform(6.0, 9.0)  # 7-10 view pixels: visible at 64 px
    x, y = x + rng.uniform(0, period), y + rng.uniform(0, period)
    if bg.pattern == "stripes":
        angle = math.radians(float(rng.choice([0, 45, 90, 135])))
        u = x * math.cos(angle) + y * math.sin(angle)
        marks = (u % period) < period / 2
    elif bg.pattern == "dots":
        dx, dy = x % period - period / 2, y % period - period / 2
        marks = dx * dx + dy * dy < (0.22 * period) ** 2
    elif bg.pattern == "checks":
        marks = ((x // period + y // period) % 2).astype(bool)
    else:
        raise ValueError(f"unknown background pattern {bg.pattern!r} ({bg.name!r})")
    img[marks] += bg.accent
    return img


def render_scene(
    spec: DomainSpec, scene: Scene, rng: np.random.Generator
) -> tuple[Image.Image, str]:
    """Draw a scene; returns the RGB image and the file extension to save it with."""
    short = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    long = min(MAX_SIDE, int(round(short * rng.uniform(1.0, MAX_ASPECT))))
    width, height = (long, short) if rng.random() < 0.5 else (short, long)
    # Content lives in the central square so the model's center crop keeps all of it.
    ox, oy = (width - short) / 2, (height - short) / 2
    pixels = _background(scene.background, width, height, rng)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    for obj in scene.objects:
        diameter = obj.size.scale * short * (1 + rng.uniform(-spec.size_jitter, spec.size_jitter))
        rotation = rng.uniform(-spec.rotation_jitter, spec.rotation_jitter)
        mask = _shape_mask(obj.shape, diameter, rotation, flip=bool(rng.random() < 0.5))
        # Centre the visible mass, not the drawing box, on the object's position: a crescent
        # or heart would otherwise sit visibly off its "left"/"top" anchor.
        ys, xs = np.nonzero(np.asarray(mask))
        mx, my = (xs.mean() + 0.5, ys.mean() + 0.5) if xs.size else (mask.width / 2,) * 2
        if obj.style.outline > 0:
            # Outline = mask minus the mask eroded by the outline width (works for any shape).
            width_px = max(2, round(obj.style.outline * short / VIEW_SIZE))
            mask = ImageChops.subtract(mask, mask.filter(ImageFilter.MinFilter(2 * width_px + 1)))
        jx, jy = rng.uniform(-spec.position_jitter, spec.position_jitter, size=2)
        cx = ox + (obj.position.xy[0] + jx) * short
        cy = oy + (obj.position.xy[1] + jy) * short
        x0, y0 = int(round(cx - mx)), int(round(cy - my))
        jitter = rng.integers(-spec.colour_jitter, spec.colour_jitter + 1, size=3)
        colour = tuple(int(v) for v in np.clip(np.array(obj.colour.rgb) + jitter, 0, 255))
        img.paste(colour, (x0, y0, x0 + mask.width, y0 + mask.height), mask)
    # Light noise: no two images are identical, and JPEG/PNG see some texture.
    arr = rng.standard_normal((height, width, 3), dtype=np.float32)
    arr *= spec.noise
    arr += np.asarray(img, dtype=np.float32) + 0.5
    img = Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8), "RGB")
    ext = "jpg" if rng.random() < spec.jpeg_fraction else "png"
    return img, ext


# ----------------------------------------------------------------------------------------------
# Writing a data set
# ----------------------------------------------------------------------------------------------


@dataclass
class SampleDataInfo:
    """Where `generate_sample_data` wrote things, and how many."""

    domain: str
    seed: int
    root: Path
    images_dir: Path
    captions_file: Path
    train_file: Path
    test_file: Path
    readme_file: Path
    n_images: int
    n_train_images: int
    n_test_images: int
    captions_per_image: int
    n_captions: int
    n_jpeg: int
    n_png: int
    train_images: list[str] = field(default_factory=list, repr=False)
    test_images: list[str] = field(default_factory=list, repr=False)


def _stream_seed(seed: int, domain: str, *stream: int) -> int:
    # Independent streams per (seed, domain, purpose, image), stable across runs and platforms.
    ss = np.random.SeedSequence([seed, zlib.crc32(domain.encode()), *stream])
    state = ss.generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


def _resolve(domain: str | DomainSpec) -> DomainSpec:
    if isinstance(domain, DomainSpec):
        return domain
    if domain not in DOMAIN_SPECS:
        raise ValueError(f"unknown sample domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    return DOMAIN_SPECS[domain]


def _write_rows(path: Path, rows: list[tuple[str, str]]) -> None:
    lines = [CAPTIONS_HEADER] + [f"{name},{caption}" for name, caption in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


def generate_sample_data(
    domain: str | DomainSpec,
    n: int,
    out_dir: str | os.PathLike,
    seed: int = 0,
    test_fraction: float = 0.2,
    captions_per_image: int = 5,
    progress: bool = True,
) -> SampleDataInfo:
    """Write `n` captioned images of a sample domain to `out_dir` (Kaggle Flickr8k layout).

    `domain` is a name in `DOMAINS` or a `DomainSpec` (e.g. a tweaked copy made with
    `dataclasses.replace`). The split is by image: about `test_fraction` of the images (at
    least one of each side when both are possible) go to `captions_test.txt`. Sample images
    left in `images/` by an earlier, larger run are removed; other files are left alone.
    """
    spec = _resolve(domain)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if captions_per_image < 1:
        raise ValueError(f"captions_per_image must be at least 1, got {captions_per_image}")

    root = Path(out_dir)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)

    scenes = sample_scenes(spec, n, seed)
    rows: list[tuple[str, str]] = []
    names: list[str] = []
    n_jpeg = 0
    for i, scene in enumerate(tqdm(scenes, desc=f"sample-data {spec.name}", disable=not progress)):
        img, ext = render_scene(
            spec, scene, np.random.default_rng(_stream_seed(seed, spec.name, 1, i))
        )
        name = f"{spec.name}_{i:05d}.{ext}"
        if ext == "jpg":
            img.save(images_dir / name, "JPEG", quality=JPEG_QUALITY)
            n_jpeg += 1
        else:
            img.save(images_dir / name, "PNG", compress_level=PNG_COMPRESS_LEVEL)
        names.append(name)
        caption_rng = random.Random(_stream_seed(seed, spec.name, 2, i))
        rows += [(name, c) for c in caption_scene(spec, scene, captions_per_image, caption_rng)]

    # Remove images of an earlier run into the same folder that this run did not rewrite.
    ours = re.compile(rf"^({'|'.join(map(re.escape, {*DOMAINS, spec.name}))})_\d{{5,}}\.(jpg|png)$")
    keep = set(names)
    for path in images_dir.iterdir():
        if ours.match(path.name) and path.name not in keep:
            path.unlink()

    n_test = round(n * test_fraction)
    if test_fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    split_rng = random.Random(_stream_seed(seed, spec.name, 3))
    test_names = {names[i] for i in split_rng.sample(range(n), n_test)}
    info = SampleDataInfo(
        domain=spec.name,
        seed=seed,
        root=root,
        images_dir=images_dir,
        captions_file=root / "captions.txt",
        train_file=root / "captions_train.txt",
        test_file=root / "captions_test.txt",
        readme_file=root / "README.txt",
        n_images=n,
        n_train_images=n - n_test,
        n_test_images=n_test,
        captions_per_image=captions_per_image,
        n_captions=len(rows),
        n_jpeg=n_jpeg,
        n_png=n - n_jpeg,
        train_images=[x for x in names if x not in test_names],
        test_images=[x for x in names if x in test_names],
    )
    _write_rows(info.captions_file, rows)
    _write_rows(info.train_file, [r for r in rows if r[0] not in test_names])
    _write_rows(info.test_file, [r for r in rows if r[0] in test_names])
    info.readme_file.write_text(_readme(spec, info) + "\n", encoding="utf-8", newline="\n")
    return info


def _readme(spec: DomainSpec, info: SampleDataInfo) -> str:
    counts = count_descriptions(spec)
    text = (
        f"Sample domain '{spec.name}' of the clip-finetune-search project, generated offline "
        f"with seed {info.seed}: {spec.description}. It holds {info.n_images} images in images/ "
        f"({info.n_jpeg} JPEG, {info.n_png} PNG, {MIN_SIDE}-{MAX_SIDE} px sides) with "
        f"{info.captions_per_image} different captions each ({info.n_captions} rows in "
        f"captions.txt, Kaggle Flickr8k format: 'image,caption' header, split on the first "
        f"comma), split by image into captions_train.txt ({info.n_train_images} images) and "
        f"captions_test.txt ({info.n_test_images} images). The vocabulary has "
        f"{len(spec.shapes)} shapes, {len(spec.colours)} colours, {len(spec.sizes)} sizes, "
        f"{len(spec.styles)} styles and {len(spec.backgrounds)} backgrounds, giving "
        f"{counts['core']} combinations of shapes, colours and positions ({counts['full']} "
        f"with sizes, styles and backgrounds). Regenerate with: python -m demo sample-data "
        f"--domain {spec.name} --n {info.n_images} --seed {info.seed} --out DIR."
    )
    return textwrap.fill(text, width=100)
