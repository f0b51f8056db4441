"""The CLIP encoder executors, called in-process: embeddings, tower isolation, every bad input.

Each bad document is sent beside good ones: it must get a clear `error` while the good ones in
the same request are still embedded. Uses the committed base model (a ViT-Tiny-8 run folder).
"""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from docarray import DocList
from helpers import png
from PIL import Image

from client.wire import HEALTH, SEARCH_IMAGE, SEARCH_TEXT
from client.wire_docs import SearchDoc
from demo import BASE_MODEL_DIR
from executors.clip_encoders import CLIPImageEncoder, CLIPTextEncoder
from executors.flow_env import apply_flow_env_defaults, is_unset, setting
from finetune.artifact import read_tower_state
from finetune.models import resolve_device
from finetune.towers import load_tower
from imagepairs.batching import batched
from imagepairs.images import ImageError
from search.encoders import EMPTY_TEXT_ERROR, clip_text, resolve_dtype, torch_threads
from search.image_policy import ImagePolicy, path_list

RUN = BASE_MODEL_DIR


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims a huge image (its pixel data is never reached)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def run(encoder, *docs: SearchDoc) -> DocList[SearchDoc]:
    return encoder.encode(DocList[SearchDoc](list(docs)))


def search(encoder, *docs: SearchDoc) -> DocList[SearchDoc]:
    """The documents as queries (`/search`): cut to the context length, never refused for it."""
    return encoder.encode_queries(DocList[SearchDoc](list(docs)))


@pytest.fixture(scope="module")
def text_encoder():
    return CLIPTextEncoder(tower=str(RUN), minibatch_size=4, num_threads=1)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """An allowed root with an image, and outside it a secret image and escape routes."""
    base = tmp_path_factory.mktemp("images")
    root, outside = base / "root", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "ok.png").write_bytes(png((10, 200, 10)))
    (outside / "secret.png").write_bytes(png((1, 2, 3)))
    os.symlink(outside / "secret.png", root / "link.png")
    os.symlink(root / "sub" / "ok.png", root / "inner_link.png")
    os.mkfifo(root / "fifo.png")
    return root, outside


@pytest.fixture(scope="module")
def image_encoder(roots):
    return CLIPImageEncoder(
        tower=str(RUN), allowed_roots=[str(roots[0])], minibatch_size=3, num_threads=1
    )


# --- embeddings --------------------------------------------------------------------------


def test_text_embeddings_equal_the_towers_own(text_encoder):
    texts = ["a red square", "a photo of a dog", "x", "two blue circles on grey"]
    out = run(text_encoder, *(SearchDoc(text=t) for t in texts))
    expected = load_tower(RUN, "clip-text").encode(texts)
    got = np.stack([d.embedding for d in out])
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert all(d.error is None and d.id for d in out)


def test_image_embeddings_equal_the_towers_own_for_every_source(image_encoder, roots):
    root, _ = roots
    pixels = np.asarray(Image.open(io.BytesIO(png((40, 90, 200)))).convert("RGB"))
    data_uri = "data:image/png;base64," + base64.b64encode(png()).decode()
    docs = [
        SearchDoc(blob=png(), text="caption kept for display", uri="shown.png"),
        SearchDoc(tensor=pixels),
        SearchDoc(uri=str(root / "sub" / "ok.png")),
        SearchDoc(uri="sub/ok.png"),  # relative to the allowed root
        SearchDoc(uri=(root / "sub" / "ok.png").as_uri()),  # file:// URI
        SearchDoc(uri=str(root / "inner_link.png")),  # a symlink that stays inside
        SearchDoc(uri=data_uri),
        SearchDoc(blob=data_uri.encode()),  # how HTTP (JSON) clients send bytes
    ]
    out = run(image_encoder, *docs)
    assert [d.error for d in out] == [None] * len(docs)
    tower = load_tower(RUN, "clip-vision")
    ok = Image.open(root / "sub" / "ok.png").convert("RGB")
    red = Image.open(io.BytesIO(png())).convert("RGB")
    expected = tower.encode([red, Image.fromarray(pixels), ok, ok, ok, ok, red, red])
    np.testing.assert_allclose(np.stack([d.embedding for d in out]), expected, atol=1e-5)
    # the pixels are dropped once embedded, the uri and caption travel on
    assert all(d.blob is None and d.tensor is None for d in out)
    assert out[0].uri == "shown.png" and out[0].text == "caption kept for display"


def test_each_encoder_loads_only_its_tower(text_encoder, image_encoder):
    text, vision = text_encoder.encoder.tower.module, image_encoder.encoder.tower.module
    # exactly the weights of the tower's own file, nothing of the other tower
    assert text.state_dict().keys() == read_tower_state(RUN / "clip-text").keys()
    assert vision.state_dict().keys() == read_tower_state(RUN / "clip-vision").keys()
    assert not any(isinstance(m, torch.nn.Conv2d) for m in text.modules())  # no patch embedding
    assert not any(isinstance(m, torch.nn.Embedding) for m in vision.modules())  # no token table
    assert not hasattr(text, "visual")


