"""The API's interactive docs at /docs, served from this package: nothing is loaded from a CDN.

FastAPI's own /docs and /redoc pages load Swagger UI and ReDoc from public CDNs, so they are blank
offline and in an air-gapped cluster. Swagger UI 5 (npm's swagger-ui-dist, Apache-2.0; the files
and their licence are in serve/web/swagger-ui/) is served here instead; /redoc is not offered.
The script and style sheet are stored gzip-compressed (0.4 MB instead of 1.7 MB in the serve image)
and sent so to every client that accepts gzip, as browsers do; others get them decompressed.
"""

from __future__ import annotations

import gzip
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
COMPRESSED = {"swagger-ui-bundle.js", "swagger-ui.css"}  # stored as <name>.gz
CACHE = {"cache-control": "public, max-age=86400"}


def docs_routes(title: str, openapi_url: str = "/openapi.json") -> APIRouter:
    """GET /docs (Swagger UI on `openapi_url`) and GET /docs/<asset>; the assets are read once."""
    folder = resources.files("serve").joinpath("web", "swagger-ui")
    assets = {name: folder.joinpath(f"{name}.gz" if name in COMPRESSED else name).read_bytes() for name in DOCS_ASSETS}
    router = APIRouter()

    @router.api_route("/docs", methods=["GET", "HEAD"], include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - API docs",
            swagger_js_url="/docs/swagger-ui-bundle.js",
            swagger_css_url="/docs/swagger-ui.css",
            swagger_favicon_url="/docs/favicon-32x32.png",
        )

    @router.get("/docs/{name}", include_in_schema=False)
    async def asset(name: str, request: Request) -> Response:
        if name not in assets:
            raise HTTPException(404, f"no docs asset {name!r}")
        if name not in COMPRESSED:
            return Response(assets[name], media_type=DOCS_ASSETS[name], headers=CACHE)
        headers = {**CACHE, "vary": "accept-encoding"}
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(assets[name], media_type=DOCS_ASSETS[name], headers={**headers, "content-encoding": "gzip"})
        return Response(gzip.decompress(assets[name]), media_type=DOCS_ASSETS[name], headers=headers)

    return router
