"""Liveness and health endpoints that deploy checks and container health checks call."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.core.database import database_answers, schema_revision
from app.core.resilience import assess
from app.version import VERSION

router = APIRouter()

SERVICE = "residency-scheduler-backend"


@router.get("/")
def root() -> dict:
    return {"status": "healthy", "service": SERVICE, "version": VERSION}


@router.get("/health")
def health() -> JSONResponse:
    """Healthy only when PostgreSQL runs ``SELECT 1`` (upstream answers without checking).

    v1.2.0-broken: the deliberate regression rsdeploy's rollback tests deploy. The app starts,
    but this check asks for a schema revision that never exists, so /health is always 503.
    """
    if database_answers() and schema_revision() == "9999":
        return JSONResponse({"status": "healthy", "database": "connected"})
    return JSONResponse({"status": "unhealthy", "database": "unreachable"}, status_code=503)


@router.get("/health/resilience")
def resilience() -> dict:
    return assess()
