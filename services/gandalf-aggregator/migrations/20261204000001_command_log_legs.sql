-- One record per command and leg: aggregators sharing a tenant database, and a command
-- passing one aggregator twice (to the cluster, then back to a connector there), each
-- keep their own record instead of dropping each other's.
ALTER TABLE gandalf_command_log ADD COLUMN IF NOT EXISTS leg TEXT NOT NULL DEFAULT 'to_cluster';
ALTER TABLE gandalf_command_log DROP CONSTRAINT IF EXISTS gandalf_command_log_pkey;
ALTER TABLE gandalf_command_log ADD PRIMARY KEY (aggregator, uuid, leg);
CREATE INDEX IF NOT EXISTS gandalf_command_log_uuid ON gandalf_command_log (uuid);
