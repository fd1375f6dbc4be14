-- Upstream transports besides streamable_http (issue 6).
--
-- legacy_sse servers keep their SSE endpoint in `url`. stdio servers have no URL: `url` is
-- NULL and the process is described by `command`, `args` (JSON array of strings), `cwd`
-- (NULL = the gateway's working directory) and `env` (JSON object of string -> string,
-- which may hold secrets: the admin API shows only its keys). `trusted_at` records when an
-- approval confirmed, with {"trust_stdio": true}, that the command is trusted and
-- self-hosted; only stdio servers carry it, and only trusted ones reach a projection.
ALTER TABLE mcp_servers
    ALTER COLUMN url DROP NOT NULL,
    ADD COLUMN command    text,
    ADD COLUMN args       jsonb,
    ADD COLUMN cwd        text,
    ADD COLUMN env        jsonb,
    ADD COLUMN trusted_at timestamptz,
    ADD CONSTRAINT mcp_servers_transport_fields CHECK (
        CASE WHEN transport = 'stdio'
            THEN url IS NULL AND command IS NOT NULL AND args IS NOT NULL AND env IS NOT NULL
            ELSE url IS NOT NULL AND command IS NULL AND args IS NULL AND cwd IS NULL AND env IS NULL
                 AND trusted_at IS NULL
        END
    );
