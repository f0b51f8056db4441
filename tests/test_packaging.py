"""What each install brings, and what each part of the project loads.

The base install is the client over HTTP (no torch, jina or docarray); the extras add gRPC, the
towers, the service and the trainer. These tests hold the client to that: its HTTP commands run
in a fresh interpreter without loading any of the three, gRPC loads them on its first request,
and every third-party package a part imports is one its install declares.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import grimp
import pytest
import tomllib
from packaging.requirements import Requirement
from PIL import Image

from demo import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
FIRST_PARTY = PYPROJECT["tool"]["importlinter"]["root_packages"]
HEAVY = ("torch", "jina", "docarray")
# The one import that loads the gRPC side, on the first gRPC request (see pyproject.toml).
LAZY_GRPC = "client.api -> client.grpc_transport"


def loaded_by(code: str, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `code` in a fresh interpreter; its result, and which of HEAVY it had loaded."""
    script = (
        f"{code}\nimport sys\n"
        f"print('LOADED=' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    loaded = re.search(r"^LOADED=(.*)$", run.stderr, re.M)
    assert loaded, run.stderr[-2000:]
    return run, [m for m in loaded.group(1).split(",") if m]


def run_cli(*args: str) -> str:
    """`python -m client ARGS` in the interpreter `loaded_by` runs, its exit status printed."""
    return (
        "import contextlib, runpy, sys\n"
        f"sys.argv = ['client', *{list(args)!r}]\n"
        "try:\n"
        "    runpy.run_module('client', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    print('EXIT=' + str(e.code), file=sys.stderr)"
    )


def test_importing_the_client_loads_no_torch_jina_or_docarray():
    _, loaded = loaded_by("import client.api, client.cli, client.wire")
    assert loaded == []


def test_http_commands_load_no_torch_jina_or_docarray(tmp_path: Path):
    # nothing listens on port 1: every command gets as far as sending, then fails to connect
    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    (tmp_path / "pairs.csv").write_text("image,caption,colour\nred.png,a red square,red\n")
    host = "http://127.0.0.1:1"
    commands = {
        "help": ["--help"],
        "health": ["--host", host, "health"],
        "search": ["--host", host, "search", "a red square"],
        "index a data file": ["--host", host, "index", str(tmp_path / "pairs.csv")],
        "index a folder": ["--host", host, "index", str(tmp_path), "--no-progress"],
    }
    for name, args in commands.items():
        run, loaded = loaded_by(run_cli(*args))
        assert loaded == [], name
        expected = "0" if name == "help" else "2"
        assert f"EXIT={expected}" in run.stderr, (name, run.stderr[-2000:])
        if name != "help":
            assert "cannot talk to the search service at http://127.0.0.1:1" in run.stderr, name


def test_an_http_client_checks_documents_without_docarray():
    code = (
        "from client.api import ClientError, SearchClient\n"
        "client = SearchClient('http://127.0.0.1:1', timeout=5)\n"
        "try:\n"
        "    client.post('/index', [{'id': 'a', 'text': 'x', 'tags': [1]}])\n"
        "except ClientError as e:\n"
        "    print(e)"
    )
    run, loaded = loaded_by(code)
    assert loaded == []
    assert "document 0, field tags: Input should be a valid dictionary" in run.stdout


def test_grpc_loads_jina_and_docarray_on_its_first_request_only():
    code = (
        "import sys\n"
        "from client.api import ClientError, SearchClient\n"
        "client = SearchClient('grpc://127.0.0.1:1', timeout=5)\n"
        "assert 'jina' not in sys.modules, 'constructing a gRPC client loaded jina'\n"
        "try:\n"
        "    client.status()\n"
        "except ClientError as e:\n"
        "    print(e)"
    )
    run, loaded = loaded_by(code)
    assert run.returncode == 0, run.stderr[-2000:]
    assert {"jina", "docarray"} <= set(loaded)
    assert "cannot talk to the search service at grpc://127.0.0.1:1" in run.stdout


def test_grpc_without_the_grpc_extra_is_an_error_that_says_what_to_install():
    code = "import sys\nsys.modules['jina'] = None  # as if not installed\n" + run_cli(
        "--host", "grpc://127.0.0.1:1", "status"
    )
    run, _ = loaded_by(code)
    assert "EXIT=2" in run.stderr, run.stderr[-2000:]
    assert "pip install 'clip-finetune-search[grpc]'" in run.stderr
    assert "Traceback" not in run.stderr


# --- what each part imports is what its install declares ----------------------------------


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    """The project's imports as import-linter sees them, without the lazy one to gRPC."""
    graph = grimp.build_graph(
        *FIRST_PARTY, include_external_packages=True, exclude_type_checking_imports=True
    )
    importer, imported = LAZY_GRPC.split(" -> ")
    graph.remove_import(importer=importer, imported=imported)
    return graph


def http_client_modules() -> list[str]:
    """The client modules the import contract keeps free of torch, jina and docarray."""
    [contract] = [
        c
        for c in PYPROJECT["tool"]["importlinter"]["contracts"]
        if LAZY_GRPC in c.get("ignore_imports", [])
    ]
    assert set(HEAVY) <= set(contract["forbidden_modules"])
    return contract["source_modules"]


def test_every_client_module_is_held_free_of_torch_jina_and_docarray_unless_only_grpc_uses_it(
    graph,
):
    # a new client module must be named in the contract, or be used by the gRPC side only
    client = graph.find_descendants("client") | {"client"}
    light = set(http_client_modules())
    grpc = {"client.grpc_transport"} | graph.find_upstream_modules("client.grpc_transport")
    assert light <= client
    assert client - light == (grpc & client) - light


def name(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def declared(extras: Iterable[str]) -> set[str]:
    """The distributions the base install and `extras` declare (the project's extras that an
    extra names expanded), and everything those require, as installed here."""
    todo = [*PROJECT["dependencies"]]
    todo += [r for extra in extras for r in PROJECT["optional-dependencies"][extra]]
    wanted: set[str] = set()
    while todo:
        requirement = Requirement(todo.pop())
        if name(requirement.name) == name(PROJECT["name"]):
            todo += [r for e in requirement.extras for r in PROJECT["optional-dependencies"][e]]
        else:
            wanted.add(name(requirement.name))
    found: set[str] = set()
    while wanted:
        distribution = wanted.pop()
        if distribution in found:
            continue
        found.add(distribution)
        try:
            requires = metadata.requires(distribution) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.add(name(requirement.name))
    return found


PARTS = {
    # part: (its modules, the extras its install adds)
    "the HTTP client and imagepairs": (["@http-client", "imagepairs"], []),
    "the gRPC client": (["client"], ["grpc"]),
    "the Flow's executors": (["executors"], ["serve"]),
    "the trainer": (["finetune"], ["train", "onnx"]),
}


@pytest.mark.parametrize("part", PARTS)
def test_what_each_part_imports_is_what_its_install_declares(graph, part):
    roots, extras = PARTS[part]
    modules: set[str] = set()
    for root in roots:
        if root == "@http-client":
            modules |= set(http_client_modules())
        else:
            modules |= graph.find_descendants(root) | {root}
    imported = {m for module in modules for m in graph.find_upstream_modules(module)}
    third_party = {
        m.split(".")[0]
        for m in imported
        if m.split(".")[0] not in FIRST_PARTY and m.split(".")[0] not in sys.stdlib_module_names
    }
    allowed = declared(extras)
    distributions = metadata.packages_distributions()
    missing = {
        package: distributions.get(package)
        for package in third_party
        if not {name(d) for d in distributions.get(package, [])} & allowed
    }
    assert not missing, f"{part} imports {json.dumps(missing)}, which its install lacks"
    if not extras:
        assert not set(HEAVY) & third_party
