"""The web page: one HTML file plus its script and style, all served from the package."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
@router.head("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")
