"""Helpers to search process logs (e.g. assert a secret canary never leaked)."""

from __future__ import annotations

from pathlib import Path


def iter_log_files(root: str | Path) -> list[Path]:
    """All regular files below ``root`` (recursively), sorted."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file())


def files_containing(root: str | Path, needle: str | bytes) -> list[Path]:
    """Files below ``root`` whose bytes contain ``needle``."""
    raw = needle.encode() if isinstance(needle, str) else needle
    return [p for p in iter_log_files(root) if raw in p.read_bytes()]


def assert_not_in_logs(root: str | Path, needle: str | bytes) -> None:
    hits = files_containing(root, needle)
    assert not hits, f"{needle!r} found in log files: {[str(p) for p in hits]}"
