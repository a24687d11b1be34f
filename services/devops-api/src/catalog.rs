//! What exists, read from PostgreSQL's catalogs, everything a tenant's convergence
//! depends on: its roles with every attribute (`pg_roles`), their settings in every
//! database (`pg_db_role_setting`), memberships both ways (`pg_auth_members`), its
//! database (`pg_database` and its ACL), and in that database its schema, the tables,
//! sequences and functions in it with their ACLs, the default privileges there
//! (`pg_default_acl`), the extensions and what PUBLIC may do in `public`.
//!
//! ACLs are read through `aclexplode` over `acldefault` when the column is NULL, so an
//! object never granted on reads as what PostgreSQL really allows. Every function is
//! called schema-qualified (the API's sessions also pin `search_path`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sqlx::{PgConnection, postgres::types::Oid};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// The grantee name PUBLIC is shown as.
pub const PUBLIC: &str = "PUBLIC";

/// One ACL entry: who has which privilege, granted by whom.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    /// A role name, or [`PUBLIC`].
    pub grantee: String,
    /// The grantee's OID (0 for PUBLIC).
    pub grantee_oid: u32,
    pub privilege: String,
    pub grantor: String,
    /// Held WITH GRANT OPTION: the grantee may pass it on.
    pub grantable: bool,
}

/// A role's setting (`ALTER ROLE ... [IN DATABASE ...] SET`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Setting {
    /// The database it applies in; none: every database.
    pub database: Option<String>,
    /// `name=value`, as the catalog holds it.
    pub setting: String,
}

impl Setting {
    /// The parameter's name.
    pub fn name(&self) -> &str {
        self.setting
            .split_once('=')
            .map_or(self.setting.as_str(), |(n, _)| n)
    }
}

/// A membership: `member` is a member of `role`, granted by `grantor`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Membership {
    pub role: String,
    pub member: String,
    pub grantor: String,
}

/// A role as `pg_roles` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleState {
    pub name: String,
    #[serde(skip)]
    pub oid: u32,
    pub superuser: bool,
    pub create_role: bool,
    pub create_db: bool,
    pub bypass_rls: bool,
    pub replication: bool,
    pub inherit: bool,
    pub can_login: bool,
    pub connection_limit: i32,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_until: Option<OffsetDateTime>,
    /// Its settings, in every database and per database.
    pub settings: Vec<Setting>,
    /// The roles it is a member of.
    pub member_of: Vec<String>,
}

/// A table, view, sequence or function in the tenant's schema, with its ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// `TABLE`, `SEQUENCE`, `FUNCTION` (functions, aggregates, window functions),
    /// `PROCEDURE` or `TYPE`: the word GRANT takes (`ROUTINE` would be ambiguous between
    /// a procedure and a function whose arguments read alike).
    pub kind: &'static str,
    /// The object as a statement names it: `"schema"."table"`, for a routine its
    /// `regprocedure` text and for a type its `regtype` text (PostgreSQL's own quoting).
    pub target: String,
    pub owner: String,
    pub acl: Vec<Entry>,
}

/// A default-privileges entry in the tenant's schema.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DefaultEntry {
    /// The role whose future objects it is about.
    pub role: String,
    /// `r` tables, `S` sequences, `f` functions, `T` types.
    pub object_type: String,
    pub grantee: String,
    pub privilege: String,
    pub grantable: bool,
}

/// What the tenant's database holds of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Local {
    /// The schema's OID, when it exists.
    pub schema_oid: Option<u32>,
    /// The schema's owner, when it exists.
    pub schema_owner: Option<String>,
    pub schema_owner_oid: Option<u32>,
    pub schema_acl: Vec<Entry>,
    /// Tables, views, sequences and functions in the schema.
    pub objects: Vec<Object>,
    pub default_acl: BTreeSet<DefaultEntry>,
    /// Extensions installed in the database (one copy each), and the schema each is in.
    pub extensions: BTreeMap<String, String>,
    /// What PUBLIC may do in the `public` schema.
    pub public_schema_grants: BTreeSet<String>,
}

