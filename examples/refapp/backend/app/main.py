"""The ASGI app: ``uvicorn app.main:app``. Refuses to start when production settings are unsafe.

With the REFAPP_* switches (app.core.like_real) each uvicorn worker imports like the real
backend's: it grows to the real app's resident memory, takes its time before it serves, writes
under HOME, and (REFAPP_METRICS_CRASH with metrics on) fails at start-up.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api import health, v1
from app.core import like_real
from app.core.config import get_settings
from app.core.metrics import instrument, metrics_enabled
from app.core.resilience import assess
from app.version import VERSION

settings = get_settings()
logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("app")

# Like the real backend, whose imports load torch (memory) and take about a minute (time),
# and whose libraries write under HOME.
switches = like_real.from_environment()
like_real.hold_resident(switches.worker_memory_mb, "uvicorn worker")
like_real.slow_start(switches.startup_delay, "uvicorn worker")
if switches.home_writes:
    like_real.write_home("uvicorn worker")


@asynccontextmanager
async def lifespan(_: FastAPI):
    if settings.release != VERSION:
        log.warning("APP_VERSION says %s but this code is %s", settings.release, VERSION)
    assess()  # gauges have values from the first scrape on
    log.info("Residency Scheduler stand-in %s started", VERSION)
    yield


app = FastAPI(title="Residency Scheduler (rsdeploy stand-in)", version=VERSION,
              debug=settings.debug, lifespan=lifespan)
app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=True,
                   allow_methods=["*"], allow_headers=["*"])
app.include_router(health.router)
app.include_router(v1.router)
if switches.metrics_crash and metrics_enabled():
    like_real.fail_late_middleware(app, instrument)  # raises: this worker never serves
instrument(app, only_when_enabled=switches.metrics_need_enable)
