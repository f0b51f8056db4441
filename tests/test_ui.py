"""The search page (client/ui.py, client/static/) in a real browser: headless Debian chromium
driven by selenium, the app served by uvicorn on a free 127.0.0.1 port.

The page's own logic (filter controls built from the index's tag summaries, the filter they
send, empty-index and no-result messages, an unreachable Flow) runs against a stand-in client;
the searches run against a real Flow (flow.yml on the committed base model) holding the 16
generated shapes (conftest.py's `shapes`), indexed with tags. The base model was never trained
on the shapes' captions, so each caption is a held-out query for it.
"""

from __future__ import annotations

import shutil
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import captions

from client.api import Hit, SearchClient
from client.cli import build_parser
from client.ui import MAX_UPLOAD_BYTES, create_app
from demo import REPO
from demo.served_flow import free_port

pytestmark = pytest.mark.filterwarnings("ignore")

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
INSTALL = "no chromium/chromedriver for the browser tests: apt-get install chromium chromium-driver"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1200,1000",
]
QUERY_TIMEOUT_S = 60  # one query on 2 shared cores, with room for a busy machine
SCREENSHOT = REPO / "docs" / "search-page.png"


# --- servers and browser ----------------------------------------------------------------


@contextmanager
def served_app(app: Any, start_timeout_s: float = 30) -> Iterator[str]:
    """`app` on uvicorn in a background thread; yields its base URL, stops it on exit."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the page's server did not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(INSTALL)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def open_page(driver, url: str) -> None:
    driver.get(url)
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))


def wait(driver, condition, timeout: float = QUERY_TIMEOUT_S) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(condition)


def seq(driver) -> int:
    return int(driver.find_element("id", "grid").get_attribute("data-seq"))


def query(driver, action) -> None:
    """Do `action` (which starts one query) and wait until the page has shown its outcome."""
    before = seq(driver)
    action()
    wait(driver, lambda d: seq(d) > before)


def text_search(driver, text: str) -> None:
    box = driver.find_element("id", "q")
    box.clear()
    box.send_keys(text)
    query(driver, lambda: driver.find_element("id", "search-button").click())


def set_json_filter(driver, value: str) -> None:
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("document.querySelector('details').open = true")
    box = driver.find_element("id", "filter-json")
    # set without typing: each keystroke is no query, Enter is exactly one
    driver.execute_script("arguments[0].value = arguments[1]", box, value)
    query(driver, lambda: box.send_keys(Keys.ENTER))


def grid_ids(driver) -> list[str]:
    return [li.get_attribute("data-id") for li in driver.find_elements("css selector", "#grid li")]


def message(driver) -> tuple[str, str]:
    """(class, text) of the message area; text "" when hidden."""
    el = driver.find_element("id", "message")
    return el.get_attribute("class"), el.text if el.is_displayed() else ""


# --- the page's own logic, against a stand-in client -------------------------------------


class StandInClient:
    """What the app uses of SearchClient: status() and search(); records each search."""

    host = "stand-in"

    def __init__(self, count: int, tags: dict | None, hits: list[Hit], missing_shards: int = 0):
        self.count, self.tags, self.hits, self.searches = count, tags, hits, []
        self.missing_shards = missing_shards

    def status(self) -> dict:
        info = {"count": self.count, **({"tags": self.tags} if self.tags is not None else {})}
        if self.missing_shards:  # as MatchMerger answers: the answering shards, and the rest
            info.update(
                shards=[{"shard_id": 0, "count": self.count}], missing_shards=self.missing_shards
            )
        return info

    def search(self, **kwargs: Any) -> list[Hit]:
        self.searches.append(kwargs)
        return self.hits


SUMMARIES = {
    "colour": {"values": ["red", "blue"]},
    "price": {"min": 5, "max": 155},
    "in_stock": {"values": [True, False]},
}


def test_ui_subcommand_binds_loopback_on_51002_or_ui_port(monkeypatch):
    args = build_parser().parse_args(["ui"])
    assert (args.ui_host, args.ui_port) == ("127.0.0.1", 51002)
    monkeypatch.setenv("UI_PORT", "52345")
    args = build_parser().parse_args(["--host", "http://127.0.0.1:1", "ui"])
    assert (args.ui_port, args.host) == (52345, "http://127.0.0.1:1")
    assert build_parser().parse_args(["ui", "--ui-port", "7"]).ui_port == 7


def test_filter_controls_come_from_the_tag_summaries(browser):
    hits = [Hit("a.png", 0.5, text="a thing", tags={"colour": "red"}, thumbnail=None)]
    client = StandInClient(3, SUMMARIES, hits)
    with served_app(create_app(lambda: client)) as url:
        open_page(browser, url)
        assert "3 images indexed" in browser.find_element("id", "count").text
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import Select

        colour = Select(browser.find_element("id", "tag-colour"))
        assert [o.text for o in colour.options] == ["any", "red", "blue"]
        assert browser.find_element("css selector", "label[for=tag-colour]").text == "colour"
        assert browser.find_element("id", "tag-price-min").get_attribute("placeholder") == "5"
        text_search(browser, "anything")
        assert client.searches[-1]["filter"] is None
        assert client.searches[-1]["text"] == "anything" and client.searches[-1]["thumbnails"]
        # a change of filter runs the last query again, narrowed
        query(browser, lambda: colour.select_by_visible_text("blue"))
        assert client.searches[-1]["filter"] == {"colour": "blue"}
        query(
            browser, lambda: Select(browser.find_element("id", "tag-in_stock")).select_by_index(1)
        )
        price_max = browser.find_element("id", "tag-price-max")
        query(browser, lambda: price_max.send_keys("50", Keys.TAB))  # change fires on leaving
        assert client.searches[-1]["filter"] == {
            "colour": "blue",
            "in_stock": True,  # typed as in the summary, not the select's string
            "price": {"$lte": 50},
        }
        # a result without an image shows a placeholder, and its caption, id and score
        card = browser.find_element("css selector", "#grid li")
        assert card.find_element("class name", "noimage").text == "no image"
        assert "a thing" in card.text and "a.png" in card.text and "0.500" in card.text
        query(browser, lambda: browser.find_element("id", "clear-filters").click())
        assert client.searches[-1]["filter"] is None


def test_empty_index_no_results_and_no_tag_summaries(browser):
    client = StandInClient(0, None, [])
    with served_app(create_app(lambda: client)) as url:
        open_page(browser, url)
        assert message(browser)[1] == "nothing indexed yet: python -m client index FOLDER"
        assert browser.find_elements("css selector", "#filter-controls *") == []
        text_search(browser, "a red dress")
        assert message(browser)[1] == "No results."
        assert grid_ids(browser) == []


def test_a_missing_index_shard_is_a_visible_warning(browser):
    client = StandInClient(3, SUMMARIES, [], missing_shards=1)
    with served_app(create_app(lambda: client)) as url:
        open_page(browser, url)
        kind, text = message(browser)
        assert "error" in kind and text.startswith("1 of 2 index shards are not answering"), text
        assert "python -m client health" in text


def test_an_unreachable_flow_is_a_503_and_a_visible_message(browser):
    dead = f"grpc://127.0.0.1:{free_port()}"
    with served_app(create_app(dead)) as url:
        r = requests.get(f"{url}/api/status", timeout=30)
        assert r.status_code == 503
        assert dead in r.json()["error"] and "make serve" in r.json()["error"]
        open_page(browser, url)
        kind, text = message(browser)
        assert "error" in kind and "unreachable" in text and "make serve" in text
        text_search(browser, "still usable")
        assert "unreachable" in message(browser)[1]


# --- against a real Flow ----------------------------------------------------------------


def tags_of(index: int, name: str) -> dict[str, Any]:
    colour, shape = Path(name).stem.split("_")
    return {"colour": colour, "shape": shape, "price": 10 * index + 5, "in_stock": index % 3 > 0}


@pytest.fixture(scope="module")
def flow(shapes, start_flow):
    """flow.yml on the base model's towers with the 16 shapes indexed, tags and all."""
    served = start_flow("ui-flow", image_root=shapes / "images")
    docs = [
        {
            "id": name,
            "blob": (shapes / "images" / name).read_bytes(),
            "text": caption,
            "tags": tags_of(i, name),
        }
        for i, (name, caption) in enumerate(sorted(captions(shapes).items()))
    ]
    with SearchClient(served.grpc) as client:
        answers = client.post("/index", docs)
    assert [a.get("error") for a in answers] == [None] * len(docs)
    return served


