"""imagepairs.pairs: every supported format, detection, path resolution, every kind of bad row."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from finetune.dataset import PairDataset
from imagepairs import pairs as data
from imagepairs.pairs import (
    FORMAT_READERS,
    FORMATS,
    DataError,
    Pair,
    PairSet,
    detect_format,
    load_pairs,
)


def make_image(path: Path, size: int = 8, color: str = "red") -> str:
    """A small real image; the format follows the extension (JPEG for .jpg, PNG for .png)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return str(path)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def as_set(pair_set: PairSet, base: Path) -> set[tuple[str, str]]:
    """(image relative to base, caption) of every kept pair, for exact comparisons."""
    return {(os.path.relpath(p.image, base), p.caption) for p in pair_set.pairs}


@pytest.fixture
def imgs(tmp_path: Path) -> Path:
    """tmp_path/img with a.jpg (JPEG), b.png (PNG) and c.jpg of a few sizes."""
    make_image(tmp_path / "img" / "a.jpg", 8, "red")
    make_image(tmp_path / "img" / "b.png", 64, "green")
    make_image(tmp_path / "img" / "c.jpg", 3, "blue")
    return tmp_path


EXPECTED_ABC = {
    ("img/a.jpg", "a red square"),
    ("img/b.png", "a green square, large"),
    ("img/c.jpg", "a tiny blue square"),
}


# --- csv ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # image first, no header, quoted caption holding a comma
        'img/a.jpg,a red square\nimg/b.png,"a green square, large"\nimg/c.jpg,a tiny blue square\n',
        # caption first, with header
        'caption,image\na red square,img/a.jpg\n"a green square, large",img/b.png\n'
        "a tiny blue square,img/c.jpg\n",
        # semicolon dialect, commas in captions unquoted
        "text;file\na red square;img/a.jpg\na green square, large;img/b.png\n"
        "a tiny blue square;img/c.jpg\n",
        # tab separated, CRLF line ends, a blank line
        "img/a.jpg\ta red square\r\nimg/b.png\ta green square, large\r\n\r\n"
        "img/c.jpg\ta tiny blue square\r\n",
        # unquoted commas in a comma-separated file, image last: they belong to the caption
        "a red square,img/a.jpg\na green square, large,img/b.png\na tiny blue square,img/c.jpg\n",
        # pipe separated, fully quoted, with a BOM-less header of other names
        '"path"|"desc"\n"img/a.jpg"|"a red square"\n"img/b.png"|"a green square, large"\n'
        '"img/c.jpg"|"a tiny blue square"\n',
    ],
    ids=["image-first", "caption-first-header", "semicolon", "tab-crlf", "unquoted-commas", "pipe"],
)
def test_csv_dialects_and_column_orders(imgs: Path, text: str) -> None:
    path = write(imgs / "pairs.csv", text)
    assert detect_format(path) == "csv"
    ps = load_pairs(path)
    assert ps.format == "csv"
    assert ps.n_rows == 3
    assert ps.skipped == []
    assert as_set(ps, imgs) == EXPECTED_ABC
    assert ps.source == str(path)
    assert all(os.path.isabs(p.image) for p in ps.pairs)


def test_csv_with_bom_and_header_like_openclip_but_other_names(imgs: Path) -> None:
    path = imgs / "pairs.csv"
    path.write_bytes("\ufeffimage,text\nimg/a.jpg,a red square\n".encode())
    ps = load_pairs(path)
    assert as_set(ps, imgs) == {("img/a.jpg", "a red square")}


def test_csv_image_column_found_by_existing_files_without_extension(tmp_path: Path) -> None:
    # No extension on the image files: the column is the one whose values are existing files.
    Image.new("RGB", (4, 4)).save(tmp_path / "photo1", format="PNG")
    Image.new("RGB", (4, 4)).save(tmp_path / "photo2", format="JPEG")
    path = write(tmp_path / "p.csv", "a first photo,photo1\na second photo,photo2\n")
    ps = load_pairs(path)
    assert as_set(ps, tmp_path) == {("photo1", "a first photo"), ("photo2", "a second photo")}


def test_csv_without_image_column_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "hello,world\nfoo,bar\n")
    with pytest.raises(DataError, match="cannot tell which column holds the images"):
        load_pairs(path)


