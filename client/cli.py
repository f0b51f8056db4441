"""`python -m client` (also `clip-search`): index, search, delete, status against the Flow.

    python -m client index photos/                      # a folder of images, recursively
    python -m client index data/pairs.csv               # or any data file the trainer reads
    python -m client search "a red dress" --limit 5
    python -m client search --image query.jpg
    python -m client get cats/1.jpg                     # stored fields of ids
    python -m client update cats/1.jpg --text "a grey cat" --tag colour=grey --untag season
    python -m client delete cats/1.jpg dogs/7.png
    python -m client status
    python -m client health                             # exit 0 when every executor answers
    python -m client --host http://127.0.0.1:51001 status
    python -m client ui                                 # the search page, http://127.0.0.1:51002

Exit status: 0 on success, 1 when some documents failed (listed at the end) or ids were
unknown (`health`: when an executor or index shard is down), 2 on a usage error or when the
service cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from tqdm import tqdm

from client.api import DEFAULT_HOST, ClientError, Outcome, SearchClient, images_to_index
from imagepairs.documents import STORED_FIELDS

# Failed documents listed in full at the end of `index`; the rest are counted.
MAX_LISTED_ERRORS = 20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client", description="Text-to-image search client."
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("SEARCH_HOST", DEFAULT_HOST),
        help="gateway: grpc://HOST:PORT or http://HOST:PORT (default: $SEARCH_HOST or "
        f"{DEFAULT_HOST})",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    parser.add_argument(
        "--token",
        default=None,
        help="token of the service's write endpoints (index, update, delete; its API_TOKEN); "
        "default: $SEARCH_TOKEN",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index a folder of images or an image-caption data file")
    p.add_argument("path", help="folder (searched recursively) or data file (csv, json, ...)")
    p.add_argument("--batch-size", type=int, default=32, help="images per request")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("search", help="search with a text or an image")
    p.add_argument("text", nargs="?", help="query text")
    p.add_argument("--image", help="query image file")
    p.add_argument("--limit", type=int, default=10, help="number of results")

    p = sub.add_parser(
        "get",
        help="show the stored fields of documents",
        description="Print each id's stored text, uri, tags and the tower that embedded it, "
        "as one JSON object per line.",
        epilog="example: python -m client get cats/1.jpg dogs/7.png --embeddings",
    )
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument("--embeddings", action="store_true", help="include the stored embeddings")

    p = sub.add_parser(
        "update",
        help="change a document's caption, tags or image; the rest stays as stored",
        description="Change only what is named: tags are merged into the stored ones (--untag "
        "removes one, --replace-tags replaces them all); --text on an image is its new "
        "caption (the image embedding stays), on a text document its new text (embedded "
        "again); --image is a new image (embedded again).",
        epilog='example: python -m client update 39816 --text "Nike Men Red T-shirt" '
        "--tag colour=Red --tag price=59.9 --untag season",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("--text", help="new caption or text")
    p.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a tag (repeatable); VALUE is read as JSON when it is a number, true, false "
        'or null, or a quoted string ("59"; null removes the tag, like --untag); otherwise as text',
    )
    p.add_argument("--untag", action="append", default=[], metavar="KEY", help="remove a tag")
    p.add_argument("--replace-tags", action="store_true", help="the given tags replace all")
    p.add_argument("--image", help="a new image file for the document")

    p = sub.add_parser("delete", help="delete documents by id")
    p.add_argument("ids", nargs="+", metavar="ID")

    sub.add_parser("status", help="show the index's counts and parameters")
    sub.add_parser(
        "health",
        help="check that every executor and index shard answers (exit 0), or say which did "
        "not (exit 1); for load balancers and readiness probes",
    )

    p = sub.add_parser("ui", help="serve the search page (read-only) in a browser")
    p.add_argument(
        "--ui-host", default="127.0.0.1", help="address the page listens on (default 127.0.0.1)"
    )
    p.add_argument(
        "--ui-port",
        type=int,
        default=int(os.environ.get("UI_PORT", "51002")),
        help="port of the page (default: $UI_PORT or 51002)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        client = SearchClient(args.host, timeout=args.timeout, token=args.token)
        return COMMANDS[args.command](client, args, parser)
    except (ClientError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def cmd_index(client: SearchClient, args: argparse.Namespace, parser) -> int:
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    items = images_to_index(args.path)
    if not items:
        print(f"error: no images found in {args.path}", file=sys.stderr)
        return 2
    acknowledged = []

    def on_batch(batch: list[Outcome]) -> None:
        acknowledged.extend(batch)
        bar.update(len(batch))

    with tqdm(total=len(items), unit="img", disable=args.no_progress or None) as bar:
        try:
            outcomes = client.index(items, batch_size=args.batch_size, on_batch=on_batch)
        except ClientError as e:
            done = sum(o.error is None for o in acknowledged)
            raise ClientError(
                f"{e}\n{done} of {len(items)} images were stored before that; running the same "
                f"command again is safe (ids come from the paths, so nothing is duplicated)"
            ) from e
    failed = [o for o in outcomes if o.error]
    print(f"indexed {len(outcomes) - len(failed)} of {len(items)} images from {args.path}")
    _print_failures(failed)
    return 1 if failed else 0


def cmd_search(client: SearchClient, args: argparse.Namespace, parser) -> int:
    if (args.text is None) == (args.image is None):
        parser.error('search takes a query text or --image FILE (one of them): search "a dog"')
    if args.limit < 1:
        parser.error("--limit must be >= 1")
    hits = client.search(text=args.text, image=args.image, limit=args.limit)
    if not hits:
        print("no results (is anything indexed? see `status`)")
    for rank, hit in enumerate(hits, 1):
        caption = f"  {hit.text}" if hit.text else ""
        print(f"{rank:>3}. {hit.score:.4f}  {hit.id}  {hit.uri or ''}{caption}")
    return 0


def cmd_get(client: SearchClient, args: argparse.Namespace, parser) -> int:
    found = client.get(args.ids, embeddings=args.embeddings)
    for doc in found:
        if doc.error is None:
            fields = {k: getattr(doc, k) for k in ("id", *STORED_FIELDS)}
            if doc.embedding is not None:
                fields["embedding"] = doc.embedding.tolist()
            shown = {k: v for k, v in fields.items() if v is not None}
            print(json.dumps(shown, ensure_ascii=False))
    failed = [Outcome(d.id, d.error) for d in found if d.error]
    _print_failures(failed)
    return 1 if failed else 0


def cmd_update(client: SearchClient, args: argparse.Namespace, parser) -> int:
    tags = dict(_tag(parser, item) for item in args.tag)
    if args.replace_tags and args.untag:
        parser.error("--untag has no meaning with --replace-tags (the given tags are all kept)")
    tags.update({key: None for key in args.untag})
    change: dict = {"id": args.id, "tags": tags}
    if args.text is not None:
        change["text"] = args.text
    if args.image is not None:
        change["image"] = args.image
    if not (tags or args.replace_tags or "text" in change or "image" in change):
        parser.error("nothing to change: give --text, --tag, --untag, --replace-tags or --image")
    [outcome] = client.update([change], replace_tags=args.replace_tags)
    if outcome.error:
        _print_failures([outcome])
        return 1
    print(f"updated {outcome.id}")
    return 0


def _tag(parser: argparse.ArgumentParser, item: str) -> tuple[str, object]:
    """`KEY=VALUE` as a tag: numbers, true, false, null and quoted strings as JSON, else text."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        parser.error(f"--tag takes KEY=VALUE, got {item!r}")
    try:
        parsed = json.loads(value)
    except ValueError:
        return key, value
    return key, parsed if isinstance(parsed, str | int | float | bool) or parsed is None else value


