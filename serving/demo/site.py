"""The demo's paths on the REST port: its static files and `models.json`.

- `GET /demo` redirects to `/demo/`, which is `index.html`.
- `GET /demo/models.json` lists the served models with a summary of each card (an extension:
  TF Serving has no call that lists models) and the constants of `strokes_to_image`.
- `GET /demo/<file>` serves a file of this folder with a known type; anything else, including a
  path that leaves the folder, is NOT_FOUND.
The page itself predicts through the ordinary `POST /v1/models/<name>:predict`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import urllib.parse

from keras_reptile.data.preprocessing import (
    OMNIGLOT_IMAGE_SIZE,
    STROKE_INK_EXTENT,
    STROKE_PEN_WIDTH,
)
from serving.errors import ServingError, not_found
from serving.service import MODEL_CARD, Service, Target

DEMO_DIR = pathlib.Path(__file__).resolve().parent
_MAX_NAME = 255  # characters of a file name
PREFIX = "/demo"
MODELS_FILE = "models.json"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".md": "text/markdown; charset=utf-8",
    ".png": "image/png",
}
# The card's fields a page needs to show a model and to build its requests.
CARD_FIELDS = ("ways", "regression", "input_shape", "default_protocol", "results")


@dataclasses.dataclass(frozen=True)
class Response:
    """An answer that is not TF Serving's JSON: a file, a listing or a redirect."""

    status: int
    content_type: str
    body: bytes
    location: str | None = None


def is_demo_path(path: str) -> bool:
    """Whether a request path (without its query) is one of the demo's."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def handle_get(path: str, query: str, service: Service) -> Response:
    """The answer to `GET path?query` for a demo path (`is_demo_path`)."""
    if path == PREFIX:
        location = PREFIX + "/" + ("?" + query if query else "")
        return Response(301, "text/plain; charset=utf-8", b"", location)
    relative = path[len(PREFIX) + 1 :]
    if relative == MODELS_FILE:
        body = json.dumps(models_summary(service)).encode()
        return Response(200, CONTENT_TYPES[".json"], body)
    data, content_type = static_file(relative or "index.html")
    return Response(200, content_type, data)


def static_file(relative: str) -> tuple[bytes, str]:
    """The bytes and Content-Type of a file of the page, named relative to its folder.

    Raises NOT_FOUND for a file that is not there or has no known type, and for any name that
    could leave the folder (`..`, a backslash, an absolute name, a link out).
    """
    parts = urllib.parse.unquote(relative).split("/")
    safe = all(
        p and p not in (".", "..") and "\\" not in p and "\0" not in p and len(p) <= _MAX_NAME
        for p in parts
    )
    try:
        path = DEMO_DIR.joinpath(*parts).resolve() if safe else None
        found = (
            path is not None
            and path.is_relative_to(DEMO_DIR)
            and path.suffix in CONTENT_TYPES
            and path.is_file()
        )
        if found:
            return path.read_bytes(), CONTENT_TYPES[path.suffix]
    except OSError:  # a name the file system refuses is not a file of the page
        pass
    raise not_found(f"Not found: {PREFIX}/{relative[:300]}")


def models_summary(service: Service) -> dict:
    """Every served model with its latest version's card summary (`CARD_FIELDS`).

    A model whose card cannot be had (none, or no version loaded) is listed with the reason, as
    `{"name": ..., "error": ...}`. `preprocessing` holds `strokes_to_image`'s constants, which
    the page's copy of it reads.
    """
    models = []
    for name in service.manager.model_names():
        try:
            metadata = service.metadata(Target(name), (MODEL_CARD,))
        except ServingError as e:
            models.append({"name": name, "error": e.message})
            continue
        card = metadata.card.to_dict()
        models.append(
            {"name": metadata.name, "version": metadata.version}
            | {field: card[field] for field in CARD_FIELDS}
            | {"signatures": sorted(metadata.signature_defs)}
        )
    return {
        "models": models,
        "preprocessing": {
            "reference_size": OMNIGLOT_IMAGE_SIZE,
            "ink_extent": STROKE_INK_EXTENT,
            "pen_width": STROKE_PEN_WIDTH,
        },
    }
