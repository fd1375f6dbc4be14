"""The API-to-MCP adapter: REST APIs described by OpenAPI 3.0/3.1 served as governed MCP tools.

* :mod:`~gateway.apiadapter.binding` — what one tool means on the wire (an operation's
  method, path template, parameters and body): the contract between the compiler and the caller;
* :mod:`~gateway.apiadapter.documents`, :mod:`~gateway.apiadapter.schemas`,
  :mod:`~gateway.apiadapter.operations` — the control plane's side: an OpenAPI document
  (validated with ``openapi-spec-validator``, local ``$ref`` only) compiled into MCP tool
  definitions and their bindings;
* :mod:`~gateway.apiadapter.request`, :mod:`~gateway.apiadapter.response`,
  :mod:`~gateway.apiadapter.guard`, :mod:`~gateway.apiadapter.upstream` — the data plane's
  side: a ``tools/call`` turned into one HTTP request (httpx, brokered credential, the
  address guard against SSRF) and its response into a ``CallToolResult``.

See docs/api-adapter.md.
"""
