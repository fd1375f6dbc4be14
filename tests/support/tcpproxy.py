"""A loopback TCP forwarder that a test can cut and restore: a database "outage" without
touching the shared PostgreSQL server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
from anyio.abc import SocketStream, TaskGroup

__all__ = ["TcpProxy", "tcp_proxy"]


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; :meth:`cut` closes the listener and every
    forwarded connection (clients see resets, then refused connections); :meth:`restore`
    listens on the same port again."""

    def __init__(self, tg: TaskGroup, target: tuple[str, int], port: int) -> None:
        self._tg = tg
        self._target = target
        self.port = port
        self._scope: anyio.CancelScope | None = None

    async def restore(self) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        scope = anyio.CancelScope()
        self._scope = scope

        async def serve() -> None:
            with scope:
                async with listener, anyio.create_task_group() as conns:
                    await listener.serve(self._forward, task_group=conns)

        self._tg.start_soon(serve)

    def cut(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None

    async def _forward(self, client: SocketStream) -> None:
        async with client:
            try:
                upstream = await anyio.connect_tcp(*self._target)
            except OSError:
                return
            async with upstream, anyio.create_task_group() as tg:

                async def pump(src: SocketStream, dst: SocketStream) -> None:
                    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        async for chunk in src:
                            await dst.send(chunk)
                    tg.cancel_scope.cancel()

                tg.start_soon(pump, client, upstream)
                tg.start_soon(pump, upstream, client)


@contextlib.asynccontextmanager
async def tcp_proxy(target_host: str, target_port: int) -> AsyncIterator[TcpProxy]:
    """A running :class:`TcpProxy` on a free loopback port."""
    async with anyio.create_task_group() as tg:
        proxy = TcpProxy(tg, (target_host, target_port), 0)
        await proxy.restore()
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()
