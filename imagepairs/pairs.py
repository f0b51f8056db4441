"""Read image-caption pairs from the data files users already have: for training, evaluation
and indexing.

`load_pairs` reads five formats; with ``format="auto"`` it tells them apart from the file:

- ``csv``: one caption and one image per row, in either column order (the image column is the
  one whose values look like image files or URLs), header optional, any dialect (comma,
  semicolon, tab or pipe separated, quoted or not). A header of three or more columns that
  names an ``image`` and a ``caption`` (or ``text``) column picks those two by name, and the
  other columns become each pair's ``tags`` (e.g. a product CSV's colour, category, price).
- ``openclip-csv``: open_clip's ``--csv-img-key/--csv-caption-key`` CSV/TSV with named columns
  (``filepath`` and ``title`` by default).
- ``flickr8k``: Kaggle Flickr8k ``captions.txt`` (``image,caption`` header; captions hold
  unquoted commas, so each line is split on its first comma only).
- ``karpathy``: Karpathy split JSON (``dataset_flickr8k.json``, ``dataset_flickr30k.json``,
  ``dataset_coco.json``), filtered by ``split``.
- ``coco``: COCO captions annotations (``captions_train2014.json``) plus an image folder.

Each format has a small parser that turns the file into raw rows (where in the file, image
reference, caption). Everything after that is shared: image references are resolved to files,
captions and images are checked (each image decoded once, with the same `load_image` training
uses), bad rows are skipped and reported, and too many of them is an error rather than a
silently smaller training set.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from imagepairs.images import IMAGE_EXTENSIONS, ImageError, is_image_path, load_image

_LOG = logging.getLogger(__name__)

REMOTE_PREFIXES = ("http://", "https://")
REMOTE_REASON = "remote URLs are not fetched"
# Below this many images the check is quick enough that a progress bar is only noise.
PROGRESS_MIN_IMAGES = 200
LOG_FIRST_BAD = 5
# Delimiters a hand-made or spreadsheet-exported caption file plausibly uses.
CSV_DELIMITERS = ",;\t|"
# Rows looked at to pick the csv dialect and the image column.
CSV_SAMPLE_ROWS = 200
OPENCLIP_IMG_KEY = "filepath"
OPENCLIP_CAPTION_KEY = "title"
# Karpathy's convention: "restval" images (COCO val images outside the 5k val/test) train too.
SPLIT_ALIASES = {"train": ("train", "restval")}
# COCO image folders are named like the annotation file: captions_val2014.json -> val2014/.
_COCO_FOLDER = re.compile(r"(train|val|test)\d{4}")


class DataError(ValueError):
    """A data file that cannot be used as it is; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Pair:
    """One training example. `image` is also the grouping key: an image may have many captions."""

    image: str  # absolute path of the image file
    caption: str  # prompt already applied
    # The data file's other columns, for a csv whose header names them: column -> value, a
    # number where the cell reads as a finite one, empty cells left out. Empty for other files.
    tags: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass
class PairSet:
    """The usable pairs of a data file, and what was left out of it."""

    pairs: list[Pair]
    source: str  # the data file
    format: str  # one of FORMATS
    n_rows: int  # rows read
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (row description, reason)

    def images(self) -> list[str]:
        """Unique images, in first-seen order."""
        return list(dict.fromkeys(p.image for p in self.pairs))

    def retrieval_view(self) -> tuple[list[str], list[str], list[int]]:
        """(images, captions, text_to_image) for retrieval eval.

        captions[i] belongs to images[text_to_image[i]]; images are unique, first-seen order.
        """
        index: dict[str, int] = {}
        captions: list[str] = []
        text_to_image: list[int] = []
        for pair in self.pairs:
            text_to_image.append(index.setdefault(pair.image, len(index)))
            captions.append(pair.caption)
        return list(index), captions, text_to_image


# --- the data file ----------------------------------------------------------------------------


