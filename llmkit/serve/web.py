"""The web chat page at `/`: static files shipped in the package (llmkit/serve/static/), served by the
same process as the API, so the page works with no internet (no CDN, no build step).

The page is plain HTML, CSS and ES modules; it talks to this server's own `/v1/chat/completions`.
It and its assets are open even with `--api-key` (they hold no data; the page asks for the key and
sends it with each API call). A Content-Security-Policy limits the page to this origin: what a model
writes is rendered by the page's own Markdown renderer, which escapes HTML first, and the policy is a
second wall should a bug let markup through (no inline scripts, no remote anything).
"""

from __future__ import annotations

from importlib import resources

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

STATIC_PREFIX = "/static/"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The page is small and versioned with the package: revalidate so an upgraded server serves new files.
    "Cache-Control": "no-cache",
}


def static_files() -> dict[str, bytes]:
    """Every shipped asset by file name, read once at start-up (a few tens of KiB)."""
    folder = resources.files("llmkit.serve") / "static"
    return {f.name: f.read_bytes() for f in folder.iterdir()
            if f.is_file() and any(f.name.endswith(ext) for ext in CONTENT_TYPES)}


def _response(name: str, body: bytes) -> Response:
    kind = CONTENT_TYPES[name[name.rindex("."):]]
    return Response(body, media_type=kind, headers=SECURITY_HEADERS)


def web_routes() -> list[Route]:
    """`GET /` (the page) and `GET /static/NAME` (its assets)."""
    files = static_files()

    async def page(request: Request):
        return _response("index.html", files["index.html"])

    async def asset(request: Request):
        name = request.path_params["name"]
        if name not in files:  # only the shipped names: no paths, no directory listing
            raise HTTPException(404)
        return _response(name, files[name])

    return [Route("/", page, methods=["GET"]), Route(STATIC_PREFIX + "{name}", asset, methods=["GET"])]
