-- The aggregation database's client tables (names fixed: operators query them) and the
-- job's audit trail.
-- SQLite flavour: timestamps are RFC 3339 text, JSON is text, booleans are 0/1.

CREATE TABLE IF NOT EXISTS cluster_configurations (
    cluster_id                  TEXT PRIMARY KEY,
    host                        TEXT,
    api_token                   TEXT,
    base64_encoded_client_cert  TEXT,
    disable_request_compression INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS aggregator_configurations (
    aggregator_id   TEXT PRIMARY KEY,
    aggregator_info TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS client_configurations (
    client_name    TEXT PRIMARY KEY,
    api_client_key TEXT NOT NULL UNIQUE,
    cluster_id     TEXT NOT NULL REFERENCES cluster_configurations (cluster_id),
    aggregator_id  TEXT NOT NULL REFERENCES aggregator_configurations (aggregator_id)
);

CREATE TABLE IF NOT EXISTS crypto_configurations (
    client_name        TEXT NOT NULL REFERENCES client_configurations (client_name),
    key_id             INTEGER NOT NULL,
    base64_encoded_key TEXT NOT NULL,
    PRIMARY KEY (client_name, key_id)
);

CREATE TABLE IF NOT EXISTS provisioning_runs (
    run_id        TEXT PRIMARY KEY,
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    config_sha256 TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    summary_json  TEXT
);

CREATE INDEX IF NOT EXISTS provisioning_runs_started_at ON provisioning_runs (started_at);