class _Source:
    """The data file, read (and parsed as JSON) at most once, shared by detection and reading."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
        if self.path.is_dir():
            raise DataError(
                f"{self.path} is a folder; pass the data file inside it (a csv/tsv/txt captions "
                f"file or a Karpathy/COCO json)"
            )
        if not self.path.is_file():
            raise DataError(f"data file not found: {self.path}")
        self.name = self.path.name
        self.folder = self.path.parent

    @cached_property
    def text(self) -> str:
        raw = self.path.read_bytes()
        if b"\x00" in raw[:4096]:
            raise DataError(
                f"{self.path} is not a UTF-8 text file (a binary file, or UTF-16 text: "
                f"save it as UTF-8)"
            )
        try:
            return raw.decode("utf-8-sig")  # -sig: spreadsheet exports often start with a BOM
        except UnicodeDecodeError:
            # Likely a Windows-1252 spreadsheet export; latin-1 decodes any byte.
            return raw.decode("latin-1")

    @cached_property
    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except json.JSONDecodeError as e:
            raise DataError(f"{self.path} is not valid JSON ({e})") from e

    def first_line(self) -> str:
        return next((line for _, line in _lines(self.text)), "")


@dataclass(frozen=True)
class _Row:
    """One caption as the data file states it, before any checking."""

    where: str  # e.g. "captions.txt:17", "dataset_coco.json:images[3].sentences[0]"
    image: str  # image reference as written in the file
    caption: str
    subdirs: tuple[str, ...] = ("",)  # subfolders of each image root to look in, in order
    error: str | None = None  # a problem the parser already found
    tags: dict[str, Any] = field(default_factory=dict, hash=False)  # see Pair.tags


@dataclass(frozen=True)
class _Context:
    source: _Source
    roots: tuple[Path, ...]  # folders relative image references resolve against, in order
    log: logging.Logger
    split: str | None = None
    csv_img_key: str | None = None
    csv_caption_key: str | None = None
    csv_separator: str | None = None


# --- shared helpers ---------------------------------------------------------------------------


def _is_remote(ref: str) -> bool:
    return ref.strip().lower().startswith(REMOTE_PREFIXES)


def _looks_like_image(value: str, roots: Sequence[Path]) -> bool:
    """A value that names an image: an image extension, a URL, or an existing file."""
    ref = value.strip()
    if not ref or "\n" in ref or len(ref) > 1024:
        return False
    if _is_remote(ref) or is_image_path(ref):
        return True
    return any((root / ref).is_file() for root in roots)


def _resolve(image: str, subdirs: tuple[str, ...], roots: Sequence[Path]) -> str | None:
    """Absolute path of the first existing candidate file, or None."""
    ref = os.path.expanduser(image.strip())
    if os.path.isabs(ref):
        return os.path.normpath(ref) if os.path.isfile(ref) else None
    for root in roots:
        for sub in subdirs:
            candidate = os.path.join(root, sub, ref)
            if os.path.isfile(candidate):
                return os.path.normpath(candidate)
    return None


def _row_problem(row: _Row) -> str | None:
    """What makes a row unusable before its image is looked at, if anything."""
    if row.error:
        return row.error
    if not row.image.strip():
        return "no image path"
    if _is_remote(row.image):
        return REMOTE_REASON  # no network access here, and training must be reproducible
    if not row.caption.strip():
        return "empty caption"
    return None


def _describe(row: _Row) -> str:
    return f"{row.where} ({row.image.strip()})" if row.image.strip() else row.where


def _apply_prompt(caption: str, prompt: str | None) -> str:
    caption = " ".join(caption.split())  # newlines from quoted csv fields, doubled spaces
    return prompt.replace("{}", caption) if prompt else caption


def _image_errors(paths: list[str]) -> dict[str, str]:
    """Decode each image once; map the undecodable ones to the reason."""

    def problem(path: str) -> str | None:
        try:
            load_image(path)
        except ImageError as e:
            return str(e).removeprefix(f"{path}: ")  # the row description names the image
        return None

    # PIL releases the GIL while decoding, so threads make checking a large set much quicker.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = tqdm(
            pool.map(problem, paths),
            total=len(paths),
            desc="checking images",
            unit="img",
            disable=len(paths) <= PROGRESS_MIN_IMAGES,
        )
        return {path: reason for path, reason in zip(paths, results, strict=True) if reason}


def _check_rows(
    rows: list[_Row], roots: Sequence[Path], prompt: str | None, check_images: bool
) -> tuple[list[Pair], list[tuple[str, str]]]:
    """Split rows into usable pairs and (description, reason) for the rest, keeping row order."""
    located: dict[tuple[str, tuple[str, ...]], str | None] = {}
    verdicts: list[tuple[_Row, str | None, str | None]] = []  # (row, image path, problem)
    for row in rows:
        path, problem = None, _row_problem(row)
        if problem is None:
            key = (row.image, row.subdirs)
            if key not in located:  # several captions per image: look each image up once
                located[key] = _resolve(row.image, row.subdirs, roots)
            path = located[key]
            if path is None:
                where = "" if os.path.isabs(row.image) else f" in {', '.join(map(str, roots))}"
                problem = f"image not found{where}"
        verdicts.append((row, path, problem))

    bad_images: dict[str, str] = {}
    if check_images:
        bad_images = _image_errors(list(dict.fromkeys(p for _, p, bad in verdicts if not bad)))

    pairs: list[Pair] = []
    skipped: list[tuple[str, str]] = []
    for row, path, problem in verdicts:
        problem = problem or bad_images.get(path or "")
        if problem:
            skipped.append((_describe(row), problem))
        else:
            caption = _apply_prompt(row.caption, prompt)
            pairs.append(Pair(image=path, caption=caption, tags=dict(row.tags)))
    return pairs, skipped


def _list_problems(skipped: list[tuple[str, str]]) -> str:
    lines = [f"  {where}: {reason}" for where, reason in skipped[:LOG_FIRST_BAD]]
    if len(skipped) > LOG_FIRST_BAD:
        lines.append(f"  ... and {len(skipped) - LOG_FIRST_BAD} more")
    return "\n".join(lines)


def _enforce_quality(
    source: Path, n_rows: int, n_pairs: int, skipped: list[tuple[str, str]], max_bad: float
) -> None:
    if n_pairs == 0:
        raise DataError(
            f"no usable image-caption pairs in {source}: all {n_rows} rows were skipped:\n"
            f"{_list_problems(skipped)}\n"
            f"Check that the images are where the data file says they are (pass --image-root "
            f"for the image folder) and that every row has a caption."
        )
    fraction = len(skipped) / n_rows
    if fraction > max_bad:
        suggestion = min(1.0, math.ceil(fraction * 100) / 100)
        raise DataError(
            f"{len(skipped)} of {n_rows} rows ({fraction:.1%}) in {source} are unusable, more than "
            f"--max-bad-fraction {max_bad:g} allows:\n{_list_problems(skipped)}\n"
            f"Fix or remove these rows, or raise --max-bad-fraction (e.g. to {suggestion:g}) to "
            f"train without them."
        )


def _log_skipped(
    log: logging.Logger, source: Path, n_rows: int, skipped: list[tuple[str, str]]
) -> None:
    if not skipped:
        return
    for where, reason in skipped[:LOG_FIRST_BAD]:
        log.warning("skipped %s: %s", where, reason)
    log.warning(
        "skipped %d of %d rows (%.1f%%) in %s",
        len(skipped),
        n_rows,
        100 * len(skipped) / n_rows,
        source.name,
    )


# --- csv dialects -----------------------------------------------------------------------------


def _dialect(delimiter: str) -> type[csv.Dialect]:
    return type("_Delimited", (csv.excel,), {"delimiter": delimiter})


def _csv_records(text: str, dialect: Any, source: Path) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of each non-blank csv record."""
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    start = 1
    try:
        for fields in reader:
            if any(f.strip() for f in fields):
                yield start, fields
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{source}:{reader.line_num}: not readable as csv ({e})") from e


