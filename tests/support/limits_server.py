"""A tiny Starlette app served exactly as ``gateway serve`` serves the planes (server, limits, logging).

Run as ``python -m tests.support.limits_server --server uvicorn --port 8123 --max-header-bytes 8192
--header-timeout 0.5 --body-timeout 0.5``; ``POST /echo`` answers the length of the body it read.
"""

from __future__ import annotations

import argparse
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.__main__ import configure_logging, run
from gateway.config import Config, DataPlaneConfig

log = logging.getLogger("limits_server")


async def echo(request: Request) -> PlainTextResponse:
    log.info("echo: reading the body")  # tests poll for this line before they act mid-body
    return PlainTextResponse(str(len(await request.body())))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-header-bytes", type=int, required=True)
    parser.add_argument("--header-timeout", type=float, required=True)
    parser.add_argument("--body-timeout", type=float, required=True)
    args = parser.parse_args()
    config = Config(
        plane="data",
        server=args.server,
        log_level="INFO",
        max_header_bytes=args.max_header_bytes,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        data_plane=DataPlaneConfig(host="127.0.0.1", port=args.port),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    configure_logging(config)
    run(config, lambda: Starlette(routes=[Route("/echo", echo, methods=["POST"])]))


if __name__ == "__main__":
    main()
