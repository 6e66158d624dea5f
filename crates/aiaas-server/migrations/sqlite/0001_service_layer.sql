-- Keys, usage and the audit log (SQLite; `INTEGER PRIMARY KEY` is its auto-assigned row id).

CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    -- The first characters of the key, shown in listings to tell keys apart.
    prefix          TEXT NOT NULL,
    -- SHA-256 of the key, hex. The key itself is never stored.
    hash            TEXT NOT NULL UNIQUE,
    admin           BOOLEAN NOT NULL,
    -- Comma-separated model ids, or '*' for every model.
    models          TEXT NOT NULL,
    rpm             BIGINT,
    tpm             BIGINT,
    daily_tokens    BIGINT,
    monthly_tokens  BIGINT,
    expires_at      BIGINT,
    created_at      BIGINT NOT NULL,
    revoked_at      BIGINT,
    last_used_at    BIGINT
);

CREATE TABLE usage_records (
    id                 INTEGER PRIMARY KEY,
    key_id             TEXT NOT NULL,
    model              TEXT NOT NULL,
    route              TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    status             INTEGER NOT NULL,
    latency_ms         BIGINT NOT NULL
);
CREATE INDEX usage_by_key_time ON usage_records (key_id, created_at);
CREATE INDEX usage_by_time ON usage_records (created_at);

CREATE TABLE audit_log (
    id            INTEGER PRIMARY KEY,
    at            BIGINT NOT NULL,
    actor_key_id  TEXT,
    action        TEXT NOT NULL,
    target_key_id TEXT,
    detail        TEXT NOT NULL
);