def _csv_layout(ctx: _Context) -> tuple[Any, int]:
    """(dialect, image column: 0 or -1) of a plain two-column csv, judged from its values."""
    src = ctx.source
    sample = "".join(islice(io.StringIO(src.text, newline=""), CSV_SAMPLE_ROWS))
    candidates = _csv_candidates(ctx, sample)
    best: tuple[int, Any, int] = (0, None, 0)
    for dialect in candidates:
        try:
            rows = [f for _, f in _csv_records(sample, dialect, src.path) if len(f) >= 2]
        except DataError:
            continue
        first = sum(_looks_like_image(f[0], ctx.roots) for f in rows)
        last = sum(_looks_like_image(f[-1], ctx.roots) for f in rows)
        score, column = max((first, 0), (last, -1))  # a tie goes to the first column
        if score > best[0]:
            best = (score, dialect, column)
    if best[1] is None:
        raise DataError(
            f"{src.path}: cannot tell which column holds the images: no value in the first or "
            f"last column of any row looks like an image file "
            f"({' '.join(IMAGE_EXTENSIONS)}), a URL, or an existing file. Each row needs a "
            f"caption and an image path; for other layouts "
            f"use format openclip-csv with --csv-img-key/--csv-caption-key."
        )
    return best[1], best[2]