@pytest.fixture(scope="module")
def page(flow):
    with served_app(create_app(flow.grpc)) as url:
        yield url


@pytest.fixture()
def loaded(browser, page):
    open_page(browser, page)
    return browser


@pytest.mark.slow
def test_a_caption_finds_its_image_in_the_grid(loaded, shapes):
    assert "16 images indexed" in loaded.find_element("id", "count").text
    text_search(loaded, "a blue circle")
    ids = grid_ids(loaded)
    assert "blue_circle.png" in ids and len(ids) == 12  # the page's default limit
    cards = loaded.find_elements("css selector", "#grid li")
    scores = [float(c.find_element("class name", "score").text) for c in cards]
    assert scores == sorted(scores, reverse=True)
    expected = captions(shapes)
    for card in cards:
        img = card.find_element("tag name", "img")
        assert img.get_attribute("src").startswith("data:image/jpeg;base64,")
        assert img.get_attribute("alt") == expected[card.get_attribute("data-id")]
        assert loaded.execute_script("return arguments[0].naturalWidth", img) > 0
    assert message(loaded)[1] == ""


@pytest.mark.slow
def test_an_uploaded_image_comes_back_first(loaded, shapes):
    path = shapes / "images" / "green_square.png"
    query(loaded, lambda: loaded.find_element("id", "image").send_keys(str(path)))
    ids = grid_ids(loaded)
    assert ids[0] == "green_square.png"
    first = loaded.find_element("css selector", "#grid li .score").text
    assert float(first) == pytest.approx(1, abs=1e-3)


