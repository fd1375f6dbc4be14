"""The admin API client of ``gatewayctl``: one synchronous httpx client, errors mapped to exit codes."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

from gateway.cli.errors import CliError, ExitCode

__all__ = ["AdminClient", "api_error"]

USER_AGENT = "gatewayctl"


def _problem_lines(body: dict[str, Any]) -> list[str]:
    """``file:line: message`` lines of a ``policy_rejected`` body's ``errors`` (and of similar lists)."""
    lines: list[str] = []
    errors = body.get("errors")
    if isinstance(errors, list):
        for e in errors:
            if not isinstance(e, dict):
                lines.append(str(e))
                continue
            where = ":".join(str(e[k]) for k in ("file", "line") if e.get(k) is not None)
            code = f" [{e['code']}]" if e.get("code") else ""
            lines.append(f"{where + ': ' if where else ''}{e.get('message', '')}{code}")
    return lines


def api_error(response: httpx.Response) -> CliError:
    """The :class:`CliError` (exit 1) for a 4xx/5xx answer: ``<status> <error>: <message>``.

    The control plane's error body is ``{"error": <category>, "message": <text>, "request_id"}``
    (``errors`` too for ``policy_rejected``); any other body is summarised by its status.
    """
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = str(body.get("message") or "").strip()
        text = f"{response.status_code} {body['error']}" + (f": {message}" if message else "")
        if body.get("request_id"):
            text += f" (request_id {body['request_id']})"
        return CliError(text, ExitCode.API, _problem_lines(body))
    reason = response.reason_phrase or "error"
    return CliError(f"{response.status_code} {reason} from {response.request.method} {response.url.path}")


class AdminClient:
    """Calls ``<url>/v1/...`` with ``Authorization: Bearer <token>``.

    Every method returns the decoded JSON body (None for an empty body) of a 2xx answer and
    raises :class:`CliError`: exit 1 for a 4xx/5xx answer, exit 3 when the control plane
    cannot be reached or a request takes longer than ``timeout`` seconds.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None):
        self.url = url
        self._http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT, "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None, send_json: bool = False
    ) -> Any:
        """``method path`` with an optional JSON body (sent when ``json`` is not None or ``send_json``).

        ``params`` with None values are left out. Raises :class:`CliError` as described on the class.
        """
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            if json is not None or send_json:
                response = self._http.request(method, path, json=json, params=query)
            else:
                response = self._http.request(method, path, params=query)
        except httpx.TimeoutException:
            raise CliError(f"{method} {self.url}{path} timed out", ExitCode.CONNECTION) from None
        except httpx.InvalidURL as e:
            raise CliError(f"invalid control plane URL {self.url!r}: {e}", ExitCode.USAGE) from None
        except httpx.UnsupportedProtocol:
            raise CliError(f"invalid control plane URL {self.url!r}: use http:// or https://", ExitCode.USAGE) from None
        except httpx.TransportError as e:
            reason = str(e) or type(e).__name__
            raise CliError(f"cannot reach the control plane at {self.url}: {reason}", ExitCode.CONNECTION) from None
        if response.status_code >= 400:
            raise api_error(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise CliError(f"{method} {path}: the answer is not JSON", ExitCode.API) from None

    def get(self, path: str, **params: Any) -> Any:
        """``GET path?params``."""
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        """``POST path`` with a JSON body (an empty body when ``body`` is None)."""
        return self.request("POST", path, json=body)

    def delete(self, path: str) -> Any:
        """``DELETE path``."""
        return self.request("DELETE", path)