# --- format readers: each turns a data file into raw rows -------------------------------------


def _csv_candidates(ctx: _Context, sample: str) -> list[Any]:
    """Dialects to try, most likely first."""
    if ctx.csv_separator:
        return [_dialect(ctx.csv_separator)]
    candidates: list[Any] = [_dialect(d) for d in CSV_DELIMITERS]
    try:  # the sniffer also finds the quote character; plain delimiters are the fallback
        candidates.insert(0, csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS))
    except csv.Error:
        pass
    return candidates


def _named_header(ctx: _Context) -> tuple[Any, list[str], int, int] | None:
    """(dialect, header, image column, caption column) when the first record is a header of
    three or more columns naming ``image`` and ``caption`` (or ``text``), case-insensitively."""
    src = ctx.source
    sample = "".join(islice(io.StringIO(src.text, newline=""), CSV_SAMPLE_ROWS))
    for dialect in _csv_candidates(ctx, sample):
        try:
            first = next(_csv_records(sample, dialect, src.path), None)
        except DataError:
            continue
        header = [] if first is None else [name.strip() for name in first[1]]
        names = [name.lower() for name in header]
        caption = next((c for c in ("caption", "text") if c in names), None)
        if len(header) >= 3 and "image" in names and caption:
            return dialect, header, names.index("image"), names.index(caption)
    return None


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
# Integers a double holds exactly. A longer one is an identifier (a 64-bit SKU) and stays text:
# the search service carries and compares numbers as doubles (search.limits.MAX_EXACT_INT).
_EXACT_INT = 2**53


def _tag_value(cell: str) -> Any:
    """A csv cell as a tag: a number when it reads as a finite one (an integer only up to
    `_EXACT_INT`), else the stripped text."""
    text = cell.strip()
    if _NUMBER.fullmatch(text):
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text) if abs(int(text)) <= _EXACT_INT else text
        number = float(text)
        if math.isfinite(number):
            return number
    return text


def _read_named_csv(
    ctx: _Context, dialect: Any, header: list[str], img_col: int, caption_col: int
) -> Iterator[_Row]:
    """A csv whose header names its columns: image and caption by name, the rest as tags."""
    src = ctx.source
    records = _csv_records(src.text, dialect, src.path)
    next(records)  # the header
    others = [i for i in range(len(header)) if i not in (img_col, caption_col)]
    for line, fields in records:
        where = f"{src.name}:{line}"
        if len(fields) > len(header):
            error = (
                f"{len(fields)} fields, the header has {len(header)} (quote values that hold "
                f"the separator {dialect.delimiter!r})"
            )
            yield _Row(where, fields[img_col], "", error=error)
            continue
        fields = fields + [""] * (len(header) - len(fields))
        tags = {header[i]: _tag_value(fields[i]) for i in others if fields[i].strip()}
        yield _Row(where, fields[img_col], fields[caption_col], tags=tags)


def _read_csv(ctx: _Context) -> Iterator[_Row]:
    """Plain csv: image column and dialect inferred; extra delimiters belong to the caption.
    A header naming the image and caption among three or more columns is read by name."""
    src = ctx.source
    named = _named_header(ctx)
    if named is not None:
        ctx.log.debug("%s: columns named by the header: %s", src.name, named[1])
        yield from _read_named_csv(ctx, *named)
        return
    dialect, column = _csv_layout(ctx)
    sep = dialect.delimiter
    for n, (line, fields) in enumerate(_csv_records(src.text, dialect, src.path)):
        where = f"{src.name}:{line}"
        if n == 0 and not _looks_like_image(fields[column], ctx.roots):
            ctx.log.debug("%s: first line is a header: %s", src.name, fields)
            continue
        if len(fields) < 2:
            yield _Row(where, fields[0], "", error="only one column (need a caption and an image)")
        elif column == 0:  # an unquoted delimiter inside a caption split it: join it back
            yield _Row(where, fields[0], sep.join(fields[1:]))
        else:
            yield _Row(where, fields[-1], sep.join(fields[:-1]))


def _openclip_separator(ctx: _Context) -> str | None:
    """The separator that splits the header into fields holding both key columns, if any."""
    img_key = ctx.csv_img_key or OPENCLIP_IMG_KEY
    caption_key = ctx.csv_caption_key or OPENCLIP_CAPTION_KEY
    default = "\t" if ctx.source.path.suffix.lower() == ".tsv" else ","
    header = ctx.source.first_line()
    for sep in [ctx.csv_separator] if ctx.csv_separator else [default, *CSV_DELIMITERS]:
        columns = {c.strip() for c in next(csv.reader([header], delimiter=sep), [])}
        if {img_key, caption_key} <= columns:
            return sep
    return None


