"""Tests for the offline sample domains (finetune/sample_data.py)."""

from __future__ import annotations

import importlib.util
import random
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from demo.sample_data import (
    CAPTIONS_HEADER,
    DOMAIN_SPECS,
    DOMAINS,
    GENERIC,
    TARGET,
    caption_scene,
    count_descriptions,
    generate_sample_data,
    sample_scenes,
)

N = 40


@pytest.fixture(scope="module", params=DOMAINS)
def dataset(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    return generate_sample_data(request.param, N, out, seed=7, progress=False)


def read_rows(path: Path) -> list[tuple[str, str]]:
    """Parse a Flickr8k captions file the way the loader does: split on the first comma."""
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == CAPTIONS_HEADER
    assert lines[-1] == "", "file ends with a newline"
    rows = []
    for line in lines[1:-1]:
        name, sep, caption = line.partition(",")
        assert sep and name and caption.strip(), line
        rows.append((name, caption))
    return rows


def all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    a = generate_sample_data("target", 12, tmp_path / "a", seed=3, progress=False)
    b = generate_sample_data("target", 12, tmp_path / "b", seed=3, progress=False)
    c = generate_sample_data("target", 12, tmp_path / "c", seed=4, progress=False)
    files_a, files_b, files_c = all_files(a.root), all_files(b.root), all_files(c.root)
    assert files_a == files_b
    assert files_a["captions.txt"] != files_c["captions.txt"]
    shared = set(files_a) & set(files_c)
    assert any(files_a[k] != files_c[k] for k in shared if k.startswith("images/"))
    # The domain is part of the seed: the same seed gives other pictures in the other domain.
    g = generate_sample_data("generic", 12, tmp_path / "g", seed=3, progress=False)
    assert all_files(g.root)["captions.txt"] != files_a["captions.txt"]


def test_rerun_into_same_folder_removes_stale_sample_images(tmp_path):
    generate_sample_data("generic", 10, tmp_path, seed=1, progress=False)
    (tmp_path / "images" / "notes.txt").write_text("user file")
    info = generate_sample_data("generic", 4, tmp_path, seed=1, progress=False)
    names = sorted(p.name for p in info.images_dir.iterdir())
    assert len(names) == 5 and "notes.txt" in names
    assert {name for name, _ in read_rows(info.captions_file)} <= set(names)


def test_split_is_by_image_disjoint_and_covers_everything(dataset):
    rows = read_rows(dataset.captions_file)
    train, test = read_rows(dataset.train_file), read_rows(dataset.test_file)
    train_names, test_names = {n for n, _ in train}, {n for n, _ in test}
    assert not train_names & test_names
    assert train_names | test_names == {n for n, _ in rows}
    assert sorted(train + test) == sorted(rows)
    assert len(test_names) == dataset.n_test_images == round(N * 0.2)
    assert len(train_names) == dataset.n_train_images == N - dataset.n_test_images
    assert sorted(dataset.train_images + dataset.test_images) == sorted({n for n, _ in rows})


@pytest.mark.parametrize(
    ("n", "fraction", "expected_test"), [(1, 0.2, 0), (2, 0.01, 1), (3, 0.0, 0)]
)
def test_split_sizes_at_the_edges(tmp_path, n, fraction, expected_test):
    info = generate_sample_data("generic", n, tmp_path, test_fraction=fraction, progress=False)
    assert info.n_test_images == expected_test == len({r[0] for r in read_rows(info.test_file)})
    assert info.n_train_images == n - expected_test


def test_each_image_has_exactly_k_distinct_captions(dataset, tmp_path):
    by_image: dict[str, list[str]] = {}
    for name, caption in read_rows(dataset.captions_file):
        by_image.setdefault(name, []).append(caption)
    assert len(by_image) == dataset.n_images == N
    assert dataset.n_captions == 5 * N
    for name, captions in by_image.items():
        assert len(captions) == 5 and len(set(captions)) == 5, (name, captions)
        for c in captions:
            assert c == c.strip() and "\n" not in c and "\r" not in c and "  " not in c
    # Commas are legal (first-comma split) but rare.
    rows = read_rows(dataset.captions_file)
    assert sum("," in c for _, c in rows) <= 0.1 * len(rows)
    info = generate_sample_data(dataset.domain, 3, tmp_path, captions_per_image=8, progress=False)
    assert Counter(n for n, _ in read_rows(info.captions_file)) == {
        n: 8 for n in info.train_images + info.test_images
    }


def test_images_are_real_rgb_jpeg_and_png_of_varying_sizes(dataset):
    names = {n for n, _ in read_rows(dataset.captions_file)}
    assert names == {p.name for p in dataset.images_dir.iterdir()}
    sizes, formats = set(), Counter()
    for name in names:
        with Image.open(dataset.images_dir / name) as im:
            im.load()
            assert im.mode == "RGB"
            expected = {"jpg": "JPEG", "png": "PNG"}[name.rsplit(".", 1)[1]]
            assert im.format == expected
            formats[im.format] += 1
            sizes.add(im.size)
            w, h = im.size
            assert 72 <= min(w, h) and max(w, h) <= 160 and max(w, h) / min(w, h) <= 1.31
    assert formats["JPEG"] > 0 and formats["PNG"] > 0
    assert dataset.n_jpeg == formats["JPEG"] and dataset.n_png == formats["PNG"]
    assert len(sizes) > N // 2


def test_readme_is_one_paragraph_naming_domain_seed_and_counts(dataset):
    text = dataset.readme_file.read_text(encoding="utf-8").strip()
    assert "\n\n" not in text
    flat = " ".join(text.split())
    assert f"'{dataset.domain}'" in flat and "seed 7" in flat and f"{N} images" in flat


def test_captions_state_the_facts_of_their_scene():
    # Every caption names each object's colour and shape (a word from the table), so it can
    # identify its picture; and relation words agree with where the objects are.
    rng = random.Random(0)
    for spec in (GENERIC, TARGET):
        for scene in sample_scenes(spec, 150, seed=1):
            for caption in caption_scene(spec, scene, 5, rng):
                for obj in scene.objects:
                    colours = (obj.colour.name, *obj.colour.synonyms)
                    shapes = (obj.shape.name, *obj.shape.synonyms)
                    assert any(re.search(rf"\b{w}\b", caption) for w in colours), caption
                    assert any(re.search(rf"\b{w}\b", caption) for w in shapes), caption
                if len(scene.objects) == 2 and re.search(r" (above|over) ", caption):
                    top = next(o for o in scene.objects if o.position.name == "top")
                    first = caption.split(" above ")[0].split(" over ")[0]
                    assert any(w in first for w in (top.colour.name, *top.colour.synonyms))


def test_scenes_rarely_share_a_description():
    # With a test split of 100-200 images, captions should mostly single out their picture.
    for spec in (GENERIC, TARGET):
        scenes = sample_scenes(spec, 200, seed=2)
        core = Counter(s.core_key() for s in scenes)
        assert sum(core[s.core_key()] == 1 for s in scenes) >= 0.95 * len(scenes)
        counts = Counter(len(s.objects) for s in scenes)
        weights = dict(spec.object_counts)
        assert abs(counts[1] / 200 - weights.get(1, 0) / sum(weights.values())) < 0.12
        assert count_descriptions(spec)["core"] >= 1000
    assert sample_scenes(TARGET, 30, seed=5) == sample_scenes(TARGET, 60, seed=5)[:30]


def test_domains_share_part_of_their_vocabulary_and_differ_elsewhere():
    g_colours, t_colours = {c.name for c in GENERIC.colours}, {c.name for c in TARGET.colours}
    g_shapes, t_shapes = {s.name for s in GENERIC.shapes}, {s.name for s in TARGET.shapes}
    # Enough in common for zero-shot transfer ...
    assert len(g_colours & t_colours) >= 0.7 * len(t_colours)
    assert len(g_shapes & t_shapes) >= 4
    # ... and a real shift in both words and pictures.
    assert t_colours - g_colours and t_shapes - g_shapes and g_shapes - t_shapes
    assert any(c.synonyms for c in TARGET.colours) and TARGET.synonym_rate > 0
    assert TARGET.relations and not GENERIC.relations
    assert {s.name for s in TARGET.styles} > {s.name for s in GENERIC.styles}
    assert {b.pattern for b in TARGET.backgrounds} - {b.pattern for b in GENERIC.backgrounds}
    assert {s.scale for s in TARGET.sizes} != {s.scale for s in GENERIC.sizes}
    g_words, t_words = GENERIC.vocabulary(), TARGET.vocabulary()
    shared = g_words & t_words
    assert len(shared) >= 0.4 * len(g_words) and len(t_words - g_words) >= 20
    assert set(DOMAIN_SPECS) == set(DOMAINS) == {"generic", "target"}


def test_bad_arguments_are_refused(tmp_path):
    for kwargs in ({"n": 0}, {"n": 2, "seed": -1}, {"n": 2, "test_fraction": 1.0}):
        with pytest.raises(ValueError):
            generate_sample_data("generic", out_dir=tmp_path, progress=False, **kwargs)
    with pytest.raises(ValueError, match="unknown sample domain"):
        generate_sample_data("photos", 2, tmp_path, progress=False)
    with pytest.raises(ValueError, match="different captions"):
        generate_sample_data("generic", 2, tmp_path, captions_per_image=10_000, progress=False)


def test_no_caption_can_overflow_the_text_context():
    # ViT-Tiny-8 reads 32 tokens including start and end; bound the longest possible caption
    # from the tables (BPE works word by word, so token counts add up over words).
    tokenizer = pytest.importorskip("open_clip.tokenizer").SimpleTokenizer()

    def tokens(text: str) -> int:
        return len(tokenizer.encode(text))

    def longest(options) -> int:
        return max(tokens(o) for o in options)

    for spec in (GENERIC, TARGET):
        colour = longest(w for c in spec.colours for w in (c.name, *c.synonyms))
        shape = longest(w for s in spec.shapes for w in (s.name, *s.synonyms))
        slot = {
            "size": longest(w for s in spec.sizes for w in s.words),
            "style": longest(w for s in spec.styles for w in s.words),
            "colour": colour,
            "shape": shape,
        }
        noun = max(
            tokens(re.sub(r"\{\w+\}", " ", f)) + sum(slot[k] for k in re.findall(r"\{(\w+)\}", f))
            for f in spec.noun_phrases
        )
        slots = {
            "a": noun + 1,
            "b": noun + 1,
            "a_np": noun,
            "b_np": noun,
            "pos_a": longest(p for pos in spec.positions for p in pos.phrases),
            "pos_b": longest(p for pos in spec.positions for p in pos.phrases),
            "rel": longest([p for r in spec.relations for p in r.phrases] or [""]),
            "bg": longest([p for b in spec.backgrounds for p in b.phrases] or [""]),
        }
        for t in spec.templates_one + spec.templates_two:
            literal = tokens(re.sub(r"\{\w+\}", " ", t.text))
            worst = literal + sum(slots[k] for k in re.findall(r"\{(\w+)\}", t.text))
            assert worst + 2 <= 32, (spec.name, t.text, worst)


def test_the_project_loader_reads_it(dataset):
    if importlib.util.find_spec("imagepairs.pairs") is None:
        pytest.skip("imagepairs/pairs.py is not written yet")
    from imagepairs.pairs import load_pairs

    pairs = load_pairs(dataset.captions_file, format="flickr8k").pairs
    assert len(pairs) == dataset.n_captions
    assert {Path(p.image) for p in pairs} == {p.resolve() for p in dataset.images_dir.iterdir()}
    assert all(Path(p.image).is_absolute() for p in pairs)
    expected = Counter(c for _, c in read_rows(dataset.captions_file))
    assert Counter(p.caption for p in pairs) == expected
    test_pairs = load_pairs(dataset.test_file, format="flickr8k").pairs
    assert {Path(p.image).name for p in test_pairs} == set(dataset.test_images)


def test_generation_speed(tmp_path, capsys):
    # Reported, not asserted (the machine is shared); n=2000 would take too long for the suite,
    # and the time per image does not grow with n.
    n = 300
    start = time.perf_counter()
    info = generate_sample_data("target", n, tmp_path, seed=0, progress=False)
    seconds = time.perf_counter() - start
    assert info.n_images == n
    with capsys.disabled():
        print(
            f"\n[sample_data] {n} target images: {seconds:.2f} s ({1000 * seconds / n:.1f} ms/img;"
            f" about {2000 * seconds / n:.0f} s for n=2000)"
        )
