"""The API under /api/v1: the release and a tiny notes resource standing in for schedules."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from app.api.health import SERVICE
from app.core.config import get_settings
from app.core.database import schema_revision, session
from app.models import Note
from app.version import VERSION

router = APIRouter(prefix="/api/v1")


class NoteIn(BaseModel):
    body: str = Field(min_length=1, max_length=10_000)
    author: str | None = Field(default=None, max_length=200)  # v1.1.0


class NoteOut(NoteIn):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime


@router.get("/version")
def version() -> dict:
    """What runs: the code's version, the deploy's APP_VERSION label, the schema revision."""
    return {"service": SERVICE, "version": VERSION, "release": get_settings().release,
            "schema_revision": schema_revision()}


@router.get("/notes", response_model=list[NoteOut])
def list_notes() -> list[Note]:
    with session() as db:
        return list(db.scalars(select(Note).order_by(Note.id)))


@router.post("/notes", response_model=NoteOut, status_code=201)
def create_note(note: NoteIn) -> Note:
    with session() as db:
        row = Note(**note.model_dump())
        db.add(row)
        db.commit()
        db.refresh(row)
        return row