def _read_openclip_csv(ctx: _Context) -> Iterator[_Row]:
    src = ctx.source
    img_key = ctx.csv_img_key or OPENCLIP_IMG_KEY
    caption_key = ctx.csv_caption_key or OPENCLIP_CAPTION_KEY
    sep = _openclip_separator(ctx)
    if sep is None:
        raise DataError(
            f"{src.path}: the header {src.first_line()!r} has no columns named {img_key!r} and "
            f"{caption_key!r}; set --csv-img-key and --csv-caption-key to the names of the image "
            f"and caption columns (and --csv-separator if needed)"
        )
    records = _csv_records(src.text, _dialect(sep), src.path)
    header = [c.strip() for c in next(records)[1]]
    img_col, caption_col = header.index(img_key), header.index(caption_key)
    for line, fields in records:
        where = f"{src.name}:{line}"
        if len(fields) <= max(img_col, caption_col):
            image = fields[img_col] if img_col < len(fields) else ""
            error = f"only {len(fields)} of the header's {len(header)} columns"
            yield _Row(where, image, "", error=error)
        else:
            yield _Row(where, fields[img_col], fields[caption_col])


def _is_flickr8k_header(line: str) -> bool:
    return line.replace(" ", "").strip().lower() == "image,caption"


def _unquote(caption: str) -> str:
    """Strip csv quoting from a caption that is one whole quoted field, leave others be."""
    text = caption.strip()
    inner = text[1:-1]
    if len(text) >= 2 and text[0] == text[-1] == '"' and '"' not in inner.replace('""', ""):
        return inner.replace('""', '"')
    return text


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of the non-blank lines; str.splitlines would also split captions
    at form feeds and Unicode line separators."""
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield number, line.rstrip("\r")


def _read_flickr8k(ctx: _Context) -> Iterator[_Row]:
    src = ctx.source
    lines = list(_lines(src.text))
    if lines and _is_flickr8k_header(lines[0][1]):
        lines = lines[1:]
    for number, line in lines:
        image, comma, caption = line.partition(",")  # captions hold unquoted commas
        error = None if comma else "no comma between the image name and the caption"
        yield _Row(f"{src.name}:{number}", image.strip(), _unquote(caption), error=error)


def _json_list(ctx: _Context, key: str, kind: str) -> list[Any]:
    data = ctx.source.json
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, list):
        raise DataError(f"{ctx.source.path} is not a {kind} file: it has no {key!r} list")
    return value


def _wanted_splits(ctx: _Context, images: list[Any]) -> frozenset[str] | None:
    if ctx.split is None:
        ctx.log.warning(
            "%s: no split chosen, using the images of every split (train, val and test); pass "
            "--split train to keep val/test out of training",
            ctx.source.name,
        )
        return None
    present = {str(e.get("split")) for e in images if isinstance(e, dict)}
    wanted = frozenset(SPLIT_ALIASES.get(ctx.split, (ctx.split,)))
    if not wanted & present:
        raise DataError(
            f"{ctx.source.path} has no images in split {ctx.split!r}; its splits are: "
            f"{', '.join(sorted(present)) or 'none'}"
        )
    return wanted


def _read_karpathy(ctx: _Context) -> Iterator[_Row]:
    """Karpathy split JSON; split 'train' includes 'restval', as in Karpathy's own training."""
    src = ctx.source
    images = _json_list(ctx, "images", "Karpathy split")
    if images and not (isinstance(images[0], dict) and "sentences" in images[0]):
        raise DataError(
            f"{src.path} is not a Karpathy split file: its images have no 'sentences' (a COCO "
            f"captions file keeps them in 'annotations': use format coco)"
        )
    wanted = _wanted_splits(ctx, images)
    for i, entry in enumerate(images):
        where = f"{src.name}:images[{i}]"
        if not isinstance(entry, dict) or not entry.get("filename"):
            yield _Row(where, "", "", error="no 'filename'")
            continue
        if wanted is not None and entry.get("split") not in wanted:
            continue
        image = str(entry["filename"])
        # dataset_coco.json keeps train2014/val2014 in 'filepath'; the Flickr ones have none.
        subdirs = (str(entry["filepath"]), "") if entry.get("filepath") else ("",)
        sentences = entry.get("sentences") or []
        if not sentences:
            yield _Row(where, image, "", subdirs, error="no sentences")
        for j, sentence in enumerate(sentences):
            sentence = sentence if isinstance(sentence, dict) else {}
            caption = sentence.get("raw") or " ".join(sentence.get("tokens") or [])
            yield _Row(f"{where}.sentences[{j}]", image, str(caption), subdirs)


