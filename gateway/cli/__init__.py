"""``gatewayctl``: the command-line client of the control plane's admin API (typer + rich).

A pure HTTP client: it imports nothing else from ``gateway`` (an import-linter contract keeps
it so), talks to ``/v1/...`` with the admin bearer token, and never prints that token.

Modules: :mod:`~gateway.cli.settings` (URL/token from flags, environment or config file),
:mod:`~gateway.cli.client` (HTTP calls and the exit codes of failures),
:mod:`~gateway.cli.output` (table/json/ndjson/csv rendering), :mod:`~gateway.cli.main` (the
typer app and its commands), :mod:`~gateway.cli.localtest` (``opa test`` run locally).
"""