def test_text_encoder_leaves_image_docs_and_others_alone(text_encoder):
    image_doc = SearchDoc(blob=png(), text="a caption")
    out = run(text_encoder, image_doc, SearchDoc(), SearchDoc(text="hello"))
    assert out[0].embedding is None and out[0].error is None and out[0].blob is not None
    assert out[1].embedding is None and out[1].error is None  # the indexer says what is missing
    assert out[2].embedding is not None


def test_encoders_leave_documents_that_already_have_an_embedding(text_encoder, image_encoder):
    # the image encoder runs first in the Flow: an image with a caption and no uri must keep
    # its image embedding when it reaches the text encoder
    sent = SearchDoc(blob=png(), text="a caption")
    [after_image] = run(image_encoder, sent)
    image_vector = after_image.embedding.copy()
    assert after_image.blob is None and after_image.text == "a caption"
    [after_text] = run(text_encoder, after_image)
    np.testing.assert_array_equal(after_text.embedding, image_vector)
    given = np.ones(4, dtype=np.float32)  # a query with its own vector passes both untouched
    [out] = run(text_encoder, *run(image_encoder, SearchDoc(text="t", embedding=given)))
    np.testing.assert_array_equal(out.embedding, given)


# --- bad inputs, each beside a good document --------------------------------------------