def _read_coco(ctx: _Context) -> Iterator[_Row]:
    src = ctx.source
    images = _json_list(ctx, "images", "COCO captions")
    annotations = _json_list(ctx, "annotations", "COCO captions")
    file_names = {
        e["id"]: str(e["file_name"])
        for e in images
        if isinstance(e, dict) and "id" in e and "file_name" in e
    }
    for i, ann in enumerate(annotations):
        where = f"{src.name}:annotations[{i}]"
        ann = ann if isinstance(ann, dict) else {}
        image = file_names.get(ann.get("image_id"))
        caption = str(ann.get("caption") or "")
        if image is None:
            error = f"image_id {ann.get('image_id')!r} is not among the file's images"
            yield _Row(where, "", caption, error=error)
        else:
            yield _Row(where, image, caption)


def _no_dirs(path: Path) -> tuple[Path, ...]:
    return ()


def _flickr8k_dirs(path: Path) -> tuple[Path, ...]:
    return (path.parent / "images", path.parent / "Images")


def _coco_dirs(path: Path) -> tuple[Path, ...]:
    """<folder>/train2014 for captions_train2014.json, also beside an annotations/ folder."""
    match = _COCO_FOLDER.search(path.stem)
    if not match:
        return ()
    return (path.parent / match.group(0), path.parent.parent / match.group(0))


@dataclass(frozen=True)
class FormatReader:
    read: Callable[[_Context], Iterator[_Row]]
    # Folders searched after image_root and the data file's folder, from the data file's path.
    image_dirs: Callable[[Path], tuple[Path, ...]] = _no_dirs
    has_splits: bool = False


FORMAT_READERS: dict[str, FormatReader] = {
    "csv": FormatReader(_read_csv),
    "openclip-csv": FormatReader(_read_openclip_csv),
    "flickr8k": FormatReader(_read_flickr8k, image_dirs=_flickr8k_dirs),
    "karpathy": FormatReader(_read_karpathy, has_splits=True),
    "coco": FormatReader(_read_coco, image_dirs=_coco_dirs),
}
FORMATS = tuple(FORMAT_READERS)


# --- detection --------------------------------------------------------------------------------


def _formats_hint() -> str:
    return f"choose the format explicitly, one of: {', '.join(FORMATS)}"


def _detect_json(src: _Source) -> str:
    data = src.json
    images = data.get("images") if isinstance(data, dict) else None
    if isinstance(images, list) and isinstance(data.get("annotations"), list):
        return "coco"
    if isinstance(images, list) and images and isinstance(images[0], dict):
        if "sentences" in images[0]:
            return "karpathy"
    raise DataError(
        f"cannot tell the format of {src.path}: it is JSON but neither a Karpathy split file "
        f"(images[].sentences) nor COCO captions (images + annotations); {_formats_hint()}"
    )


def _detect(ctx: _Context) -> str:
    src = ctx.source
    if not src.text.strip():
        raise DataError(f"{src.path} is empty")
    if src.path.suffix.lower() == ".json" or src.text.lstrip().startswith(("{", "[")):
        return _detect_json(src)
    if ctx.csv_img_key or ctx.csv_caption_key or _openclip_separator(ctx):
        return "openclip-csv"
    if _is_flickr8k_header(src.first_line()):
        return "flickr8k"
    if any(d in src.text for d in CSV_DELIMITERS):
        return "csv"
    raise DataError(
        f"cannot tell the format of {src.path}: no line has a separator ({CSV_DELIMITERS!r}) "
        f"between a caption and an image; {_formats_hint()}"
    )


def detect_format(path: str | os.PathLike) -> str:
    """The format of a data file: one of FORMATS. Raises DataError when it cannot tell."""
    src = _Source(path)
    return _detect(_Context(src, roots=(src.folder,), log=_LOG))


# --- entry points -----------------------------------------------------------------------------