/// The database as `pg_database` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseState {
    pub oid: u32,
    pub owner: String,
    pub is_template: bool,
    pub allow_connections: bool,
    /// `UTF8`, `SQL_ASCII`, ...
    pub encoding: String,
    pub acl: Vec<Entry>,
}

/// Who the API is on the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Server {
    /// `current_user`: the admin role.
    pub admin: String,
    /// `server_version_num`.
    pub version: i32,
    /// Whether the admin role is a superuser.
    pub superuser: bool,
}

impl Server {
    /// Whether the admin must be made a member of each role it creates to act for it
    /// (create its schema, set its default privileges, drop what it owns, end its
    /// sessions): a role with CREATEROLE that is not a superuser, before PostgreSQL 16
    /// (from 16 on, `createrole_self_grant` gives the admin the roles it creates).
    pub fn grants_itself(&self) -> bool {
        !self.superuser && self.version < 160_000
    }
}

/// Everything a plan is made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub server: Server,
    /// The tenant's roles that exist, by name.
    pub roles: BTreeMap<String, RoleState>,
    /// Every membership in or of the tenant's roles.
    pub memberships: Vec<Membership>,
    /// `None` when the database does not exist (yet).
    pub database: Option<DatabaseState>,
    /// `None` when the database does not exist (yet), or was not read.
    pub local: Option<Local>,
}

impl State {
    pub fn database_exists(&self) -> bool {
        self.database.is_some()
    }
}

/// `pg_roles` row.
type RoleRow = (
    String,
    Oid,
    bool,
    bool,
    bool,
    bool,
    bool,
    bool,
    bool,
    i32,
    Option<OffsetDateTime>,
);

/// An entry of an object's ACL as a LEFT JOIN reads it: grantee, grantee OID, privilege,
/// grantor (all NULL for an object with an empty ACL).
type MaybeEntry = (
    Option<String>,
    Option<Oid>,
    Option<String>,
    Option<String>,
    Option<bool>,
);
/// An object's row: its kind (`TABLE`, `SEQUENCE`, `FUNCTION`, `TYPE`), how a statement
/// names it, its owner, then one entry of its ACL.
type ObjectRow = (
    String,
    String,
    String,
    Option<String>,
    Option<Oid>,
    Option<String>,
    Option<String>,
    Option<bool>,
);

/// An exploded ACL row: grantee, grantee OID, privilege, grantor, grant option.
type AclRow = (String, Oid, String, String, bool);

fn entries(rows: Vec<AclRow>) -> Vec<Entry> {
    let mut out: Vec<Entry> = rows
        .into_iter()
        .map(|(grantee, oid, privilege, grantor, grantable)| Entry {
            grantee,
            grantee_oid: oid.0,
            privilege,
            grantor,
            grantable,
        })
        .collect();
    out.sort();
    out
}

/// The grantee's name of an exploded ACL (`PUBLIC` for 0).
const GRANTEE: &str =
    "CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END,
     a.grantee, a.privilege_type, pg_catalog.pg_get_userbyid(a.grantor)::text, a.is_grantable";