def test_csv_explicit_separator(imgs: Path) -> None:
    path = write(imgs / "p.txt", "img/a.jpg;a red square\nimg/b.png;a green square, large\n")
    ps = load_pairs(path, csv_separator=";", format="csv")
    assert as_set(ps, imgs) == {
        ("img/a.jpg", "a red square"),
        ("img/b.png", "a green square, large"),
    }


PRODUCTS_HEADER = "image,caption,gender,category,subCategory,articleType,colour,season,price\n"


def test_csv_header_names_the_columns_and_the_others_become_tags(tmp_path: Path) -> None:
    make_image(tmp_path / "images" / "1163.jpg", 8, "red")
    make_image(tmp_path / "images" / "1164.jpg", 8, "blue")
    make_image(tmp_path / "images" / "1165.jpg", 8, "white")
    path = write(
        tmp_path / "styles.csv",
        PRODUCTS_HEADER
        + "images/1163.jpg,Nike Men Red T-shirt,Men,Apparel,Topwear,Tshirts,Red,Summer,49.5\n"
        + 'images/1164.jpg,"Puma Women Blue Shoes, Running",Women,Footwear,Shoes,Sports Shoes,'
        + "Blue,,120\n"
        + "images/1165.jpg,Plain White Mug,,Home,,Mugs,White,All,n/a\n",
    )
    assert detect_format(path) == "csv"
    ps = load_pairs(path)
    assert (ps.format, ps.n_rows, ps.skipped) == ("csv", 3, [])
    assert [(os.path.relpath(p.image, tmp_path), p.caption) for p in ps.pairs] == [
        ("images/1163.jpg", "Nike Men Red T-shirt"),
        ("images/1164.jpg", "Puma Women Blue Shoes, Running"),
        ("images/1165.jpg", "Plain White Mug"),
    ]
    assert ps.pairs[0].tags == {
        "gender": "Men",
        "category": "Apparel",
        "subCategory": "Topwear",
        "articleType": "Tshirts",
        "colour": "Red",
        "season": "Summer",
        "price": 49.5,
    }
    tags = ps.pairs[1].tags
    assert tags["price"] == 120 and isinstance(tags["price"], int)
    assert "season" not in tags  # empty cells are left out
    assert ps.pairs[2].tags == {
        "category": "Home",
        "articleType": "Mugs",
        "colour": "White",
        "season": "All",
        "price": "n/a",  # not a number: kept as text
    }
    # the eval view and a prompt see the caption alone, never the other columns
    images, captions, _ = ps.retrieval_view()
    assert captions[0] == "Nike Men Red T-shirt" and len(images) == 3
    prompted = load_pairs(path, prompt="a photo of {}")
    assert prompted.pairs[0].caption == "a photo of Nike Men Red T-shirt"