def _check_options(
    format: str, prompt: str | None, max_bad_fraction: float, limit: int | None
) -> None:
    if format != "auto" and format not in FORMAT_READERS:
        raise DataError(f"unknown data format {format!r}; use auto or one of: {', '.join(FORMATS)}")
    if prompt is not None and "{}" not in prompt:
        raise DataError(
            f"prompt {prompt!r} has no {{}} to put the caption in, e.g. 'a photo of {{}}'"
        )
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise DataError(f"max_bad_fraction must be between 0 and 1, not {max_bad_fraction}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of rows, not {limit}")


def _image_roots(src: _Source, image_root: str | None, reader: FormatReader) -> tuple[Path, ...]:
    roots = []
    if image_root is not None:
        root = Path(os.path.abspath(os.path.expanduser(image_root)))
        if not root.is_dir():
            raise DataError(f"image root {root} is not a folder")
        roots.append(root)
    roots += [src.folder, *reader.image_dirs(src.path)]
    return tuple(dict.fromkeys(roots))


def load_pairs(
    path: str | os.PathLike,
    format: str = "auto",
    image_root: str | None = None,
    split: str | None = None,
    prompt: str | None = None,
    csv_img_key: str | None = None,
    csv_caption_key: str | None = None,
    csv_separator: str | None = None,
    max_bad_fraction: float = 0.05,
    check_images: bool = True,
    limit: int | None = None,
    log: logging.Logger | None = None,
) -> PairSet:
    """Read the image-caption pairs of a data file, skipping (and reporting) unusable rows.

    - `format`: "auto" (detected from the file) or one of FORMATS.
    - `image_root`: folder relative image paths resolve against first; then the data file's
      folder, then format-specific places (flickr8k: ``images/``, ``Images/``; coco:
      ``train2014/`` etc. named after the annotation file, beside it or one level up).
    - `split`: karpathy only: "train" (which includes "restval", Karpathy's convention),
      "val", "test" or "restval"; None uses every split. Other formats ignore it with a warning.
    - `prompt`: template with ``{}`` for the caption, e.g. "This is a photo of {}".
    - `csv_img_key`, `csv_caption_key`, `csv_separator`: openclip-csv column names and
      separator (giving a key selects openclip-csv when auto-detecting); `csv_separator` also
      fixes the delimiter of a plain csv.
    - `max_bad_fraction`: the share of unusable rows (missing or undecodable image, empty
      caption, remote URL) beyond which the file is refused instead of silently shrunk.
    - `check_images`: decode every image once now (missing files are always checked).
    - `limit`: read at most this many rows (after split filtering), e.g. for a quick trial.

    Raises DataError with what is wrong and what to do about it.
    """
    log = log or _LOG
    _check_options(format, prompt, max_bad_fraction, limit)
    src = _Source(path)
    ctx = _Context(
        src,
        roots=(),
        log=log,
        split=split,
        csv_img_key=csv_img_key,
        csv_caption_key=csv_caption_key,
        csv_separator=csv_separator,
    )
    fmt = _detect(ctx) if format == "auto" else format
    reader = FORMAT_READERS[fmt]
    ctx = replace(ctx, roots=_image_roots(src, image_root, reader))
    if split is not None and not reader.has_splits:
        log.warning("split %r ignored: %s files have no splits", split, fmt)

    rows = list(islice(reader.read(ctx), limit))
    if not rows:
        raise DataError(f"{src.path} has no {fmt} rows with a caption and an image")
    return _usable_pairs(rows, ctx, fmt, prompt, check_images, max_bad_fraction)


def _usable_pairs(
    rows: list[_Row],
    ctx: _Context,
    fmt: str,
    prompt: str | None,
    check_images: bool,
    max_bad_fraction: float,
) -> PairSet:
    """The rows that make pairs; refuse the file when too many do not, and log what was
    skipped."""
    src, log = ctx.source, ctx.log
    pairs, skipped = _check_rows(rows, ctx.roots, prompt, check_images)
    _enforce_quality(src.path, len(rows), len(pairs), skipped, max_bad_fraction)
    _log_skipped(log, src.path, len(rows), skipped)
    pair_set = PairSet(pairs, source=str(src.path), format=fmt, n_rows=len(rows), skipped=skipped)
    log.info(
        "%s (%s): %d pairs of %d images",
        src.name,
        fmt,
        len(pairs),
        len(pair_set.images()),
    )
    return pair_set
