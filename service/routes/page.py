"""GET /: a page to try the three pipelines side by side (service/static/: plain HTML, CSS and JavaScript, nothing
to build, nothing fetched from elsewhere).

The page is public like /docs: it holds no secret, and a browser cannot send a bearer token when it navigates. It
calls the API from its own origin, so the origin checks (middleware.OriginGuard) pass it without any exception
made for it, and it sends `Authorization: Bearer` itself when a token is typed. Its files are served from a fixed
list (no directory is exposed) with a Content-Security-Policy that allows only this origin's scripts, styles and
connections, blob: images for the replies, and no framing: a page where a token is typed must not be embeddable.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent.parent / "static"
ASSETS = {"page.js": "text/javascript", "page.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated each load: a new version of the page is seen at once
}

page = APIRouter(include_in_schema=False)  # not API: the schema (and its fuzzer) describe the JSON/binary API


@page.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


def _asset_route(name: str, media_type: str) -> None:
    async def asset() -> FileResponse:
        return FileResponse(STATIC / name, media_type=f"{media_type}; charset=utf-8", headers=SECURITY_HEADERS)

    page.add_api_route(f"/static/{name}", asset, methods=["GET"], name=f"static {name}")


for _name, _media_type in ASSETS.items():
    _asset_route(_name, _media_type)