def test_csv_header_by_name_in_any_order_and_separator(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png", 8, "red")
    path = write(tmp_path / "p.tsv", "Colour\tText\tImage\nred\ta red square\ta.png\n")
    ps = load_pairs(path)
    assert [(p.caption, p.tags) for p in ps.pairs] == [("a red square", {"Colour": "red"})]


def test_csv_named_header_row_with_too_many_fields_is_a_bad_row(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png", 8, "red")
    path = write(
        tmp_path / "p.csv",
        "image,caption,colour\na.png,a red square,red\na.png,unquoted, comma,red\n",
    )
    ps = load_pairs(path, max_bad_fraction=0.5)
    assert [p.caption for p in ps.pairs] == ["a red square"]
    assert "4 fields, the header has 3" in ps.skipped[0][1]


def test_headerless_two_column_csv_has_no_tags(imgs: Path) -> None:
    path = write(imgs / "p.csv", "img/a.jpg,a red square, with a comma\n")
    ps = load_pairs(path)
    assert [(p.caption, p.tags) for p in ps.pairs] == [("a red square, with a comma", {})]


def test_absolute_image_paths(imgs: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    path = write(other / "p.csv", f"{imgs / 'img' / 'a.jpg'},a red square\n")
    ps = load_pairs(path)
    assert ps.pairs == [Pair(str(imgs / "img" / "a.jpg"), "a red square")]


# --- openclip-csv -------------------------------------------------------------------------------


def test_openclip_tsv_default_keys(imgs: Path) -> None:
    path = write(
        imgs / "train.tsv",
        "id\ttitle\tfilepath\n1\ta red square\timg/a.jpg\n2\ta green square, large\timg/b.png\n"
        "3\ta tiny blue square\timg/c.jpg\n",
    )
    assert detect_format(path) == "openclip-csv"
    ps = load_pairs(path)
    assert ps.format == "openclip-csv"
    assert as_set(ps, imgs) == EXPECTED_ABC


def test_openclip_csv_comma_detected_from_header(imgs: Path) -> None:
    path = write(imgs / "train.csv", 'filepath,title\nimg/a.jpg,"a red square"\n')
    assert detect_format(path) == "openclip-csv"
    assert as_set(load_pairs(path), imgs) == {("img/a.jpg", "a red square")}


def test_openclip_csv_custom_keys_select_the_format(imgs: Path) -> None:
    path = write(imgs / "x.csv", "url,text,score\nimg/a.jpg,a red square,0.3\nimg/c.jpg,,0.1\n")
    ps = load_pairs(path, csv_img_key="url", csv_caption_key="text", max_bad_fraction=0.5)
    assert ps.format == "openclip-csv"
    assert as_set(ps, imgs) == {("img/a.jpg", "a red square")}
    assert ps.skipped == [("x.csv:3 (img/c.jpg)", "empty caption")]


def test_openclip_csv_missing_columns_names_the_flags(imgs: Path) -> None:
    path = write(imgs / "x.csv", "url,text\nimg/a.jpg,a red square\n")
    with pytest.raises(DataError, match="--csv-img-key") as e:
        load_pairs(path, format="openclip-csv")
    assert "'filepath'" in str(e.value) and "'title'" in str(e.value)


def test_openclip_csv_short_row_is_bad(imgs: Path) -> None:
    path = write(imgs / "x.tsv", "filepath\ttitle\nimg/a.jpg\ta red square\nimg/b.png\n")
    ps = load_pairs(path, max_bad_fraction=0.5)
    assert as_set(ps, imgs) == {("img/a.jpg", "a red square")}
    assert ps.skipped == [("x.tsv:3 (img/b.png)", "only 1 of the header's 2 columns")]


# --- flickr8k -----------------------------------------------------------------------------------


FLICKR_CAPTIONS = (
    "image,caption\n"
    "1000_a.jpg,A child in a pink dress , climbing stairs .\n"
    "1000_a.jpg,A girl, a dog, and a cat .\n"
    '1001_b.jpg,"A man, quoted ."\n'
    "1001_b.jpg,Two dogs play .\u2028\r\n"
)


@pytest.mark.parametrize("folder", ["images", "Images", "."])
def test_flickr8k_commas_and_image_folders(tmp_path: Path, folder: str) -> None:
    make_image(tmp_path / folder / "1000_a.jpg")
    make_image(tmp_path / folder / "1001_b.jpg")
    path = write(tmp_path / "captions.txt", FLICKR_CAPTIONS)
    assert detect_format(path) == "flickr8k"
    ps = load_pairs(path)
    assert ps.format == "flickr8k"
    assert ps.n_rows == 4
    a, b = (os.path.normpath(os.path.join(folder, n)) for n in ("1000_a.jpg", "1001_b.jpg"))
    assert [(os.path.relpath(p.image, tmp_path), p.caption) for p in ps.pairs] == [
        (a, "A child in a pink dress , climbing stairs ."),
        (a, "A girl, a dog, and a cat ."),
        (b, "A man, quoted ."),
        (b, "Two dogs play ."),
    ]


def test_image_root_comes_first(tmp_path: Path) -> None:
    make_image(tmp_path / "Images" / "1000_a.jpg", color="red")
    make_image(tmp_path / "Images" / "1001_b.jpg", color="red")
    make_image(tmp_path / "mine" / "1000_a.jpg", color="blue")
    make_image(tmp_path / "mine" / "1001_b.jpg", color="blue")
    path = write(tmp_path / "data" / "captions.txt", FLICKR_CAPTIONS)
    # Without image_root nothing is found beside data/captions.txt: a clear error.
    with pytest.raises(DataError, match="--image-root"):
        load_pairs(path)
    ps = load_pairs(path, image_root=str(tmp_path / "mine"))
    assert {os.path.relpath(i, tmp_path) for i in ps.images()} == {
        "mine/1000_a.jpg",
        "mine/1001_b.jpg",
    }
    with pytest.raises(DataError, match="not a folder"):
        load_pairs(path, image_root=str(tmp_path / "nope"))


def test_image_root_for_csv(imgs: Path) -> None:
    path = write(imgs / "meta" / "p.csv", "a.jpg,a red square\nb.png,a green square, large\n")
    ps = load_pairs(path, image_root=str(imgs / "img"))
    assert as_set(ps, imgs) == {
        ("img/a.jpg", "a red square"),
        ("img/b.png", "a green square, large"),
    }


# --- karpathy -----------------------------------------------------------------------------------


def karpathy_file(tmp_path: Path, with_filepath: bool = False) -> Path:
    splits = {"a.jpg": "train", "b.png": "restval", "c.jpg": "val", "d.jpg": "test"}
    images = []
    for i, (name, split) in enumerate(splits.items()):
        folder = "train2014" if with_filepath and split != "val" else "val2014"
        make_image(tmp_path / (folder if with_filepath else "") / name)
        entry = {
            "filename": name,
            "split": split,
            "imgid": i,
            "sentences": [{"raw": f"{name} one", "tokens": []}, {"raw": f"{name} two"}],
        }
        if with_filepath:
            entry["filepath"] = folder
        images.append(entry)
    name = "dataset_coco.json" if with_filepath else "dataset_flickr8k.json"
    return write(tmp_path / name, json.dumps({"images": images, "dataset": "x"}))


@pytest.mark.parametrize(
    ("split", "names"),
    [
        ("train", {"a.jpg", "b.png"}),  # restval is training data by Karpathy's convention
        ("restval", {"b.png"}),
        ("val", {"c.jpg"}),
        ("test", {"d.jpg"}),
        (None, {"a.jpg", "b.png", "c.jpg", "d.jpg"}),
    ],
)
def test_karpathy_split_filtering(tmp_path: Path, split: str | None, names: set[str]) -> None:
    path = karpathy_file(tmp_path)
    assert detect_format(path) == "karpathy"
    ps = load_pairs(path, split=split)
    assert ps.format == "karpathy"
    assert ps.n_rows == 2 * len(names)
    expected = {(n, f"{n} {k}") for n in names for k in ("one", "two")}
    assert as_set(ps, tmp_path) == expected


def test_karpathy_coco_filepath(tmp_path: Path) -> None:
    path = karpathy_file(tmp_path, with_filepath=True)
    ps = load_pairs(path, split="train")
    assert {os.path.relpath(i, tmp_path) for i in ps.images()} == {
        "train2014/a.jpg",
        "train2014/b.png",
    }


def test_karpathy_unknown_split_lists_the_splits(tmp_path: Path) -> None:
    path = karpathy_file(tmp_path)
    with pytest.raises(DataError, match="restval, test, train, val"):
        load_pairs(path, split="dev")


def test_karpathy_without_split_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="imagepairs.pairs"):
        load_pairs(karpathy_file(tmp_path))
    assert "no split chosen" in caplog.text


# --- coco ---------------------------------------------------------------------------------------


def coco_file(path: Path) -> Path:
    return write(
        path,
        json.dumps(
            {
                "info": {},
                "images": [
                    {"id": 7, "file_name": "COCO_train2014_000000000007.jpg"},
                    {"id": 9, "file_name": "COCO_train2014_000000000009.png"},
                ],
                "annotations": [
                    {"id": 1, "image_id": 9, "caption": "A green thing."},
                    {"id": 2, "image_id": 7, "caption": "A red thing."},
                    {"id": 3, "image_id": 9, "caption": "Green again."},
                ],
            }
        ),
    )


COCO_EXPECTED = {
    ("train2014/COCO_train2014_000000000007.jpg", "A red thing."),
    ("train2014/COCO_train2014_000000000009.png", "A green thing."),
    ("train2014/COCO_train2014_000000000009.png", "Green again."),
}


@pytest.mark.parametrize("ann_dir", [".", "annotations"])
def test_coco_guesses_image_folder(tmp_path: Path, ann_dir: str) -> None:
    make_image(tmp_path / "train2014" / "COCO_train2014_000000000007.jpg")
    make_image(tmp_path / "train2014" / "COCO_train2014_000000000009.png")
    path = coco_file(tmp_path / ann_dir / "captions_train2014.json")
    assert detect_format(path) == "coco"
    ps = load_pairs(path)
    assert ps.format == "coco"
    assert ps.n_rows == 3
    assert as_set(ps, tmp_path) == COCO_EXPECTED


def test_coco_image_root_and_unknown_image_id(tmp_path: Path) -> None:
    make_image(tmp_path / "pics" / "train2014" / "COCO_train2014_000000000007.jpg")
    make_image(tmp_path / "pics" / "train2014" / "COCO_train2014_000000000009.png")
    path = coco_file(tmp_path / "caps.json")
    content = json.loads(path.read_text())
    content["annotations"].append({"id": 4, "image_id": 404, "caption": "lost"})
    path.write_text(json.dumps(content))
    ps = load_pairs(path, image_root=str(tmp_path / "pics" / "train2014"), max_bad_fraction=0.3)
    assert as_set(ps, tmp_path / "pics") == COCO_EXPECTED
    assert ps.skipped == [
        ("caps.json:annotations[3]", "image_id 404 is not among the file's images")
    ]


# --- detection and option errors ----------------------------------------------------------------


def test_every_format_has_a_reader() -> None:
    assert (
        set(FORMATS)
        == set(FORMAT_READERS)
        == {
            "csv",
            "openclip-csv",
            "flickr8k",
            "karpathy",
            "coco",
        }
    )


@pytest.mark.parametrize(
    ("name", "text", "why", "lists_formats"),
    [
        ("x.json", '{"foo": 1}', "neither a Karpathy split file", True),
        ("x.txt", "just some words\nand more\n", "no line has a separator", True),
        ("x.json", "{not json", "not valid JSON", False),
        ("x.csv", "  \n", "is empty", False),
    ],
)
def test_undetectable(tmp_path: Path, name: str, text: str, why: str, lists_formats: bool) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(DataError, match=why) as e:
        load_pairs(path)
    assert str(path) in str(e.value)
    if lists_formats:
        assert all(f in str(e.value) for f in FORMATS)


def test_unknown_format_name_lists_the_formats(imgs: Path) -> None:
    path = write(imgs / "p.csv", "img/a.jpg,a\n")
    with pytest.raises(DataError, match="unknown data format 'tsv'") as e:
        load_pairs(path, format="tsv")
    assert all(f in str(e.value) for f in FORMATS)


def test_missing_data_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "captions.txt"
    with pytest.raises(DataError, match="data file not found") as e:
        load_pairs(missing)
    assert str(missing) in str(e.value)
    with pytest.raises(DataError, match="not found"):
        detect_format(missing)
    with pytest.raises(DataError, match="is a folder"):
        load_pairs(tmp_path)


def test_binary_data_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes("img.jpg,caption\n".encode("utf-16"))
    with pytest.raises(DataError, match="save it as UTF-8"):
        load_pairs(path)


def test_wrong_explicit_format(tmp_path: Path) -> None:
    coco = coco_file(tmp_path / "captions_val2014.json")
    with pytest.raises(DataError, match="use format coco"):
        load_pairs(coco, format="karpathy")
    with pytest.raises(DataError, match="no 'annotations' list"):
        load_pairs(karpathy_file(tmp_path), format="coco")


# --- prompt, limit, views -----------------------------------------------------------------------


def test_prompt_wraps_every_caption(imgs: Path) -> None:
    path = write(imgs / "p.csv", 'img/a.jpg,a red  square\nimg/c.jpg,"a tiny\nblue square"\n')
    ps = load_pairs(path, prompt="This is a photo of {}.")
    assert [p.caption for p in ps.pairs] == [
        "This is a photo of a red square.",
        "This is a photo of a tiny blue square.",
    ]
    with pytest.raises(DataError, match=r"has no \{\}"):
        load_pairs(path, prompt="This is a photo")


def test_limit_reads_only_the_first_rows(tmp_path: Path) -> None:
    ps = load_pairs(karpathy_file(tmp_path), split="train", limit=3)
    assert ps.n_rows == 3
    assert [p.caption for p in ps.pairs] == ["a.jpg one", "a.jpg two", "b.png one"]


def test_split_ignored_for_formats_without_splits(
    imgs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(imgs / "p.csv", "img/a.jpg,a\n")
    with caplog.at_level(logging.WARNING, logger="imagepairs.pairs"):
        assert len(load_pairs(path, split="train").pairs) == 1
    assert "split 'train' ignored" in caplog.text


def test_retrieval_view_groups_captions_by_image() -> None:
    pairs = [Pair("/x/b.jpg", "b1"), Pair("/x/a.jpg", "a1"), Pair("/x/b.jpg", "b2")]
    pairs += [Pair("/x/c.jpg", "c1"), Pair("/x/a.jpg", "a2")]
    ps = PairSet(pairs=pairs, source="s", format="csv", n_rows=5, skipped=[])
    images, captions, t2i = ps.retrieval_view()
    assert images == ["/x/b.jpg", "/x/a.jpg", "/x/c.jpg"] == ps.images()
    assert captions == ["b1", "a1", "b2", "c1", "a2"]
    assert t2i == [0, 1, 0, 2, 1]
    assert all(images[t2i[i]] == p.image and captions[i] == p.caption for i, p in enumerate(pairs))


def test_retrieval_view_from_flickr8k(tmp_path: Path) -> None:
    make_image(tmp_path / "images" / "1000_a.jpg")
    make_image(tmp_path / "images" / "1001_b.jpg")
    ps = load_pairs(write(tmp_path / "captions.txt", FLICKR_CAPTIONS))
    images, captions, t2i = ps.retrieval_view()
    assert [os.path.basename(i) for i in images] == ["1000_a.jpg", "1001_b.jpg"]
    assert t2i == [0, 0, 1, 1]
    assert captions[2] == "A man, quoted ."


def test_pair_dataset_with_open_clip(imgs: Path) -> None:
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    import finetune.models  # noqa: F401  (registers ViT-Tiny-8)

    ps = load_pairs(write(imgs / "p.csv", "img/a.jpg,a red square\nimg/b.png,green\n"))
    dataset = PairDataset(
        ps.pairs,
        image_transform_v2(PreprocessCfg(size=32), is_train=False),
        open_clip.get_tokenizer("ViT-Tiny-8"),
    )
    assert len(dataset) == 2
    image, tokens = dataset[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert tokens.shape == (32,) and tokens.dtype == torch.long
    batch_images, batch_tokens = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch_images.shape == (2, 3, 32, 32) and batch_tokens.shape == (2, 32)


# --- bad rows -----------------------------------------------------------------------------------


@pytest.fixture
def messy(imgs: Path) -> Path:
    """A csv where good rows sit between every kind of bad one."""
    good = imgs / "img" / "a.jpg"
    (imgs / "img" / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (imgs / "img" / "random.png").write_bytes(os.urandom(300))
    return write(
        imgs / "messy.csv",
        "file,text\n"
        "img/a.jpg,a red square\n"  # 2
        "img/missing.jpg,gone\n"  # 3
        "img/b.png,a green square, large\n"  # 4
        "img/truncated.jpg,half a file\n"  # 5
        "img/random.png,noise\n"  # 6
        "img/c.jpg,   \n"  # 7
        "https://example.com/x.jpg,remote\n"  # 8
        "img/c.jpg,a tiny blue square\n"  # 9
        "img/a.jpg,red again\n",  # 10
    )


def test_bad_rows_skipped_good_rows_all_kept(messy: Path) -> None:
    ps = load_pairs(messy, max_bad_fraction=0.6)
    assert ps.format == "csv" and ps.n_rows == 9
    assert as_set(ps, messy.parent) == EXPECTED_ABC | {("img/a.jpg", "red again")}
    assert len(ps.pairs) == 4
    where = [w for w, _ in ps.skipped]
    assert where == [
        "messy.csv:3 (img/missing.jpg)",
        "messy.csv:5 (img/truncated.jpg)",
        "messy.csv:6 (img/random.png)",
        "messy.csv:7 (img/c.jpg)",
        "messy.csv:8 (https://example.com/x.jpg)",
    ]
    reasons = dict(ps.skipped)
    assert reasons["messy.csv:3 (img/missing.jpg)"].startswith("image not found in ")
    assert "truncated" in reasons["messy.csv:5 (img/truncated.jpg)"].lower()
    assert "cannot decode image" in reasons["messy.csv:6 (img/random.png)"]
    assert reasons["messy.csv:7 (img/c.jpg)"] == "empty caption"
    assert reasons["messy.csv:8 (https://example.com/x.jpg)"] == "remote URLs are not fetched"


def test_bad_rows_are_logged(messy: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.data")
    with caplog.at_level(logging.WARNING, logger="test.data"):
        load_pairs(messy, max_bad_fraction=1.0, log=log)
    lines = [r.getMessage() for r in caplog.records if r.name == "test.data"]
    assert len(lines) == 6  # the first five bad rows, then the summary
    assert lines[0].startswith("skipped messy.csv:3 (img/missing.jpg): image not found")
    assert lines[-1].startswith("skipped 5 of 9 rows (55.6%)")


def test_too_many_bad_rows_is_an_actionable_error(messy: Path) -> None:
    with pytest.raises(DataError) as e:
        load_pairs(messy)
    msg = str(e.value)
    assert "5 of 9 rows (55.6%)" in msg and str(messy) in msg
    assert "messy.csv:3 (img/missing.jpg): image not found" in msg
    assert "messy.csv:8 (https://example.com/x.jpg): remote URLs are not fetched" in msg
    assert "--max-bad-fraction" in msg and "Fix or remove" in msg


def test_within_max_bad_fraction_passes(imgs: Path) -> None:
    rows = "".join(f"img/a.jpg,red {i}\n" for i in range(19)) + "img/gone.jpg,missing\n"
    path = write(imgs / "p.csv", rows)
    ps = load_pairs(path)  # 1 of 20 is exactly the default 5 %
    assert len(ps.pairs) == 19 and len(ps.skipped) == 1
    with pytest.raises(DataError, match="1 of 20 rows"):
        load_pairs(path, max_bad_fraction=0.04)


def test_nothing_usable_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "captions.txt", "image,caption\nx.jpg,one\ny.jpg,two\n")
    with pytest.raises(DataError, match="no usable image-caption pairs") as e:
        load_pairs(path, max_bad_fraction=1.0)
    assert "captions.txt:2 (x.jpg): image not found" in str(e.value)


def test_flickr8k_line_without_comma_is_a_bad_row(tmp_path: Path) -> None:
    make_image(tmp_path / "images" / "1000_a.jpg")
    path = write(tmp_path / "captions.txt", "image,caption\n1000_a.jpg,ok\n1000_a.jpg\n")
    ps = load_pairs(path, max_bad_fraction=0.5)
    assert [p.caption for p in ps.pairs] == ["ok"]
    assert ps.skipped == [
        ("captions.txt:3 (1000_a.jpg)", "no comma between the image name and the caption")
    ]


def test_karpathy_bad_image_keeps_other_images(tmp_path: Path) -> None:
    path = karpathy_file(tmp_path)
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(40))
    ps = load_pairs(path, split="train", max_bad_fraction=0.5)
    assert as_set(ps, tmp_path) == {("a.jpg", "a.jpg one"), ("a.jpg", "a.jpg two")}
    assert [w for w, _ in ps.skipped] == [
        "dataset_flickr8k.json:images[1].sentences[0] (b.png)",
        "dataset_flickr8k.json:images[1].sentences[1] (b.png)",
    ]


def test_check_images_false_skips_decoding_not_existence(messy: Path) -> None:
    ps = load_pairs(messy, check_images=False, max_bad_fraction=1.0)
    kept = as_set(ps, messy.parent)
    assert ("img/truncated.jpg", "half a file") in kept and ("img/random.png", "noise") in kept
    assert [w for w, _ in ps.skipped] == [
        "messy.csv:3 (img/missing.jpg)",
        "messy.csv:7 (img/c.jpg)",
        "messy.csv:8 (https://example.com/x.jpg)",
    ]


def test_each_image_decoded_once(imgs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = data.load_image
    monkeypatch.setattr(data, "load_image", lambda p: calls.append(p) or real(p))
    text = "".join(f"img/{n},caption {i}\n" for i in range(5) for n in ("a.jpg", "b.png"))
    ps = load_pairs(write(imgs / "p.csv", text))
    assert len(ps.pairs) == 10
    assert sorted(calls) == sorted(ps.images()) and len(calls) == 2


def test_progress_bar_for_many_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for i in range(data.PROGRESS_MIN_IMAGES + 1):
        Image.new("L", (2, 2)).save(tmp_path / f"{i}.png")
    rows = "".join(f"{i}.png,image {i}\n" for i in range(data.PROGRESS_MIN_IMAGES + 1))
    load_pairs(write(tmp_path / "p.csv", rows))
    assert "checking images" in capsys.readouterr().err
    load_pairs(write(tmp_path / "q.csv", "0.png,few\n"))
    assert "checking images" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_bad_fraction": 1.5}, "between 0 and 1"), ({"limit": 0}, "positive")],
)
def test_option_errors(imgs: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_pairs(write(imgs / "p.csv", "img/a.jpg,a\n"), **kwargs)