/// The cluster-wide part: the server, the roles and the database.
pub async fn read_global(
    conn: &mut PgConnection,
    roles: &[String],
    database: &str,
) -> Result<State, sqlx::Error> {
    let (admin, version, superuser): (String, i32, bool) = sqlx::query_as(
        "SELECT CURRENT_USER::text, pg_catalog.current_setting('server_version_num')::integer,
                (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = CURRENT_USER)",
    )
    .fetch_one(&mut *conn)
    .await?;
    let rows: Vec<RoleRow> = sqlx::query_as(
        "SELECT r.rolname::text, r.oid, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls,
                r.rolreplication, r.rolinherit, r.rolcanlogin, r.rolconnlimit,
                CASE WHEN pg_catalog.isfinite(r.rolvaliduntil) THEN r.rolvaliduntil END
         FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) ANY($1::text[])",
    )
    .bind(roles)
    .fetch_all(&mut *conn)
    .await?;
    let oids: Vec<Oid> = rows.iter().map(|r| r.1).collect();
    let settings: Vec<(Oid, Option<String>, String)> = sqlx::query_as(
        "SELECT s.setrole, d.datname::text, c.setting
         FROM pg_catalog.pg_db_role_setting s
         LEFT JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase,
         pg_catalog.unnest(s.setconfig) AS c(setting)
         WHERE s.setrole = ANY($1::oid[])
         ORDER BY 1, 2 NULLS FIRST, 3",
    )
    .bind(&oids)
    .fetch_all(&mut *conn)
    .await?;
    let memberships: Vec<(String, String, String, Oid, Oid)> = sqlx::query_as(
        "SELECT pg_catalog.pg_get_userbyid(m.roleid)::text, pg_catalog.pg_get_userbyid(m.member)::text,
                pg_catalog.pg_get_userbyid(m.grantor)::text, m.roleid, m.member
         FROM pg_catalog.pg_auth_members m
         WHERE m.roleid = ANY($1::oid[]) OR m.member = ANY($1::oid[])
         ORDER BY 1, 2, 3",
    )
    .bind(&oids)
    .fetch_all(&mut *conn)
    .await?;
    let mut roles: BTreeMap<String, RoleState> = rows
        .into_iter()
        .map(|r| {
            let state = RoleState {
                name: r.0.clone(),
                oid: r.1.0,
                superuser: r.2,
                create_role: r.3,
                create_db: r.4,
                bypass_rls: r.5,
                replication: r.6,
                inherit: r.7,
                can_login: r.8,
                connection_limit: r.9,
                valid_until: r.10,
                settings: Vec::new(),
                member_of: Vec::new(),
            };
            (r.0, state)
        })
        .collect();
    for (role, database, setting) in settings {
        if let Some(state) = roles.values_mut().find(|s| s.oid == role.0) {
            state.settings.push(Setting { database, setting });
        }
    }
    for (role, _, _, _, member_oid) in &memberships {
        if let Some(state) = roles.values_mut().find(|s| s.oid == member_oid.0) {
            state.member_of.push(role.clone());
        }
    }
    let database = read_database(conn, database).await?;
    Ok(State {
        server: Server {
            admin,
            version,
            superuser,
        },
        roles,
        memberships: memberships
            .into_iter()
            .map(|(role, member, grantor, _, _)| Membership {
                role,
                member,
                grantor,
            })
            .collect(),
        database,
        local: None,
    })
}

