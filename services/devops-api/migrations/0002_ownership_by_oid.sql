-- Ownership by identity: what each tenant's PUTs created, by OID. Nothing that is not
-- listed here for a tenant is ever altered, granted to, rotated, revoked or dropped for it.
CREATE TABLE owned (
    tenant text NOT NULL REFERENCES tenants (name),
    -- role, schema, database
    kind text NOT NULL CHECK (kind IN ('role', 'schema', 'database')),
    -- The OID of the database a schema lives in; 0 for roles and databases (cluster-wide).
    scope oid NOT NULL DEFAULT 0,
    oid oid NOT NULL,
    -- The name when it was created (the OID is the identity; the name is for people).
    name text NOT NULL,
    -- For roles: owner, writer, reader or login.
    role_kind text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, scope, oid)
);

CREATE INDEX owned_tenant ON owned (tenant);

-- The database flag is replaced by the database's OID in `owned` (a flag that was never
-- reset could drop a database a tenant did not create).
INSERT INTO owned (tenant, kind, scope, oid, name)
SELECT t.name, 'database', 0, d.oid, d.datname
FROM tenants t JOIN pg_catalog.pg_database d ON d.datname = t.database
WHERE t.created_database AND t.status <> 'dropped'
ON CONFLICT DO NOTHING;

-- The roles the previous version recorded by name: its group roles and declared logins.
INSERT INTO owned (tenant, kind, scope, oid, name, role_kind)
SELECT t.name, 'role', 0, r.oid, r.rolname,
       CASE WHEN r.rolname = t.name || '_owner' THEN 'owner'
            WHEN r.rolname = t.name || '_writer' THEN 'writer'
            WHEN r.rolname = t.name || '_reader' THEN 'reader'
            ELSE 'login' END
FROM tenants t
JOIN pg_catalog.pg_roles r
  ON r.rolname IN (t.name || '_owner', t.name || '_writer', t.name || '_reader')
  OR r.rolname IN (SELECT l ->> 'name' FROM pg_catalog.jsonb_array_elements(
                       COALESCE(t.spec -> 'logins', '[]'::jsonb)) l)
WHERE t.status <> 'dropped' AND NOT r.rolsuper
ON CONFLICT DO NOTHING;

ALTER TABLE tenants DROP COLUMN created_database;

-- A verifier a client gave is never kept: the hash in `verifiers` is enough.
UPDATE tenants SET spec = jsonb_set(spec, '{logins}', (
    SELECT COALESCE(jsonb_agg(CASE WHEN l #> '{password,scramVerifier}' IS NOT NULL
                                   AND l #>> '{password,scramVerifier}' IS NOT NULL
                              THEN jsonb_set(l, '{password,scramVerifier}', '"<redacted>"')
                              ELSE l END), '[]'::jsonb)
    FROM jsonb_array_elements(spec -> 'logins') l))
WHERE spec ? 'logins' AND jsonb_typeof(spec -> 'logins') = 'array';

-- The locks changes take (FOR UPDATE on a key's row): a tenant, new tenant names, a
-- database. Rows, not advisory locks: those any login connected to this database could
-- take, and hold every change of a tenant.
CREATE TABLE locks (
    key text PRIMARY KEY
);
