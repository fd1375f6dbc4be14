-- API sources (issue 12, gateway.apiadapter): REST APIs described by an OpenAPI 3.0/3.1 document,
-- served as MCP tools. An API source is an upstream like an MCP server: it has a row in
-- mcp_servers (transport 'openapi', url = its base URL), so upstream names stay one namespace
-- (`<name>__<tool>` on /mcp, /mcp/<name>), its pinned tools live in mcp_server_tools and its
-- credential bindings in credential_bindings, exactly as a server's. This table holds what only
-- an API source has: the document as registered (its text, so operation order survives), the
-- operation selection and overrides, options, the compiled operations (pinned at approval: what
-- the data plane sends for each tool) and internal_at (set when an approval marked the source
-- internal: loopback, link-local and private addresses may then be reached).
ALTER TABLE mcp_servers DROP CONSTRAINT mcp_servers_transport_check;
ALTER TABLE mcp_servers ADD CONSTRAINT mcp_servers_transport_check
    CHECK (transport IN ('streamable_http', 'legacy_sse', 'stdio', 'openapi'));

CREATE TABLE api_sources (
    tenant           text        NOT NULL,
    environment      text        NOT NULL,
    name             text        NOT NULL,
    document         text        NOT NULL,
    document_sha256  text        NOT NULL CHECK (document_sha256 ~ '^[0-9a-f]{64}$'),
    openapi_version  text        NOT NULL CHECK (openapi_version IN ('3.0', '3.1')),
    selection        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    overrides        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    options          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    tools            jsonb       NOT NULL,
    operations       jsonb       NOT NULL,
    report           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    internal_at      timestamptz,
    PRIMARY KEY (tenant, environment, name),
    FOREIGN KEY (tenant, environment, name)
        REFERENCES mcp_servers (tenant, environment, name) ON DELETE CASCADE
);
