"""The review console at /review: server-rendered pages (Jinja2, a few lines of plain
JavaScript for the keyboard) for reviewers, who judge the ranked review queue one item
at a time, and for a task's owner, who watches its models and labeling functions.
`install_console` adds it to the gateway's app; `routes` has its pages."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from protege.serving.console.routes import PREFIX, Console, build_console

STATIC = Path(__file__).parent / "static"


def is_console(request: Request) -> bool:
    return request.url.path == PREFIX or request.url.path.startswith(f"{PREFIX}/")


def install_console(app: FastAPI, console: Console) -> None:
    """The console's routes, its static files, and HTML error pages for its paths (the
    API keeps its JSON errors)."""
    app.include_router(build_console(console))
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="console-static")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if is_console(request):
            return console.error_page(request, exc)
        return await http_exception_handler(request, exc)


__all__ = ["Console", "install_console", "is_console"]
