"""Command line: ``gateway serve`` runs the planes under Hypercorn.

Usage::

    gateway serve [--plane both|control|data] [--config gateway.toml]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from gateway.config import Config
from gateway.errors import ConfigError

__all__ = ["main"]


def _binds(config: Config) -> list[tuple[str, int]]:
    binds = []
    if config.plane in ("both", "control"):
        binds.append((config.control_plane.host, config.control_plane.port))
    if config.plane in ("both", "data"):
        binds.append((config.data_plane.host, config.data_plane.port))
    return binds


async def _serve_uvicorn(config: Config) -> None:
    import socket

    import uvicorn

    from gateway.app import create_app

    sockets = []
    for host, port in _binds(config):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
        sockets.append(sock)
    app = create_app(config)

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            getattr(app.state, "begin_shutdown", lambda: None)()
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

    uv_config = uvicorn.Config(
        app,
        access_log=False,
        log_level="warning",
        lifespan="on",
        timeout_keep_alive=75,
        http="httptools",
        loop="none",
        timeout_graceful_shutdown=2,
    )
    logging.getLogger("gateway").info(
        "gateway listening on %s (plane=%s, server=uvicorn)",
        ", ".join(f"{h}:{p}" for h, p in _binds(config)),
        config.plane,
    )
    await _Server(uv_config).serve(sockets=sockets)


async def _serve(config: Config) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config as HypercornConfig

    from gateway.app import create_app

    hc = HypercornConfig()
    binds = [f"{h}:{p}" for h, p in _binds(config)]
    hc.bind = binds
    hc.accesslog = None
    hc.errorlog = "-"
    hc.keep_alive_timeout = 75
    hc.graceful_timeout = 2
    app = create_app(config)
    stop = asyncio.Event()

    def _stop() -> None:
        getattr(app.state, "begin_shutdown", lambda: None)()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _stop)
    logging.getLogger("gateway").info(
        "gateway listening on %s (plane=%s, server=hypercorn)", ", ".join(binds), config.plane
    )
    await serve(app, hc, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gateway`` command."""
    parser = argparse.ArgumentParser(prog="gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the control and/or data plane")
    serve.add_argument("--plane", choices=["both", "control", "data"])
    serve.add_argument("--config", help="TOML configuration file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        config = Config.from_env(toml_path=args.config, overrides={"plane": args.plane} if args.plane else None)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    if config.server == "uvicorn":
        import uvloop

        uvloop.run(_serve_uvicorn(config))
    else:
        asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