async fn read_database(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Option<DatabaseState>, sqlx::Error> {
    let row: Option<(Oid, String, bool, bool, String)> = sqlx::query_as(
        "SELECT d.oid, pg_catalog.pg_get_userbyid(d.datdba)::text, d.datistemplate, d.datallowconn,
                pg_catalog.pg_encoding_to_char(d.encoding)::text
         FROM pg_catalog.pg_database d WHERE d.datname = $1::text",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((oid, owner, is_template, allow_connections, encoding)) = row else {
        return Ok(None);
    };
    let acl: Vec<AclRow> = sqlx::query_as(&format!(
        "SELECT {GRANTEE}
         FROM pg_catalog.pg_database d,
              pg_catalog.aclexplode(COALESCE(d.datacl, pg_catalog.acldefault('d'::\"char\", d.datdba))) a
         WHERE d.oid = $1::oid"
    ))
    .bind(oid)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(DatabaseState {
        oid: oid.0,
        owner,
        is_template,
        allow_connections,
        encoding,
        acl: entries(acl),
    }))
}

/// The part in the tenant's database (read on a connection to it).
pub async fn read_local(conn: &mut PgConnection, schema: &str) -> Result<Local, sqlx::Error> {
    let found: Option<(Oid, String, Oid)> = sqlx::query_as(
        "SELECT n.oid, pg_catalog.pg_get_userbyid(n.nspowner)::text, n.nspowner
         FROM pg_catalog.pg_namespace n WHERE n.nspname = $1::text",
    )
    .bind(schema)
    .fetch_optional(&mut *conn)
    .await?;
    let extensions: Vec<(String, String)> = sqlx::query_as(
        "SELECT e.extname::text, n.nspname::text
         FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace",
    )
    .fetch_all(&mut *conn)
    .await?;
    let public: Vec<String> = sqlx::query_scalar(
        "SELECT a.privilege_type
         FROM pg_catalog.pg_namespace n,
              pg_catalog.aclexplode(COALESCE(n.nspacl, pg_catalog.acldefault('n'::\"char\", n.nspowner))) a
         WHERE n.nspname = 'public'::text AND a.grantee = 0::oid",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut local = Local {
        extensions: extensions.into_iter().collect(),
        public_schema_grants: public.into_iter().collect(),
        ..Local::default()
    };
    let Some((oid, owner, owner_oid)) = found else {
        return Ok(local);
    };
    local.schema_oid = Some(oid.0);
    local.schema_owner = Some(owner);
    local.schema_owner_oid = Some(owner_oid.0);
    let acl: Vec<AclRow> = sqlx::query_as(&format!(
        "SELECT {GRANTEE}
         FROM pg_catalog.pg_namespace n,
              pg_catalog.aclexplode(COALESCE(n.nspacl, pg_catalog.acldefault('n'::\"char\", n.nspowner))) a
         WHERE n.oid = $1::oid"
    ))
    .bind(oid)
    .fetch_all(&mut *conn)
    .await?;
    local.schema_acl = entries(acl);
    // Relations, routines and types with their ACL entries, one row per entry (an object
    // with an empty ACL still has one row, with NULL entry columns), an object's rows
    // together.
    let objects: Vec<ObjectRow> = sqlx::query_as(
        "WITH o (kind, target, owner, acl) AS (
             SELECT CASE WHEN c.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
                    pg_catalog.format('%I.%I', n.nspname, c.relname), c.relowner,
                    COALESCE(c.relacl, pg_catalog.acldefault(
                        CASE WHEN c.relkind = 'S' THEN 's'::\"char\" ELSE 'r'::\"char\" END, c.relowner))
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relnamespace = $1::oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
             UNION ALL
             SELECT CASE WHEN p.prokind = 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
                    p.oid::pg_catalog.regprocedure::text, p.proowner,
                    COALESCE(p.proacl, pg_catalog.acldefault('f'::\"char\", p.proowner))
             FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = $1::oid AND p.prokind IN ('f', 'p', 'a', 'w')
               -- A routine over a session's temporary type goes with that session, and
               -- only that session can name it.
               AND NOT EXISTS (
                   SELECT 1 FROM pg_catalog.unnest(p.proargtypes::pg_catalog.oid[]) AS a(typ)
                   JOIN pg_catalog.pg_type y ON y.oid = a.typ
                   JOIN pg_catalog.pg_namespace yn ON yn.oid = y.typnamespace
                   WHERE yn.nspname LIKE 'pg\\_temp\\_%')
             UNION ALL
             SELECT 'TYPE', t.oid::pg_catalog.regtype::text, t.typowner,
                    COALESCE(t.typacl, pg_catalog.acldefault('T'::\"char\", t.typowner))
             FROM pg_catalog.pg_type t LEFT JOIN pg_catalog.pg_class r ON r.oid = t.typrelid
             WHERE t.typnamespace = $1::oid AND t.typcategory <> 'A'
               AND (t.typrelid = 0 OR r.relkind = 'c'))
         SELECT o.kind, o.target, pg_catalog.pg_get_userbyid(o.owner)::text,
                CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END,
                a.grantee, a.privilege_type, pg_catalog.pg_get_userbyid(a.grantor)::text, a.is_grantable
         FROM o LEFT JOIN LATERAL pg_catalog.aclexplode(o.acl) a ON true
         ORDER BY 1, 2, 4, 6",
    )
    .bind(oid)
    .fetch_all(&mut *conn)
    .await?;
    for (kind, target, owner, grantee, grantee_oid, privilege, grantor, grantable) in objects {
        let kind = match kind.as_str() {
            "SEQUENCE" => "SEQUENCE",
            "FUNCTION" => "FUNCTION",
            "PROCEDURE" => "PROCEDURE",
            "TYPE" => "TYPE",
            _ => "TABLE",
        };
        push_entry(
            &mut local.objects,
            kind,
            target,
            owner,
            (grantee, grantee_oid, privilege, grantor, grantable),
        );
    }
    let defaults: Vec<(String, String, String, String, bool)> = sqlx::query_as(
        "SELECT pg_catalog.pg_get_userbyid(d.defaclrole)::text, d.defaclobjtype::text,
                CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END,
                a.privilege_type, a.is_grantable
         FROM pg_catalog.pg_default_acl d, pg_catalog.aclexplode(d.defaclacl) a
         WHERE d.defaclnamespace = $1::oid",
    )
    .bind(oid)
    .fetch_all(&mut *conn)
    .await?;
    local.default_acl = defaults
        .into_iter()
        .map(
            |(role, object_type, grantee, privilege, grantable)| DefaultEntry {
                role,
                object_type,
                grantee,
                privilege,
                grantable,
            },
        )
        .collect();
    Ok(local)
}

/// One exploded row into the list of objects (rows of one object come together).
fn push_entry(
    objects: &mut Vec<Object>,
    kind: &'static str,
    target: String,
    owner: String,
    (grantee, grantee_oid, privilege, grantor, grantable): MaybeEntry,
) {
    let same = objects
        .last()
        .is_some_and(|o| o.kind == kind && o.target == target);
    if !same {
        objects.push(Object {
            kind,
            target,
            owner,
            acl: Vec::new(),
        });
    }
    if let (Some(grantee), Some(oid), Some(privilege), Some(grantor), Some(object)) =
        (grantee, grantee_oid, privilege, grantor, objects.last_mut())
    {
        object.acl.push(Entry {
            grantee,
            grantee_oid: oid.0,
            privilege,
            grantor,
            grantable: grantable.unwrap_or(false),
        });
    }
}

/// Whether some role other than `except` exists with this name (a schema named like a
/// role is on that role's `search_path` as `"$user"`).
pub async fn role_named(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1::text)")
        .bind(name)
        .fetch_one(&mut *conn)
        .await
}

/// The OIDs of the roles with these names.
pub async fn role_oids(
    conn: &mut PgConnection,
    names: &[String],
) -> Result<BTreeMap<String, u32>, sqlx::Error> {
    let rows: Vec<(String, Oid)> = sqlx::query_as(
        "SELECT rolname::text, oid FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) ANY($1::text[])",
    )
    .bind(names)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(n, o)| (n, o.0)).collect())
}

/// The OID of the schema with this name in the connection's database.
pub async fn schema_oid(conn: &mut PgConnection, name: &str) -> Result<Option<u32>, sqlx::Error> {
    let oid: Option<Oid> =
        sqlx::query_scalar("SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1::text")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(oid.map(|o| o.0))
}

/// The databases other than `except` where something depends on these roles: objects
/// they own, privileges or default privileges granted to them (`pg_shdepend`). Their
/// `DROP ROLE` waits for a `DROP OWNED BY` in each.
pub async fn databases_depending_on(
    conn: &mut PgConnection,
    roles: &[u32],
    except: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let oids: Vec<Oid> = roles.iter().map(|o| Oid(*o)).collect();
    sqlx::query_scalar(
        "SELECT DISTINCT d.datname::text
         FROM pg_catalog.pg_shdepend s JOIN pg_catalog.pg_database d ON d.oid = s.dbid
         WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass
           AND s.refobjid = ANY($1::oid[]) AND d.datname <> $2::text
         ORDER BY 1",
    )
    .bind(&oids)
    .bind(except)
    .fetch_all(&mut *conn)
    .await
}

/// Ends every session of these roles (by OID, so a dropped role's sessions too); how many.
pub async fn terminate_sessions(
    conn: &mut PgConnection,
    roles: &[u32],
) -> Result<i64, sqlx::Error> {
    if roles.is_empty() {
        return Ok(0);
    }
    let oids: Vec<Oid> = roles.iter().map(|o| Oid(*o)).collect();
    sqlx::query_scalar(
        "SELECT pg_catalog.count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(a.pid))
         FROM pg_catalog.pg_stat_activity a
         WHERE a.usesysid = ANY($1::oid[]) AND a.pid <> pg_catalog.pg_backend_pid()",
    )
    .bind(&oids)
    .fetch_one(&mut *conn)
    .await
}
