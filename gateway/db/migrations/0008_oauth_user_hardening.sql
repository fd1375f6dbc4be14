-- Per-user OAuth hardening (docs/credentials.md "Per-user OAuth"):
-- * connect handles and OAuth `state` are stored as SHA-256 digests (a database reader gets no
--   bearer), and the browser that confirmed the connect is bound by the digest of its nonce;
-- * where the tokens go (issuer, token endpoint, redirect URI) moves inside the sealed body, so
--   a database writer cannot send a user's refresh token to another endpoint;
-- * refreshes are serialized across control-plane processes by a lease on the row, and every
--   write is conditional on the generation it read; forced refreshes are rate-bounded.
-- Pending connects and stored user tokens of the 0007 layout are dropped: their users connect
-- again (the 0007 rows kept the endpoints outside the seal).
DELETE FROM oauth_connects;
ALTER TABLE oauth_connects DROP COLUMN issuer, DROP COLUMN token_endpoint, DROP COLUMN redirect_uri;
ALTER TABLE oauth_connects ADD COLUMN browser_hash text;
ALTER TABLE oauth_connects ADD CONSTRAINT oauth_connects_state_sealed
    CHECK (state IS NULL OR (browser_hash IS NOT NULL AND kek_id IS NOT NULL));

DELETE FROM credential_user_tokens;
ALTER TABLE credential_user_tokens DROP COLUMN issuer, DROP COLUMN token_endpoint;
ALTER TABLE credential_user_tokens ADD COLUMN generation bigint NOT NULL DEFAULT 0;
ALTER TABLE credential_user_tokens ADD COLUMN refresh_lease_until timestamptz;
-- When a refresh was last forced (an upstream answered 401 to the access token): bounds forced
-- refreshes to one per interval per user across data planes and control-plane processes.
ALTER TABLE credential_user_tokens ADD COLUMN forced_refresh_at timestamptz;
