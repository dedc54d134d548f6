"""The ASGI app and the one-process server: HTTP API + console + MQTT ingest.

`create_app(settings)` builds everything; its lifespan migrates the database (upgrade head), starts
the ingest task, and on shutdown ends the live streams, stops the ingest and lets the writer
finish. `serve(settings)` runs that app under uvicorn until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from polewatch import __version__

from . import (
    alerts_api,
    alerts_stream,
    api,
    config_api,
    credential_rotation,
    credential_rotation_api,
    delivery,
    enrolment_api,
    errors,
    fleet_move_api,
    health_history_api,
    people_api,
    registry_api,
    stream,
)
from .alert_wakeups import AlertWakeups
from .auth import COOKIE, PUBLIC, authenticate, unruled_routes
from .db import make_engine, make_sessionmaker, safe_url, upgrade
from .feed import Feed
from .health_compaction import Compactor
from .ingest import Ingest
from .login_limits import LoginLimits
from .services import Services
from .settings import Settings
from .store import Store
from .webhooks import Dispatcher

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
SHUTDOWN_GRACE_S = 5
JOB_STOP_S = 10.0
# Every router of the app; the access-rule check and the role-matrix test read their routes here.
ROUTERS = (
    api.router, delivery.router, stream.router, people_api.router, registry_api.router, enrolment_api.router,
    config_api.router, fleet_move_api.router, credential_rotation_api.router, api.health_router,
    health_history_api.router,
    alerts_stream.router,  # before alerts_api: /api/alerts/stream is not an /api/alerts/{alert_id}
    alerts_api.router,
)  # fmt: skip


def create_app(settings: Settings | None = None, *, run_ingest: bool = True, migrate: bool = True) -> FastAPI:
    """The fleet server as an ASGI app.

    `run_ingest=False` serves the API over an existing database without touching MQTT (tests,
    read-only replicas); `migrate=False` skips the schema upgrade at start.
    """
    settings = settings or Settings()
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    feed = Feed()
    store = Store(sessions, settings.alert_timezone)
    ingest = Ingest(settings, store, feed)
    limits = LoginLimits(settings.login_per_minute_per_client, settings.login_failures_per_user)
    services = Services(
        settings=settings, engine=engine, sessions=sessions, store=store, feed=feed, ingest=ingest, login_limits=limits
    )

    dispatcher = Dispatcher(settings, sessions)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if migrate:
            await run_in_threadpool(upgrade, engine)
        log.info(
            "fleet server starting",
            extra={"database": safe_url(settings.database_url), "ingest": run_ingest, "version": __version__},
        )
        task = asyncio.create_task(ingest.run(), name="mqtt-ingest") if run_ingest else None
        deliveries = asyncio.create_task(dispatcher.run(), name="alert-deliveries")
        wakeups = AlertWakeups(engine, sessions, feed, settings.alert_poll_s)
        background = [deliveries, asyncio.create_task(wakeups.run(), name="alert-wakeups")]
        if settings.health_compact_interval_s > 0:
            compactor = Compactor(
                sessions, settings.health_policy(), settings.health_compact_interval_s, settings.mqtt_client_id
            )
            background.append(asyncio.create_task(compactor.run(), name="health-compaction"))
        # Rotations need the broker's admin: without it none can start, so none needs settling.
        if settings.dynsec_password is not None:
            background.append(asyncio.create_task(credential_rotation.run(services), name="credential-rotations"))
        try:
            yield
        finally:
            feed.close()
            for job in background:
                job.cancel()
            # Bounded: a job whose cancellation a library swallows (a LISTEN wait, a thread) must not
            # keep the server from stopping; it is named in the log instead.
            _, stuck = await asyncio.wait(background, timeout=JOB_STOP_S)
            for job in stuck:
                log.error("background job did not stop when asked; leaving it", extra={"job": job.get_name()})
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await run_in_threadpool(ingest.close)
            engine.dispose()
            log.info("fleet server stopped")

    app = FastAPI(
        title="Polewatch fleet server",
        version=__version__,
        summary="Devices, detections and the live feed of a city's camera-pole fleet.",
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.dispatcher = dispatcher
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/", include_in_schema=False, dependencies=api.rule(PUBLIC), response_model=None)
    def console(request: Request) -> FileResponse | RedirectResponse:
        # Public route, own check: a browser without a session is sent to the sign-in page
        # rather than shown a JSON 401.
        if not request.cookies.get(COOKIE):
            return RedirectResponse("/login", status_code=303)
        try:
            authenticate(request, services)
        except HTTPException:
            return RedirectResponse("/login", status_code=303)
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/login", include_in_schema=False, dependencies=api.rule(PUBLIC))
    async def login_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "login.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    errors.install(app)
    app.state.api_routes = [r for r in app.routes if isinstance(r, APIRoute)] + [
        r for router in ROUTERS for r in router.routes if isinstance(r, APIRoute)
    ]
    missing = unruled_routes(app.state.api_routes)
    if missing:
        raise RuntimeError(f"routes without an access rule (see auth.py): {missing}")
    return app


async def serve(
    settings: Settings,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run API, console and ingest in this process until SIGINT/SIGTERM or until `stop` is set.

    `on_ready` gets the console URL once the port is bound (the real port when http_port is 0).
    Either way of stopping is graceful: streams end, the ingest disconnects, the writer finishes.
    """
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,  # logs.setup_logging owns the handlers
        lifespan="on",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    server = uvicorn.Server(config)
    services: Services = app.state.services

    async def watch() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.05)
        port = settings.http_port
        for srv in server.servers:
            for sock in srv.sockets:
                port = int(sock.getsockname()[1])
        if on_ready is not None:
            on_ready(settings.console_url(port))
        while not server.should_exit:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await asyncio.sleep(0.1)
        # uvicorn waits for open responses before the lifespan shutdown; live streams never end
        # on their own, so end them as soon as shutdown is asked for.
        services.feed.close()

    async def stop_on_request() -> None:
        if stop is not None:
            await stop.wait()
            server.should_exit = True

    helpers = [
        asyncio.create_task(watch(), name="serve-watch"),
        asyncio.create_task(stop_on_request(), name="serve-stop"),
    ]
    try:
        await server.serve()
    finally:
        for task in helpers:
            task.cancel()
        for task in helpers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
