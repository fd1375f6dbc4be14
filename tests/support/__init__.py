"""Reusable test infrastructure: ports, managed subprocesses, PostgreSQL, logs."""
