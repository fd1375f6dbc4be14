"""Map asyncpg exceptions onto the gateway error tree at the adapter boundary."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg

from gateway.errors import ConflictError, GatewayError, RequestRejected

__all__ = ["map_db_errors"]


@contextlib.contextmanager
def map_db_errors(what: str) -> Iterator[None]:
    """Re-raise asyncpg errors as the most specific :class:`GatewayError`.

    ``str()`` of the asyncpg error (it may carry row data in DETAIL) stays on the
    chained ``__cause__`` for operator logs; the new message names only ``what``.

    Args:
        what: A short, safe description of the record (``"server 'github'"``).

    Raises:
        ConflictError: Unique or exclusion violation.
        RequestRejected: Check, not-null or foreign-key violation, bad value.
        GatewayError: Any other database failure (``internal_error``).
    """
    try:
        yield
    except (asyncpg.UniqueViolationError, asyncpg.ExclusionViolationError) as exc:
        raise ConflictError(f"{what} already exists") from exc
    except (
        asyncpg.CheckViolationError,
        asyncpg.NotNullViolationError,
        asyncpg.ForeignKeyViolationError,
        asyncpg.DataError,
    ) as exc:
        raise RequestRejected(f"{what} violates a constraint") from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise GatewayError(f"database error on {what}") from exc
