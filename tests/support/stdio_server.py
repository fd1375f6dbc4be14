"""A tiny MCP server over stdio (newline-delimited JSON-RPC), standard library only, for stdio-upstream tests.

Run as ``python tests/support/stdio_server.py [--ignore-sigterm] [--stay-after-eof] [--child]
[--banner] [--exit-at-start CODE]``. It speaks the handshake era (``initialize``
answers the requested revision) and offers these tools:

* ``whoami`` (read-only): ``{"env_keys": sorted(os.environ), "pid", "cwd", "marker": $STDIO_MARKER}``
  as JSON text (never the other values of the environment);
* ``echo`` (read-only): ``{"text"}`` back;
* ``stderr`` (not read-only): writes ``lines`` lines of ``size`` bytes (``text`` if given) to stderr;
* ``long_line`` (not read-only): writes one stdout line of ``size`` bytes that is not a message;
* ``sleep`` (read-only): answers after ``seconds``, from a thread (later requests are answered first);
* ``ask_ping`` (read-only): sends the client a ``ping`` request and answers with the reply it got;
* ``exit`` (destructive): exits at once with ``code``;
* ``close_stdin`` (not read-only): closes its stdin, answers, and keeps running (reading nothing).

Options: ``--ignore-sigterm`` ignores SIGTERM; ``--stay-after-eof`` keeps running (sleeping)
after stdin closes; ``--child`` starts a ``sleep 300`` grandchild in the same process group
and reports its pid in ``whoami``; ``--banner`` writes a non-JSON line to stdout at start;
``--exit-at-start CODE`` exits before reading anything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

TOOLS = [
    {"name": "whoami", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}},
    {
        "name": "echo",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
        "annotations": {"readOnlyHint": True},
    },
    {
        "name": "stderr",
        "inputSchema": {
            "type": "object",
            "properties": {"lines": {"type": "integer"}, "size": {"type": "integer"}, "text": {"type": "string"}},
        },
        "annotations": {"readOnlyHint": False},
    },
    {
        "name": "long_line",
        "inputSchema": {"type": "object", "properties": {"size": {"type": "integer"}}},
        "annotations": {"readOnlyHint": False},
    },
    {
        "name": "sleep",
        "inputSchema": {"type": "object", "properties": {"seconds": {"type": "number"}}},
        "annotations": {"readOnlyHint": True},
    },
    {"name": "ask_ping", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}},
    {"name": "close_stdin", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": False}},
    {
        "name": "exit",
        "inputSchema": {"type": "object", "properties": {"code": {"type": "integer"}}},
        "annotations": {"readOnlyHint": False, "destructiveHint": True},
    },
]

CHILD: subprocess.Popen[bytes] | None = None
WRITE = threading.Lock()


def send(msg: dict[str, Any]) -> None:
    with WRITE:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def text(value: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": value}], "isError": False}


def call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    if name == "whoami":
        info = {
            "env_keys": sorted(os.environ),
            "pid": os.getpid(),
            "cwd": os.getcwd(),
            "marker": os.environ.get("STDIO_MARKER"),
            "child": CHILD.pid if CHILD else None,
        }
        return text(json.dumps(info))
    if name == "echo":
        return text(str(args.get("text", "")))
    if name == "stderr":
        line = str(args.get("text") or "e" * int(args.get("size", 10)))
        for _ in range(int(args.get("lines", 1))):
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        return text("written")
    if name == "long_line":
        sys.stdout.write("x" * int(args.get("size", 10)) + "\n")
        sys.stdout.flush()
        return text("written")
    if name == "ask_ping":
        send({"jsonrpc": "2.0", "id": "srv-1", "method": "ping"})
        for raw in sys.stdin:
            reply = json.loads(raw)
            if reply.get("id") == "srv-1":
                return text(json.dumps(reply))
        return text("stdin closed")
    if name == "exit":
        os._exit(int(args.get("code", 0)))
    if name == "close_stdin":
        os.close(0)  # before answering: once the client has the answer, its next write fails (EPIPE)
        return text("closed")
    raise KeyError(name)


def handle(msg: dict[str, Any]) -> None:
    method, msg_id = msg.get("method"), msg.get("id")
    if msg_id is None:
        return  # a notification
    params = msg.get("params") or {}
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": params.get("protocolVersion", "2025-11-25"),
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "stdio-test-server", "version": "1"},
        }
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call" and params.get("name") == "sleep":  # answered from a thread, out of order
        seconds = float((params.get("arguments") or {}).get("seconds", 0))

        def later() -> None:
            time.sleep(seconds)
            send({"jsonrpc": "2.0", "id": msg_id, "result": text("slept")})

        threading.Thread(target=later, daemon=True).start()
        return
    elif method == "tools/call":
        try:
            result = call(str(params.get("name")), params.get("arguments") or {})
        except KeyError:
            send({"jsonrpc": "2.0", "id": msg_id, "error": {"code": -32602, "message": "Unknown tool"}})
            return
    elif method == "ping":
        result = {}
    else:
        send({"jsonrpc": "2.0", "id": msg_id, "error": {"code": -32601, "message": "Method not found"}})
        return
    send({"jsonrpc": "2.0", "id": msg_id, "result": result})


def main() -> None:
    global CHILD
    argv = sys.argv[1:]
    if "--exit-at-start" in argv:
        sys.stderr.write("exiting at start as asked\n")
        sys.exit(int(argv[argv.index("--exit-at-start") + 1]))
    if "--ignore-sigterm" in argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "--child" in argv:
        CHILD = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
    if "--banner" in argv:
        sys.stdout.write("stdio test server starting (not JSON)\n")
        sys.stdout.flush()
    sys.stderr.write("stdio test server ready\n")
    sys.stderr.flush()
    for raw in sys.stdin:
        if raw.strip():
            msg = json.loads(raw)
            handle(msg)
            if (msg.get("params") or {}).get("name") == "close_stdin":
                while True:  # alive, reading nothing
                    time.sleep(1)
    if "--stay-after-eof" in argv:
        while True:
            time.sleep(1)


if __name__ == "__main__":
    main()
