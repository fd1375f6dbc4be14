-- Session events (issue 11, gateway.dataplane.session_events): what a sealed MCP session id
-- cannot carry, shared by every data plane. A data plane that ends a session (DELETE) or
-- takes a client's logging/setLevel posts an event; every data plane polls the feed and
-- applies it to the sessions it holds. Rows name a session by its public reference
-- (sr-<24 hex> of SHA-256 of the id), never the id. expires_at is when the session's id stops
-- opening anyway (its start + the data planes' session max age): the row is useless after it.
CREATE TABLE session_events (
    seq          bigserial   PRIMARY KEY,
    tenant       text        NOT NULL,
    environment  text        NOT NULL,
    session_ref  text        NOT NULL CHECK (session_ref ~ '^sr-[0-9a-f]{24}$'),
    kind         text        NOT NULL CHECK (kind IN ('ended', 'log_level')),
    value        text        CHECK (value IS NULL OR length(value) <= 16),
    dataplane_id text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX session_events_feed ON session_events (tenant, environment, seq);
CREATE INDEX session_events_expiry ON session_events (expires_at);
