"""PostgreSQL access for the control plane: pool, migrations, one module per aggregate.

Aggregates: ``servers`` (registry + pinned tools), ``policies`` (policy versions),
``projections`` (compiled routing tables and bundles), ``instances`` (data-plane and
OPA reports), ``audit`` (runtime decision events and OPA decision logs). SQL lives in
module constants; every function takes a ``Connection`` (or ``Pool``) and a scope.
"""

from gateway.db.migrate import apply_migrations
from gateway.db.pool import create_pool

__all__ = ["apply_migrations", "create_pool"]
