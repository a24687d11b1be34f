-- Delivery tracking of API keys: a created key is pending until a delivery (a Secret
-- patch, a keys file) succeeded and was durable. Every run delivers every pending key.
CREATE TABLE IF NOT EXISTS api_key_deliveries (
    client_name  TEXT PRIMARY KEY REFERENCES client_configurations (client_name),
    created_at   TIMESTAMPTZ NOT NULL,
    delivered_at TIMESTAMPTZ,
    delivered_to TEXT
);

CREATE INDEX IF NOT EXISTS api_key_deliveries_pending
    ON api_key_deliveries (client_name) WHERE delivered_at IS NULL;

-- Keys created before delivery was tracked were never exported by the job (they sit only
-- in client_configurations): they are pending, so the next run with a target delivers them.
INSERT INTO api_key_deliveries (client_name, created_at)
SELECT client_name, now() FROM client_configurations
ON CONFLICT DO NOTHING;