def cmd_delete(client: SearchClient, args: argparse.Namespace, parser) -> int:
    outcomes = client.delete(args.ids)
    deleted = [o.id for o in outcomes if not o.error]
    print(f"deleted {len(deleted)} of {len(outcomes)}")
    failed = [o for o in outcomes if o.error]
    _print_failures(failed)
    return 1 if failed else 0


def cmd_status(client: SearchClient, args: argparse.Namespace, parser) -> int:
    print(json.dumps(client.status(), indent=2, sort_keys=True, default=str))
    return 0


def cmd_health(client: SearchClient, args: argparse.Namespace, parser) -> int:
    health = client.health()
    for executor in health.executors:
        print(f"up    {executor.get('executor')}")
    if not health.healthy:
        print(f"down  {health.error}", file=sys.stderr)
    return 0 if health.healthy else 1


def cmd_ui(client: SearchClient, args: argparse.Namespace, parser) -> int:
    # imported here: the other commands need no web server
    from client.ui import serve

    serve(args.host, ui_host=args.ui_host, ui_port=args.ui_port)
    return 0


def _print_failures(failed: list[Outcome]) -> None:
    if not failed:
        return
    print(f"{len(failed)} failed:", file=sys.stderr)
    for o in failed[:MAX_LISTED_ERRORS]:
        print(f"  {o.id}: {o.error}", file=sys.stderr)
    if len(failed) > MAX_LISTED_ERRORS:
        print(f"  ... and {len(failed) - MAX_LISTED_ERRORS} more", file=sys.stderr)


COMMANDS = {
    "index": cmd_index,
    "search": cmd_search,
    "get": cmd_get,
    "update": cmd_update,
    "delete": cmd_delete,
    "status": cmd_status,
    "health": cmd_health,
    "ui": cmd_ui,
}
