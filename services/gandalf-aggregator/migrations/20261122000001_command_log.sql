-- Every command the aggregator routed, with its outcome.
CREATE TABLE IF NOT EXISTS gandalf_command_log (
    uuid            TEXT PRIMARY KEY,
    aggregator      TEXT NOT NULL,
    tenant          TEXT NOT NULL,
    command         TEXT NOT NULL,
    origin          TEXT NOT NULL,
    outcome         TEXT NOT NULL,      -- acknowledged | undeliverable
    acknowledged_by TEXT,
    latency_ms      BIGINT NOT NULL,
    routed_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS gandalf_command_log_routed_at ON gandalf_command_log (routed_at);