@pytest.mark.parametrize(
    "bad, expected",
    [
        (SearchDoc(blob=b"definitely not an image"), "image blob: cannot decode image"),
        (SearchDoc(blob=b""), "image blob: cannot decode image"),
        (SearchDoc(blob=bomb_png()), "decompression bomb"),
        (SearchDoc(uri="/etc/passwd"), "outside the allowed image roots"),
        (SearchDoc(uri="file:///etc/passwd"), "outside the allowed image roots"),
        (SearchDoc(uri="../outside/secret.png"), "outside the allowed image roots"),
        (SearchDoc(uri="sub/../../outside/secret.png"), "outside the allowed image roots"),
        (SearchDoc(uri="link.png"), "outside the allowed image roots"),  # symlink escape
        (SearchDoc(uri="sub/missing.png"), "file not found"),
        (SearchDoc(uri="fifo.png"), "not a regular file"),
        (SearchDoc(uri="https://example.com/cat.jpg"), "remote image URLs are refused"),
        (SearchDoc(uri="ftp://example.com/cat.jpg"), "unsupported URI scheme"),
        (SearchDoc(uri="data:image/png;base64,@@@"), "malformed data URI"),
        (SearchDoc(tensor=np.zeros((8, 8, 3), dtype=np.float32)), "uint8"),
        (SearchDoc(tensor=np.zeros((8, 8, 2), dtype=np.uint8)), "HxWxC"),
        (SearchDoc(blob=png(size=(1, 20_000))), "extreme aspect ratio"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_image_docs_get_an_error_and_good_ones_go_through(image_encoder, bad, expected):
    root_doc = SearchDoc(uri="sub/ok.png")
    out = run(image_encoder, SearchDoc(blob=png()), bad.model_copy(), root_doc)
    assert out[0].error is None and out[0].embedding is not None
    assert out[2].error is None and out[2].embedding is not None
    assert out[1].embedding is None
    assert expected in out[1].error, out[1].error


def test_image_size_limits(roots):
    encoder = CLIPImageEncoder(
        tower=str(RUN),
        allowed_roots=str(roots[0]),
        max_pixels=40 * 40,
        max_bytes=2000,
        num_threads=1,
    )
    big_pixels = SearchDoc(blob=png(size=(41, 40)))
    big_file = SearchDoc(uri="big.png")
    (roots[0] / "big.png").write_bytes(png(size=(39, 39)) + b"\0" * 3000)
    out = run(encoder, big_pixels, SearchDoc(blob=png(size=(40, 40))), big_file)
    assert "more than the limit of 1600" in out[0].error
    assert out[1].error is None and out[1].embedding is not None
    assert "more than max_bytes=2000" in out[2].error


def test_local_files_are_refused_when_no_roots_are_set():
    encoder = CLIPImageEncoder(tower=str(RUN), num_threads=1)
    out = run(encoder, SearchDoc(uri="/etc/hostname"), SearchDoc(blob=png()))
    assert "no allowed_roots are set" in out[0].error and "IMAGE_ROOTS" in out[0].error
    assert out[1].embedding is not None


def test_empty_queries_are_errors_and_good_ones_go_through(text_encoder):
    out = run(text_encoder, SearchDoc(text=""), SearchDoc(text="a dog"), SearchDoc(text=" \n\t"))
    assert out[0].error == EMPTY_TEXT_ERROR and out[2].error == EMPTY_TEXT_ERROR
    assert out[0].embedding is None and out[1].embedding is not None


def test_over_long_query_is_truncated_and_still_embedded(text_encoder):
    context = text_encoder.encoder.tower.context_length
    long = " ".join(f"word{i}" for i in range(20 * context))
    tower = text_encoder.encoder.tower
    assert len(tower.tokenizer([long])[0]) == context  # the tokenizer truncates
    out = search(text_encoder, SearchDoc(text=long), SearchDoc(text=long + " and much more"))
    assert out[0].error is None and out[0].embedding is not None
    full = text_encoder.encoder.tower.encode([long])[0]  # tokenised whole, without our pre-cut
    np.testing.assert_allclose(out[0].embedding, full, atol=1e-5)
    np.testing.assert_allclose(out[0].embedding, out[1].embedding, atol=1e-6)
    huge = "x" * 5_000_000 + " " * 1_000_000 + "y"  # bounded work, not minutes of BPE
    assert search(text_encoder, SearchDoc(text=huge))[0].embedding is not None
    # to be stored (/index), a text that long is refused before any work (search.limits)
    assert "MAX_TEXT_CHARS" in run(text_encoder, SearchDoc(text=huge))[0].error


def test_docs_with_an_error_pass_through_untouched(text_encoder, image_encoder):
    pre = [SearchDoc(text="a cat", error="rejected upstream"), SearchDoc(blob=b"x", error="e")]
    out = run(image_encoder, *run(text_encoder, *pre))
    assert [d.error for d in out] == ["rejected upstream", "e"]
    assert out[0].embedding is None and out[1].embedding is None and out[1].blob == b"x"


def test_each_encoder_binds_only_the_endpoints_on_its_path(text_encoder, image_encoder):
    # jina's gateway skips an executor that does not bind the endpoint: /delete and /status
    # pass no encoder, text search only the text encoder; /health passes every executor
    def bound(encoder):
        return set(encoder.requests) - {"_jina_dry_run_"}  # jina's own health check

    assert bound(image_encoder) == {"/index", "/update", SEARCH_IMAGE, HEALTH}
    assert bound(text_encoder) == {"/index", "/update", SEARCH_TEXT, SEARCH_IMAGE, HEALTH}
    # the text encoder, second in the Flow, passes image queries through as they are
    docs = DocList[SearchDoc]([SearchDoc(id="q", blob=png()), SearchDoc(text="t")])
    passed = text_encoder.pass_through(docs)
    assert passed[0].blob is not None and passed[1].embedding is None


def test_ids_are_assigned_to_new_documents_only(text_encoder):
    no_id = SearchDoc(text="q")
    no_id.id = None  # as the HTTP gateway delivers JSON documents without an id
    assert run(text_encoder, no_id)[0].id
    update = SearchDoc(text="new caption")
    update.id = None
    assert text_encoder.encode_update(DocList[SearchDoc]([update]))[0].id is None


def test_a_missing_tower_folder_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here
    with pytest.raises(FileNotFoundError, match="TEXT_TOWER in flow.yml"):
        CLIPTextEncoder(tower="runs/no-such-run/clip-text")
    # an unset placeholder falls back to the default, runs/demo/clip-vision
    with pytest.raises(FileNotFoundError, match="'runs/demo/clip-vision' not found"):
        CLIPImageEncoder(tower="$VISION_TOWER")


# --- helpers ------------------------------------------------------------------------------


def test_settings_from_the_flow_yaml():
    assert setting("$TEXT_TOWER", "d") == "d" and setting("${{ ENV.X }}", 1) == 1
    assert setting(None, "d") == "d" and setting("", "d") == "d" and setting("a", "d") == "a"
    assert not is_unset("$5 bill") and not is_unset(0)
    assert path_list("/a:/b,/c") == ["/a", "/b", "/c"] and path_list(["/a"]) == ["/a"]
    assert path_list(setting("$IMAGE_ROOTS", None)) == [] and path_list(None) == []
    env = {"GRPC_PORT": "1"}
    apply_flow_env_defaults(env)
    assert env["GRPC_PORT"] == "1" and env["HTTP_PORT"] == "51001" and env["IMAGE_ROOTS"] == ""


def test_device_dtype_threads_minibatches():
    assert resolve_device("cpu").type == "cpu" and resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_dtype(torch.device("cpu")) == torch.float32
    assert resolve_dtype(torch.device("cuda")) == torch.float16
    assert resolve_dtype(torch.device("cpu"), "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError):
        resolve_dtype(torch.device("cpu"), "int8")
    assert torch_threads(2, cpu_count=16) == 8 and torch_threads(4, cpu_count=2) == 1
    assert torch_threads(1, cpu_count=3) == 3
    assert list(batched(iter([1, 2, 3, 4, 5]), 2)) == [[1, 2], [3, 4], [5]]


def test_clip_text_keeps_the_tokens_the_model_sees():
    assert clip_text("  a   red\n\tsquare ", 77) == "a red square"
    assert len(clip_text("w " * 10_000, 8).split()) == 32


def test_image_policy_resolves_real_paths(roots):
    root, _ = roots
    policy = ImagePolicy.create(allowed_roots=[str(root)])
    assert policy.resolve_local("sub/ok.png") == str((root / "sub" / "ok.png").resolve())
    with pytest.raises(ImageError, match="outside"):
        policy.resolve_local(str(root) + "/../outside/secret.png")
