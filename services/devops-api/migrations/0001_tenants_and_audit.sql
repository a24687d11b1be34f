-- devops-api's own state, in the schema devops_api of the admin connection's database
-- (the migrator runs with search_path = devops_api).

-- Every tenant the API was asked to manage, and what it recorded of it.
CREATE TABLE tenants (
    name text PRIMARY KEY,
    -- The spec of the last PUT, as sent.
    spec jsonb NOT NULL,
    database text NOT NULL,
    -- Whether the API created the database (DELETE mode=drop drops only those).
    created_database boolean NOT NULL DEFAULT false,
    -- login -> sha256 of the SCRAM verifier a client gave for it.
    verifiers jsonb NOT NULL DEFAULT '{}',
    -- active, revoked, dropped
    status text NOT NULL DEFAULT 'active',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Who did what, when, with which plan. Append-only: the triggers below refuse UPDATE,
-- DELETE and TRUNCATE to every role that is not a superuser, the API's own included.
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    request_id text NOT NULL,
    tenant text NOT NULL,
    action text NOT NULL,
    dry_run boolean NOT NULL,
    -- The steps (passwords redacted).
    plan jsonb NOT NULL,
    outcome text NOT NULL,
    detail text
);

CREATE INDEX audit_log_tenant_at ON audit_log (tenant, at);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();