@pytest.mark.slow
def test_more_like_this_shows_that_items_neighbours(loaded, flow):
    text_search(loaded, "a yellow square")
    before = grid_ids(loaded)
    item = before[0]
    query(loaded, lambda: loaded.find_element("css selector", "#grid li .more").click())
    after = grid_ids(loaded)
    assert item not in after and after != before
    with SearchClient(flow.grpc) as client:
        assert after == [h.id for h in client.search(like=item, limit=12)]
    assert f"images like {item}" in loaded.find_element("id", "results-title").text


@pytest.mark.slow
def test_the_filter_controls_narrow_the_grid_to_matching_items(loaded):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    # controls built from /status's tag summaries: a select per string or boolean tag,
    # min / max per numeric one
    assert loaded.find_element("id", "tag-price-min").get_attribute("placeholder") == "5"
    shape = Select(loaded.find_element("id", "tag-shape"))
    assert sorted(o.text for o in shape.options) == ["any", "circle", "square"]
    text_search(loaded, "a red square")
    query(loaded, lambda: shape.select_by_visible_text("circle"))
    price_max = loaded.find_element("id", "tag-price-max")
    query(loaded, lambda: price_max.send_keys("100", Keys.TAB))
    cards = loaded.find_elements("css selector", "#grid li")
    assert cards, message(loaded)
    for card in cards:
        text = card.find_element("class name", "tags").text
        tags = dict(part.split(": ", 1) for part in text.split(" · "))
        # every result matches: the Flow applied the filter (the server side of issue #12)
        assert tags["shape"] == "circle" and float(tags["price"]) <= 100, card.text
    # a filter nothing matches says so, and clearing the filters brings everything back
    set_json_filter(loaded, '{"colour": "no such colour"}')
    assert grid_ids(loaded) == [] and "loosen or clear the filters" in message(loaded)[1]
    query(loaded, lambda: loaded.find_element("id", "clear-filters").click())
    assert len(grid_ids(loaded)) == 12 and message(loaded)[1] == ""


@pytest.mark.slow
def test_bad_filters_and_non_images_are_errors_and_the_page_still_works(
    loaded,
    page,
    tmp_path,
    shapes,
):
    text_search(loaded, "a red square")
    set_json_filter(loaded, '{"price": {"$between": [1, 2]}}')
    kind, text = message(loaded)
    assert "error" in kind and "unknown operator '$between'" in text
    set_json_filter(loaded, "{not json")
    assert "not valid JSON" in message(loaded)[1]
    set_json_filter(loaded, "")
    assert message(loaded)[1] == "" and "red_square.png" in grid_ids(loaded)

    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    query(loaded, lambda: loaded.find_element("id", "image").send_keys(str(notes)))
    kind, text = message(loaded)
    assert "error" in kind and "not an image" in text
    text_search(loaded, "a blue circle")
    assert message(loaded)[1] == "" and "blue_circle.png" in grid_ids(loaded)

    # the JSON API answers the same mistakes with 4xx and a message
    r = requests.post(f"{page}/api/search_image", data=b"x" * (MAX_UPLOAD_BYTES + 1), timeout=60)
    assert r.status_code == 413 and "at most 20 MB" in r.json()["error"]
    r = requests.post(f"{page}/api/search", json={"text": "x", "filter": [1]}, timeout=60)
    assert r.status_code == 400 and "filter" in r.json()["error"]
    r = requests.post(f"{page}/api/search", json={"like": "no/such.png"}, timeout=60)
    assert r.status_code == 404 and "unknown id" in r.json()["error"]
    image = (shapes / "images" / "red_circle.png").read_bytes()
    r = requests.post(
        f"{page}/api/search_image?limit=3", files={"file": ("x.png", image)}, timeout=60
    )
    assert r.status_code == 200 and r.json()["hits"][0]["id"] == "red_circle.png"


@pytest.mark.slow
def test_screenshot_and_query_to_grid_time(loaded):
    captions_ = ["a red square", "a blue circle", "a green circle", "a black square"]
    text_search(loaded, "a purple circle")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    loaded.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000
    # time from the query's submission to the painted grid, measured by the page itself
    times = []
    for i in range(20):
        text_search(loaded, captions_[i % len(captions_)])
        times.append(float(loaded.find_element("id", "grid").get_attribute("data-render-ms")))
    print(
        f"\nquery to rendered grid over {len(times)} text queries: p50 "
        f"{statistics.median(times):.1f} ms, max {max(times):.1f} ms"
    )
