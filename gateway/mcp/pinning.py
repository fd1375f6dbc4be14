"""Canonical form and hash of a pinned MCP definition (tool or prompt), shared by both planes.

The control plane pins each tool at approval with :func:`definition_sha256` of its wire
form as the MCP SDK parses it (:func:`canonical_tool`); the data plane re-lists the
upstream's tools and compares the same hash to detect drift (a "rug pull").
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from mcp.types import Tool

__all__ = ["DRIFT_FIELDS", "canonical_tool", "definition_sha256"]

DRIFT_FIELDS = ("title", "description", "inputSchema", "outputSchema", "annotations")
"""The tool fields a re-approval diff names when they changed (any other change is ``other``)."""


def definition_sha256(definition: dict[str, Any]) -> str:
    """Return the hex SHA-256 of ``definition`` as canonical JSON (orjson, sorted keys, compact)."""
    return hashlib.sha256(orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)).hexdigest()


def canonical_tool(raw: dict[str, Any]) -> dict[str, Any]:
    """Return a raw ``tools/list`` item (MCP ``Tool``, any revision) in the wire form the
    control plane pins: parsed by the SDK's ``mcp.types.Tool``, dumped by alias, JSON
    mode, None fields dropped.

    Raises:
        pydantic.ValidationError: ``raw`` is not a valid MCP ``Tool``.
    """
    return Tool.model_validate(raw).model_dump(by_alias=True, mode="json", exclude_none=True)
