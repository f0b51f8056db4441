"""`python -m client` against a running Flow (flow.yml, the committed base model's towers).

The commands run in-process (`client.cli.main`) for speed, against both the gRPC and the HTTP
address of the same Flow; one run goes through `python -m client` itself.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from PIL import Image

from client.api import ClientError, IndexItem, SearchClient, images_to_index
from client.cli import main
from demo import REPO
from demo.served_flow import free_port

pytestmark = pytest.mark.filterwarnings("ignore")

COLOURS = [(220, 30, 30), (30, 170, 30), (30, 60, 220), (240, 220, 20), (10, 10, 10)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """5 images in nested folders, a broken image, a text file (not an image: skipped)."""
    root = tmp_path_factory.mktemp("photos")
    (root / "a" / "b").mkdir(parents=True)
    for i, rgb in enumerate(COLOURS):
        folder = root / ("a/b" if i % 2 else "a")
        Image.new("RGB", (40 + 8 * i, 48), rgb).save(folder / f"img{i}.png")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def flow(start_flow):
    return start_flow("client-flow")


@pytest.fixture(params=["grpc", "http"])
def host(request, flow):
    return flow.grpc if request.param == "grpc" else flow.http


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def count(capsys, host: str) -> int:
    code, out, _ = cli(capsys, "--host", host, "status")
    assert code == 0
    return json.loads(out)["count"]


@pytest.mark.slow
def test_index_a_folder_twice_is_idempotent(flow, photos, capsys):
    code, out, err = cli(capsys, "--host", flow.grpc, "index", str(photos), "--batch-size", "2")
    assert code == 1  # the broken image failed; everything else went in
    assert f"indexed 5 of 6 images from {photos}" in out
    assert "1 failed" in err and "broken.jpg: image blob: cannot decode image" in err
    assert count(capsys, flow.grpc) == 5
    # again, over HTTP this time: the same ids (paths relative to the folder), so no copies
    code, out, _ = cli(capsys, "--host", flow.http, "index", str(photos), "--no-progress")
    assert code == 1 and "indexed 5 of 6 images" in out
    assert count(capsys, flow.http) == 5


@pytest.mark.slow
def test_search_prints_ranked_hits(host, photos, capsys):
    code, out, _ = cli(capsys, "--host", host, "search", "a red square", "--limit", "3")
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["1.", "2.", "3."]
    scores = [float(line.split()[1]) for line in lines]
    assert scores == sorted(scores, reverse=True)
    ids = {"a/img0.png", "a/b/img1.png", "a/img2.png", "a/b/img3.png", "a/img4.png"}
    assert {line.split()[2] for line in lines} <= ids
    assert str(photos) in lines[0]  # the uri: where the image is
    # an image query finds that very image first
    code, out, _ = cli(capsys, "--host", host, "search", "--image", str(photos / "a/b/img3.png"))
    first = out.splitlines()[0].split()
    assert (
        code == 0 and first[2] == "a/b/img3.png" and float(first[1]) == pytest.approx(1, abs=1e-3)
    )


@pytest.mark.slow
def test_index_a_data_file_with_captions(flow, tmp_path, capsys):
    (tmp_path / "pics").mkdir()
    Image.new("RGB", (32, 32), (200, 100, 0)).save(tmp_path / "pics" / "x.png")
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [("caption", "image"), ("an orange tile", "pics/x.png"), ("tile, again", "pics/x.png")]
        )
    code, out, _ = cli(capsys, "--host", flow.grpc, "index", str(tmp_path / "pairs.csv"))
    assert code == 0 and "indexed 1 of 1 images" in out
    code, out, _ = cli(
        capsys, "--host", flow.http, "search", "--image", str(tmp_path / "pics/x.png")
    )
    assert out.splitlines()[0].split()[2:] == [
        "pics/x.png",
        str(tmp_path / "pics/x.png"),
        "an",
        "orange",
        "tile",
    ]
    assert cli(capsys, "--host", flow.grpc, "delete", "pics/x.png")[0] == 0


@pytest.mark.slow
def test_delete_and_status(host, flow, photos, capsys):
    cli(capsys, "--host", flow.grpc, "index", str(photos), "--no-progress")  # (again) present
    before = count(capsys, host)
    code, out, err = cli(capsys, "--host", host, "delete", "a/img0.png", "no/such/id")
    assert code == 1 and "deleted 1 of 2" in out and "no/such/id: unknown id" in err
    assert count(capsys, host) == before - 1
    code, out, _ = cli(capsys, "--host", host, "status")
    info = json.loads(out)
    assert code == 0 and info["dim"] == 64 and info["space"] == "cosine"


def test_bad_paths_hosts_and_queries_are_clear_errors(tmp_path, capsys):
    code, _, err = cli(capsys, "index", str(tmp_path / "nope"))
    assert code == 2 and "no such file or folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "index", str(tmp_path / "empty"))
    assert code == 2 and "no images found" in err
    (tmp_path / "bad.csv").write_text("just one column\n")
    code, _, err = cli(capsys, "index", str(tmp_path / "bad.csv"))
    assert code == 2 and err.startswith("error: ")
    code, _, err = cli(capsys, "--host", f"grpc://127.0.0.1:{free_port()}", "status")
    assert code == 2 and "cannot talk to the search service" in err
    code, _, err = cli(capsys, "--host", f"http://127.0.0.1:{free_port()}", "search", "x")
    assert code == 2 and "is the Flow running" in err
    code, _, err = cli(capsys, "--host", "ftp://somewhere", "status")
    assert code == 2 and "host must look like grpc://" in err
    with pytest.raises(SystemExit) as exit_:
        main(["search"])  # neither a text nor --image
    assert exit_.value.code == 2


@pytest.mark.slow
def test_python_dash_m_client(flow):
    out = subprocess.run(
        [sys.executable, "-m", "client", "--host", flow.http, "status"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "count" in json.loads(out.stdout)


@pytest.mark.slow
def test_health_names_every_executor_and_is_an_exit_status(host, capsys):
    code, out, err = cli(capsys, "--host", host, "health")
    assert code == 0, err
    assert out.split() == ["up", "image_encoder/rep-0", "up", "text_encoder/rep-0"] + [
        "up",
        "indexer/rep-0",
    ]
    code, _, err = cli(capsys, "--host", f"grpc://127.0.0.1:{free_port()}", "health")
    assert code == 2 and "is the Flow running" in err


@pytest.mark.slow
def test_every_port_of_the_flow_listens_on_127_0_0_1_only(flow):
    listening = flow.listening()
    # the gateway's two ports and one per executor at least
    assert len(listening) >= 5, listening
    assert {address for address, _ in listening} == {"127.0.0.1"}, listening


@pytest.mark.slow
def test_thumbnails_and_more_like_this_through_the_flow(host, photos):
    with SearchClient(host) as client:
        client.index([i for i in images_to_index(photos) if i.path.endswith(".png")])
        hits = client.search(text="a red square", limit=3, thumbnails=True)
        assert len(hits) == 3 and all(
            h.thumbnail.startswith("data:image/jpeg;base64,") for h in hits
        )
        assert all(h.thumbnail is None for h in client.search(text="a red square", limit=3))
        like = client.search(like="a/img0.png", limit=2)
        assert len(like) == 2 and "a/img0.png" not in [h.id for h in like]
        with pytest.raises(ClientError, match="nope.png: unknown id"):
            client.search(like="nope.png")


@pytest.mark.slow
def test_a_product_csv_indexes_its_extra_columns_as_tags_to_filter_on(flow, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rows = [
        ("shirt", "Men", "red", "19.5"),
        ("dress", "Women", "red", "49"),
        ("coat", "Men", "navy", "120"),
    ]
    with open(tmp_path / "products.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "gender", "colour", "price"])
        for i, (name, gender, colour, price) in enumerate(rows):
            Image.new("RGB", (32, 32), COLOURS[i]).save(images / f"{name}.png")
            writer.writerow(
                [f"images/{name}.png", f"a {colour} {name}, for {gender}", gender, colour, price]
            )
    code, out, _ = cli(capsys, "--host", flow.grpc, "index", str(tmp_path / "products.csv"))
    assert code == 0 and "indexed 3 of 3" in out
    for host in (flow.grpc, flow.http):
        with SearchClient(host) as client:
            hits = client.search(text="a red shirt", filter={"colour": "red", "price": {"$lt": 50}})
            assert sorted(h.id for h in hits) == ["images/dress.png", "images/shirt.png"]
            assert {h.text for h in hits} == {"a red shirt, for Men", "a red dress, for Women"}
            [coat] = client.search(text="a coat", filter={"gender": "Men", "price": {"$gt": 100}})
            assert coat.tags == {"gender": "Men", "colour": "navy", "price": 120}
            with pytest.raises(ClientError, match=r"filter.price: \$lt needs a number"):
                client.search(text="a coat", filter={"price": {"$lt": "cheap"}})
            tags = client.status()["tags"]
            assert set(tags) >= {"gender", "colour", "price"} and tags["price"]["max"] >= 120


@pytest.mark.slow
def test_every_document_of_a_large_job_gets_its_own_outcome(host, flow, tmp_path):
    # a job larger than one request: the client splits it, and each reply covers its batch
    Image.new("RGB", (24, 24), (90, 10, 200)).save(tmp_path / "one.png")
    items = [IndexItem(f"bulk/{i}", str(tmp_path / "one.png")) for i in range(250)]
    with SearchClient(host) as client:
        indexed = client.index(items, batch_size=250)
        assert [o.id for o in indexed] == [i.id for i in items]
        assert all(o.error is None for o in indexed)
        deleted = client.delete([i.id for i in items] + ["bulk/none"])
        assert len(deleted) == 251 and all(o.error is None for o in deleted[:250])
        assert deleted[250].error == "unknown id"
        # one request over the limit: HTTP refuses it with 413, gRPC answers every document
        # with the refusal; both name the limit
        too_many = [{"id": f"x{i}"} for i in range(513)]
        if client.protocol == "http":
            with pytest.raises(ClientError, match=r"limit of 512 \(MAX_DOCS_PER_REQUEST\)"):
                client.post("/get", too_many)
        else:
            errors = {a["error"] for a in client.post("/get", too_many)}
            assert len(errors) == 1 and "(MAX_DOCS_PER_REQUEST)" in errors.pop()
