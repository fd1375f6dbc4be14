-- What an approval pins besides tools: the server's MCP capabilities (as it declared them in
-- its initialize result or server/discover answer) and its prompts, in the upstream's order.
-- Servers approved before this migration have no capabilities recorded: re-approve them to
-- serve their resources and prompts.
ALTER TABLE mcp_servers ADD COLUMN capabilities jsonb NOT NULL DEFAULT '{}'::jsonb;

CREATE TABLE mcp_server_prompts (
    tenant       text    NOT NULL,
    environment  text    NOT NULL,
    server_name  text    NOT NULL,
    prompt_name  text    NOT NULL,
    position     integer NOT NULL,
    definition   jsonb   NOT NULL,
    sha256       text    NOT NULL,
    PRIMARY KEY (tenant, environment, server_name, prompt_name),
    FOREIGN KEY (tenant, environment, server_name)
        REFERENCES mcp_servers (tenant, environment, name) ON DELETE CASCADE
);
