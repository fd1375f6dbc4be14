"""MCP gateway with an OPA-governed control plane."""

__version__ = "0.1.0"
