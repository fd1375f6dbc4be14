"""Command line: ``gateway serve`` runs the planes under uvicorn (default) or hypercorn.

Usage::

    gateway serve [--plane both|control|data] [--config gateway.toml]
    gateway migrate [--status] [--config gateway.toml]

Both servers get the request-head size and time limits and the body-read timeout
of :mod:`gateway.serving`, and every log handler gets the credential filter of
:mod:`gateway.logredact`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.logredact import install as install_log_redaction

__all__ = ["main"]


def _binds(config: Config) -> list[tuple[str, int]]:
    binds = []
    if config.plane in ("both", "control"):
        binds.append((config.control_plane.host, config.control_plane.port))
    if config.plane in ("both", "data"):
        binds.append((config.data_plane.host, config.data_plane.port))
    return binds


ASGIApp = Callable[..., Awaitable[None]]


def _begin_shutdown(app: object) -> None:
    getattr(getattr(app, "state", None), "begin_shutdown", lambda: None)()


async def _serve_uvicorn(config: Config, make_app: Callable[[], ASGIApp]) -> None:
    import socket

    import uvicorn

    from gateway.serving import BodyReadTimeout, limited_httptools_protocol

    sockets = []
    for host, port in _binds(config):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
        sockets.append(sock)
    app = make_app()

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            _begin_shutdown(app)
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

    uv_config = uvicorn.Config(
        BodyReadTimeout(app, config.body_timeout),
        access_log=False,
        log_config=None,  # uvicorn's loggers propagate to the root handlers (and their redaction filter)
        log_level="debug" if config.log_level.upper() == "DEBUG" else "warning",
        lifespan="on",
        timeout_keep_alive=75,
        http=limited_httptools_protocol(max_head_bytes=config.max_header_bytes, head_timeout=config.header_timeout),
        loop="none",
        timeout_graceful_shutdown=2,
    )
    install_log_redaction()
    logging.getLogger("gateway").info(
        "gateway listening on %s (plane=%s, server=uvicorn)",
        ", ".join(f"{h}:{p}" for h, p in _binds(config)),
        config.plane,
    )
    await _Server(uv_config).serve(sockets=sockets)


async def _serve_hypercorn(config: Config, make_app: Callable[[], ASGIApp]) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config as HypercornConfig

    from gateway.serving import BodyReadTimeout

    hc = HypercornConfig()
    binds = [f"{h}:{p}" for h, p in _binds(config)]
    hc.bind = binds
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")  # propagates to the root handlers, no handler of its own
    # One idle timer runs from a connection's start (or a response's end) until a request head is
    # complete, so it is the head timeout as well as the keep-alive timeout.
    hc.keep_alive_timeout = config.header_timeout
    hc.h11_max_incomplete_size = config.max_header_bytes
    hc.h2_max_header_list_size = config.max_header_bytes
    hc.graceful_timeout = 2
    app = make_app()
    stop = asyncio.Event()

    def _stop() -> None:
        _begin_shutdown(app)
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _stop)
    logging.getLogger("gateway").info(
        "gateway listening on %s (plane=%s, server=hypercorn)", ", ".join(binds), config.plane
    )
    install_log_redaction()
    await serve(BodyReadTimeout(app, config.body_timeout), hc, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


def configure_logging(config: Config) -> None:
    """Apply ``config.log_level`` and ``config.log_format`` to the root logger (``basicConfig``
    must have run): ``json`` gives its handlers :class:`~gateway.observability.logjson.JsonFormatter`
    (their redaction filters stay and run first)."""
    level = config.log_level.upper()
    logging.getLogger().setLevel(level)
    if level != "DEBUG":
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if config.log_format == "json":
        from gateway.observability.logjson import use_json

        use_json()


def run(config: Config, make_app: Callable[[], ASGIApp]) -> None:
    """Serve ``make_app()`` (built on the server's event loop) on the listeners of ``config``,
    with its server (``config.server``) and limits, until SIGINT/SIGTERM."""
    if config.server == "uvicorn":
        import uvloop

        uvloop.run(_serve_uvicorn(config, make_app))
    else:
        asyncio.run(_serve_hypercorn(config, make_app))


def _migrate(toml_path: str | None, *, status_only: bool) -> int:
    """``gateway migrate [--status]``: print ``{"applied", "pending", "unknown"}`` as JSON (after
    applying the pending ones, unless ``--status``); exit 0, 2 on a configuration error, 1
    when PostgreSQL is unreachable or a migration failed (rolled back)."""
    import asyncpg
    import orjson

    from gateway.db.migrate import apply_migrations, migration_status

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    install_log_redaction()
    try:
        config = Config.from_env(toml_path=toml_path, overrides={"plane": "control"})
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2

    async def go() -> dict[str, list[str]]:
        conn = await asyncpg.connect(config.database_url.reveal(), timeout=10)
        try:
            if not status_only:
                await apply_migrations(conn)
            st = await migration_status(conn)
            return {"applied": st.applied, "pending": st.pending, "unknown": st.unknown}
        finally:
            await conn.close()

    try:
        report = asyncio.run(go())
    except (ValueError, asyncpg.InterfaceError) as exc:  # a DATABASE_URL asyncpg cannot use
        print(f"gateway: invalid DATABASE_URL: {type(exc).__name__}", file=sys.stderr)
        return 2
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"gateway: migration failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(report).decode())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gateway`` command."""
    parser = argparse.ArgumentParser(prog="gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the control and/or data plane")
    serve.add_argument("--plane", choices=["both", "control", "data"])
    serve.add_argument("--config", help="TOML configuration file")
    migrate = sub.add_parser(
        "migrate", help="apply the schema migrations this version ships to DATABASE_URL, then exit"
    )
    migrate.add_argument("--status", action="store_true", help="only print applied, pending and unknown versions")
    migrate.add_argument("--config", help="TOML configuration file")
    args = parser.parse_args(argv)
    if args.command == "migrate":
        return _migrate(args.config, status_only=args.status)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    install_log_redaction()
    try:
        config = Config.from_env(toml_path=args.config, overrides={"plane": args.plane} if args.plane else None)
        if config.plane in ("both", "control"):
            from gateway.policy.reserved import require_assets

            require_assets()  # no bundle may ship without the reserved Rego (decision-log mask)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    configure_logging(config)
    from gateway.app import create_app

    run(config, lambda: create_app(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
