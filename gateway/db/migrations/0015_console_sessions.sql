-- Web console sessions (issue 9, gateway.controlplane.console). The cookie holds a random
-- 256-bit session id; only its SHA-256 is stored, so a copy of this table opens no session.
-- The pasted admin credential is never stored: only who it named (subject, issuer), the known
-- roles its token carried (role grants are re-read on every request) and whether it was the
-- bootstrap token. A bootstrap session also stores admin_token_hmac, HMAC-SHA256 keyed by the
-- admin token it signed in with over the label 'gateway-console-bootstrap-session' (never the
-- token): the console refuses the session once the configured admin token no longer gives the
-- same digest (rotated) or is switched off. csrf_token is the session's synchronizer token.
-- expires_at = min(the JWT's exp, sign-in + 8 h); sign-out deletes the row.
CREATE TABLE console_sessions (
    id_sha256        bytea       PRIMARY KEY CHECK (octet_length(id_sha256) = 32),
    tenant           text        NOT NULL,
    environment      text        NOT NULL,
    subject          text        NOT NULL CHECK (length(btrim(subject)) > 0),
    issuer           text        NOT NULL,
    token_roles      jsonb       NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(token_roles) = 'array'),
    bootstrap        boolean     NOT NULL,
    admin_token_hmac bytea       CHECK (octet_length(admin_token_hmac) = 32),
    csrf_token       text        NOT NULL CHECK (length(csrf_token) >= 32),
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    last_seen_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (expires_at > created_at),
    CHECK (bootstrap = (admin_token_hmac IS NOT NULL))
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
