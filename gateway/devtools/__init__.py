"""Development-only helpers (local demos and tests). Nothing here is meant for production."""
