//! What exists, read from PostgreSQL's catalogs: the tenant's roles (`pg_roles`,
//! `pg_db_role_setting`), memberships (`pg_auth_members`), its database (`pg_database`
//! ACL), and in that database its schema (`pg_namespace` ACL), default privileges
//! (`pg_default_acl`), the extensions (`pg_extension`) and what PUBLIC may do in `public`.
//! ACLs are read through `aclexplode` over `acldefault` when the column is NULL, so an
//! object never granted on reads as what PostgreSQL really allows.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sqlx::PgConnection;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// A grantee and a privilege (`PUBLIC` for the public pseudo-role).
pub type Grant = (String, String);

/// A role as `pg_roles` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleState {
    pub name: String,
    pub can_login: bool,
    pub connection_limit: i32,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_until: Option<OffsetDateTime>,
    /// Its settings in every database (`role=acme_owner`, ...).
    pub settings: Vec<String>,
    /// The groups it is a member of.
    pub member_of: Vec<String>,
}

/// What the tenant's database holds of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Local {
    /// The schema's owner, when the schema exists.
    pub schema_owner: Option<String>,
    pub schema_grants: BTreeSet<Grant>,
    /// `(object type, grantee, privilege)` defaults for objects the owner creates in the
    /// schema: `r` tables, `S` sequences.
    pub default_grants: BTreeSet<(String, String, String)>,
    pub extensions: BTreeSet<String>,
    /// What PUBLIC may do in the `public` schema.
    pub public_schema_grants: BTreeSet<String>,
}

/// Everything the plan is made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub roles: BTreeMap<String, RoleState>,
    pub database_exists: bool,
    pub database_grants: BTreeSet<Grant>,
    /// `None` when the database does not exist (yet).
    pub local: Option<Local>,
}

/// `pg_roles` row: name, can login, connection limit, valid until, settings, groups.
type RoleRow = (
    String,
    bool,
    i32,
    Option<OffsetDateTime>,
    Vec<String>,
    Vec<String>,
);

/// The cluster-wide part: roles and the database.
pub async fn read_global(
    conn: &mut PgConnection,
    roles: &[String],
    database: &str,
) -> Result<State, sqlx::Error> {
    let rows: Vec<RoleRow> = sqlx::query_as(
        "SELECT r.rolname, r.rolcanlogin, r.rolconnlimit,
                    CASE WHEN isfinite(r.rolvaliduntil) THEN r.rolvaliduntil END,
                    COALESCE((SELECT s.setconfig FROM pg_db_role_setting s
                              WHERE s.setrole = r.oid AND s.setdatabase = 0), '{}'),
                    ARRAY(SELECT g.rolname::text FROM pg_auth_members m
                          JOIN pg_roles g ON g.oid = m.roleid
                          WHERE m.member = r.oid ORDER BY 1)
             FROM pg_roles r WHERE r.rolname = ANY($1)",
    )
    .bind(roles)
    .fetch_all(&mut *conn)
    .await?;
    let roles = rows
        .into_iter()
        .map(
            |(name, can_login, connection_limit, valid_until, settings, member_of)| {
                (
                    name.clone(),
                    RoleState {
                        name,
                        can_login,
                        connection_limit,
                        valid_until,
                        settings,
                        member_of,
                    },
                )
            },
        )
        .collect();
    let grants: Vec<(String, String)> = sqlx::query_as(
        "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
                a.privilege_type
         FROM pg_database d, aclexplode(COALESCE(d.datacl, acldefault('d', d.datdba))) a
         WHERE d.datname = $1",
    )
    .bind(database)
    .fetch_all(&mut *conn)
    .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(database)
            .fetch_one(&mut *conn)
            .await?;
    Ok(State {
        roles,
        database_exists: exists,
        database_grants: grants.into_iter().collect(),
        local: None,
    })
}

/// The part in the tenant's database (read on a connection to it).
pub async fn read_local(conn: &mut PgConnection, schema: &str) -> Result<Local, sqlx::Error> {
    let owner: Option<String> =
        sqlx::query_scalar("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1")
            .bind(schema)
            .fetch_optional(&mut *conn)
            .await?;
    let schema_grants: Vec<(String, String)> = sqlx::query_as(
        "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
                a.privilege_type
         FROM pg_namespace n, aclexplode(COALESCE(n.nspacl, acldefault('n', n.nspowner))) a
         WHERE n.nspname = $1",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await?;
    let default_grants: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT d.defaclobjtype::text,
                CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
                a.privilege_type
         FROM pg_default_acl d
         JOIN pg_namespace n ON n.oid = d.defaclnamespace,
         aclexplode(d.defaclacl) a
         WHERE n.nspname = $1 AND d.defaclrole = (SELECT nspowner FROM pg_namespace WHERE nspname = $1)",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await?;
    let extensions: Vec<String> = sqlx::query_scalar("SELECT extname::text FROM pg_extension")
        .fetch_all(&mut *conn)
        .await?;
    let public: Vec<String> = sqlx::query_scalar(
        "SELECT a.privilege_type
         FROM pg_namespace n, aclexplode(COALESCE(n.nspacl, acldefault('n', n.nspowner))) a
         WHERE n.nspname = 'public' AND a.grantee = 0",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(Local {
        schema_owner: owner,
        schema_grants: schema_grants.into_iter().collect(),
        default_grants: default_grants.into_iter().collect(),
        extensions: extensions.into_iter().collect(),
        public_schema_grants: public.into_iter().collect(),
    })
}
