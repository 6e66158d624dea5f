-- Files uploaded through the Files API. The bodies live encrypted in the home folder's `files/`
-- (see `vault`); a row exists only for a body written whole.

CREATE TABLE files (
    id             TEXT PRIMARY KEY,
    -- The key that uploaded the file: the only one that sees it.
    key_id         TEXT NOT NULL,
    filename       TEXT NOT NULL,
    purpose        TEXT NOT NULL,
    bytes          BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    -- The file's data key, sealed under the master key named by `master_key_id`.
    wrapped_key    BLOB NOT NULL,
    master_key_id  TEXT NOT NULL
);
CREATE INDEX files_by_key ON files (key_id, created_at);
