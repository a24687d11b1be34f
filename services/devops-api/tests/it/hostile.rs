//! The attacker's suite: each test replays an attack on the real server against real
//! PostgreSQL, the way a token holder or a tenant's login would try it, and asserts the
//! contract that must hold (THREATS.md, devops-api): nothing outside the tenant's own
//! objects (by OID) is altered, granted, rotated or dropped; no name a tenant picks and
//! nothing its logins create runs with the API's rights; hand changes are seen and
//! undone; revoke and drop end sessions; the work per request is bounded; the database's
//! own messages never reach a client.
//!
//! Where an attack needs an accepted request to go on (a tenant first has to own the
//! schema it then plants a function in), the test goes on only when the API accepted it,
//! and asserts the harm first, the refusal after.

use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection};

use crate::helpers::{
    Answer, Api, admin_of, admin_url, ask, can_login, database_exists, delete, detail, groups_of,
    is_problem, is_refusal, is_retryable, is_superuser, names, names_object, relation_exists,
    role_exists, rotate, run, schema_owner, socket_url, stored_password, unique,
};

// ---------------------------------------------------------------------------------------
// Requests and catalog questions the attacks share.

/// A new database, made by hand (not by the API).
async fn hand_made_database() -> String {
    let database = unique("hand");
    let mut admin = PgConnection::connect(&admin_url()).await.expect("admin");
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&mut admin)
        .await
        .expect("create database");
    database
}

// ---------------------------------------------------------------------------------------
// Traps a tenant's login plants for the API to run.

/// SQL a login runs to plant `schema.function(args)`. PostgreSQL picks, among functions
/// of that name on the search_path, one that takes exactly the argument types before one
/// that needs a cast, wherever it is on the path; so when it is an exact match for a call
/// the API makes unqualified, the API runs it. It is SECURITY INVOKER (the default): it
/// runs with its caller's rights, and when the caller is the admin it makes `login` a
/// superuser and notes the call in `marker` (a table). It returns `result`, what the
/// function it shadows would, so the caller notices nothing.
fn trap(
    schema: &str,
    function: &str,
    args: &str,
    returns: &str,
    result: &str,
    login: &str,
    marker: Option<&str>,
) -> String {
    let note = marker.map_or_else(String::new, |table| {
        format!("INSERT INTO {table} VALUES ('{schema}.{function}({args})', current_user::text);")
    });
    format!(
        "CREATE FUNCTION {schema}.{function}({args}) RETURNS {returns} LANGUAGE plpgsql AS $trap$
         BEGIN
             BEGIN
                 {note}
                 ALTER ROLE {login} SUPERUSER;
             EXCEPTION WHEN insufficient_privilege THEN NULL;
             END;
             RETURN {result};
         END
         $trap$;"
    )
}

/// The trap for the API's tenant lock: `pg_advisory_xact_lock(hashtextextended(
/// 'devops-api/tenant/' || $1, 0))` passes (text, integer); pg_catalog's takes (text,
/// bigint). Every PUT, rotate and DELETE calls it.
fn lock_hash_trap(schema: &str, login: &str, marker: Option<&str>) -> String {
    trap(
        schema,
        "hashtextextended",
        "t text, seed integer",
        "bigint",
        "pg_catalog.hashtextextended(t, seed::bigint)",
        login,
        marker,
    )
}

/// The calls a marker table noted, counted (none when it does not exist).
async fn noted_calls(conn: &mut PgConnection, marker: &str) -> Vec<String> {
    if !relation_exists(conn, marker).await {
        return Vec::new();
    }
    sqlx::query_scalar(&format!(
        "SELECT format('%s as %s, %s times', function, caller, count(*)) FROM {marker}
         GROUP BY function, caller ORDER BY 1"
    ))
    .fetch_all(conn)
    .await
    .expect("calls")
}

/// What became of a tenant that named `schema` as its own.
struct Planted {
    put: Answer,
    /// Whether its login ended up a superuser.
    escalated: bool,
    owner_before: Option<String>,
    owner_after: Option<String>,
}

/// A tenant whose schema is `schema`, with an owner login; when the API accepts it, its
/// login plants the lock trap in that schema and a fresh API instance (fresh sessions,
/// no cached plans) serves another tenant's PUT.
async fn plant_in_the_tenant_s_schema(schema: &str) -> Planted {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let login = format!("{tenant}_app");
    let mut admin = api.admin().await;
    let owner_before = schema_owner(&mut admin, schema).await;
    let put = api
        .put(
            &tenant,
            json!({"schema": schema, "logins": [{"name": login, "memberOf": "owner"}]}),
        )
        .await;
    if put.status < 300 {
        // Accepted: the owner login acts as <tenant>_owner, the schema's owner now.
        let mut app = api
            .login(&login, &put.password(&login), None)
            .await
            .expect("the owner login logs in");
        run(&mut app, &lock_hash_trap(schema, &login, None)).await;
        let fresh = Api::start_on(&api.database, |_| {}).await.ready().await;
        let next = fresh.put(&unique("t"), json!({})).await;
        assert_eq!(next.status, 201, "{next:?}");
    }
    Planted {
        put,
        escalated: is_superuser(&mut admin, &login).await,
        owner_before,
        owner_after: schema_owner(&mut admin, schema).await,
    }
}

// ---------------------------------------------------------------------------------------
// Finding 1: code runs as the admin.

#[tokio::test]
async fn a_schema_named_like_the_admin_role_is_refused_so_no_tenant_function_runs_as_the_admin() {
    // The admin is `postgres`, whose search_path is `"$user", public`: a schema
    // `postgres` is the first place the admin's unqualified calls look.
    let planted = plant_in_the_tenant_s_schema("postgres").await;
    assert!(
        !planted.escalated,
        "the tenant's login became a superuser: the API ran postgres.hashtextextended as the admin"
    );
    assert!(is_refusal(&planted.put), "{:?}", planted.put);
    assert_eq!(planted.owner_after, None, "a schema postgres was made");
}

#[tokio::test]
async fn a_tenant_cannot_own_pg_catalog_and_plant_a_function_the_api_then_runs() {
    // pg_catalog is searched first whatever the search_path: a function its owner adds
    // there shadows every call, qualified or not.
    let planted = plant_in_the_tenant_s_schema("pg_catalog").await;
    assert!(
        !planted.escalated,
        "the tenant's login became a superuser: the API ran the pg_catalog.hashtextextended(text, integer) it planted"
    );
    assert!(is_refusal(&planted.put), "{:?}", planted.put);
    assert_eq!(
        planted.owner_after, planted.owner_before,
        "pg_catalog changed hands"
    );
}

#[tokio::test]
async fn functions_a_login_plants_in_public_never_run_with_the_api_s_rights() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let login = format!("{tenant}_app");
    let created = api
        .put(
            &tenant,
            json!({"logins": [{"name": login, "memberOf": "writer"}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let mut admin = api.admin().await;
    // public is on the admin's default search_path; some operator let the login create
    // there (by hand, as happens).
    run(
        &mut admin,
        &format!("GRANT CREATE ON SCHEMA public TO {login}"),
    )
    .await;
    // From here on the test's own questions look in pg_catalog only.
    run(&mut admin, "SET search_path = pg_catalog").await;
    let marker = Some("public.calls");
    let mut app = api
        .login(&login, &created.password(&login), None)
        .await
        .expect("login");
    let plant = [
        "CREATE TABLE public.calls (function text, caller text);
         GRANT INSERT ON public.calls TO PUBLIC;"
            .to_owned(),
        lock_hash_trap("public", &login, marker),
        // acldefault('d', oid): an untyped literal prefers text to pg_catalog's "char".
        trap(
            "public",
            "acldefault",
            "kind text, owner oid",
            "aclitem[]",
            "pg_catalog.acldefault(kind::\"char\", owner)",
            &login,
            marker,
        ),
        // `grantee = 0`, `setdatabase = 0`: (oid, integer) is an exact match where
        // pg_catalog has only (oid, oid); (oid, bigint) for an OID bound as an i64.
        trap(
            "public",
            "oid_eq_int4",
            "a oid, b integer",
            "boolean",
            "a OPERATOR(pg_catalog.=) b::oid",
            &login,
            marker,
        ),
        "CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = integer, FUNCTION = public.oid_eq_int4);"
            .to_owned(),
        trap(
            "public",
            "oid_eq_int8",
            "a oid, b bigint",
            "boolean",
            "a OPERATOR(pg_catalog.=) b::oid",
            &login,
            marker,
        ),
        "CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = bigint, FUNCTION = public.oid_eq_int8);"
            .to_owned(),
    ];
    for sql in &plant {
        run(&mut app, sql).await;
    }
    drop(app);

    // A new instance of the API on the same database: new sessions, nothing cached.
    let fresh = Api::start_on(&api.database, |_| {}).await.ready().await;
    let other = unique("t");
    let other_login = format!("{other}_app");
    let body = json!({"logins": [{"name": other_login, "memberOf": "owner"}]});
    let answers = [
        ("PUT", fresh.put(&other, body.clone()).await, 201),
        ("GET", fresh.get(&format!("/v1/tenants/{other}")).await, 200),
        ("rotate", rotate(&fresh, &other, &other_login).await, 200),
        ("PUT again", fresh.put(&other, body.clone()).await, 200),
        (
            "GET the planter",
            fresh.get(&format!("/v1/tenants/{tenant}")).await,
            200,
        ),
        ("GET list", fresh.get("/v1/tenants").await, 200),
        ("revoke", delete(&fresh, &other, "revoke").await, 200),
        ("drop", delete(&fresh, &other, "drop").await, 200),
        ("GET audit", fresh.get("/v1/audit").await, 200),
    ];
    let calls = noted_calls(&mut admin, "public.calls").await;
    assert!(
        !is_superuser(&mut admin, &login).await,
        "the login became a superuser: the API ran {calls:?}"
    );
    assert_eq!(
        calls,
        Vec::<String>::new(),
        "planted functions ran in the API's sessions"
    );
    for (what, answer, status) in answers {
        assert_eq!(answer.status, status, "{what}: {answer:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Findings 1, 2 and 10: names that are not a tenant's to take.

#[tokio::test]
async fn reserved_schemas_are_refused_with_422_before_any_sql() {
    let hand_made_role = unique("role");
    {
        let mut admin = PgConnection::connect(&admin_url()).await.expect("admin");
        run(&mut admin, &format!("CREATE ROLE {hand_made_role} NOLOGIN")).await;
    }
    let pg_prefixed = unique("pg");
    let reserved = [
        "pg_catalog",
        "pg_toast",
        pg_prefixed.as_str(),
        "information_schema",
        "public",
        "devops_api",
        // Named like a role: `"$user"` on that role's search_path.
        "postgres",
        hand_made_role.as_str(),
    ];
    let mut wrong = Vec::new();
    for schema in reserved {
        // Each on a database of its own: one case's damage does not mask another's.
        let api = Api::start().await.ready().await;
        let mut admin = api.admin().await;
        let owner_before = schema_owner(&mut admin, schema).await;
        let tenant = unique("t");
        let put = api.put(&tenant, json!({"schema": schema})).await;
        let owner_after = schema_owner(&mut admin, schema).await;
        if !is_refusal(&put) {
            wrong.push(format!(
                "schema {schema}: {} {}",
                put.status,
                detail(&put).chars().take(200).collect::<String>()
            ));
        }
        if owner_after != owner_before {
            wrong.push(format!(
                "schema {schema}: owner {owner_before:?} became {owner_after:?}"
            ));
        }
        if role_exists(&mut admin, &format!("{tenant}_owner")).await {
            wrong.push(format!(
                "schema {schema}: the role {tenant}_owner was created"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn template_databases_and_databases_that_refuse_connections_are_refused_with_422() {
    let closed = hand_made_database().await;
    {
        let mut admin = PgConnection::connect(&admin_url()).await.expect("admin");
        run(
            &mut admin,
            &format!("ALTER DATABASE {closed} WITH ALLOW_CONNECTIONS false"),
        )
        .await;
    }
    let api = Api::start().await.ready().await;
    let mut wrong = Vec::new();
    // template1 last: what a tenant puts there every new database copies, and while
    // the API holds a session there nobody can create a database (the tests included),
    // so an accepted PUT is undone at once.
    for database in ["template0", closed.as_str(), "template1"] {
        let tenant = unique("t");
        let put = api
            .put(&tenant, json!({"database": {"name": database}}))
            .await;
        if put.status < 300 {
            delete(&api, &tenant, "drop").await;
            let mut admin = PgConnection::connect(&admin_url()).await.expect("admin");
            run(
                &mut admin,
                &format!(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = '{database}'"
                ),
            )
            .await;
        }
        if !is_refusal(&put) {
            wrong.push(format!(
                "database {database}: {} {}",
                put.status,
                detail(&put).chars().take(200).collect::<String>()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Finding 2: schemas that are not the tenant's are taken over.

#[tokio::test]
async fn a_tenant_cannot_take_the_api_s_own_schema_and_drop_the_audit_log() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let login = format!("{tenant}_app");
    let put = api
        .put(
            &tenant,
            json!({"schema": "devops_api", "logins": [{"name": login, "memberOf": "owner"}]}),
        )
        .await;
    if put.status < 300 {
        // The schema's owner may drop anything in it.
        let mut app = api
            .login(&login, &put.password(&login), None)
            .await
            .expect("login");
        let _ = sqlx::query("DROP TABLE devops_api.audit_log")
            .execute(&mut app)
            .await;
    }
    let mut admin = api.admin().await;
    assert!(
        relation_exists(&mut admin, "devops_api.audit_log").await,
        "the tenant's login dropped the audit log"
    );
    assert_eq!(
        schema_owner(&mut admin, "devops_api").await.as_deref(),
        Some("postgres"),
        "the API's schema changed hands"
    );
    assert!(is_refusal(&put), "{put:?}");
}

#[tokio::test]
async fn another_tenant_s_schema_is_not_taken_over() {
    let api = Api::start().await.ready().await;
    let victim = unique("v");
    let (_, mut owner) = api.owner_session(&victim).await;
    run(
        &mut owner,
        &format!(
            "CREATE TABLE {victim}.secrets (v text); INSERT INTO {victim}.secrets VALUES ('s')"
        ),
    )
    .await;

    let attacker = unique("m");
    let login = format!("{attacker}_app");
    let put = api
        .put(
            &attacker,
            json!({"schema": victim, "logins": [{"name": login, "memberOf": "owner"}]}),
        )
        .await;
    if put.status < 300 {
        let mut app = api
            .login(&login, &put.password(&login), None)
            .await
            .expect("login");
        let _ = sqlx::query(&format!("DROP TABLE {victim}.secrets"))
            .execute(&mut app)
            .await;
    }
    let mut admin = api.admin().await;
    assert!(
        relation_exists(&mut admin, &format!("{victim}.secrets")).await,
        "the attacker's login dropped the victim's table"
    );
    assert_eq!(
        schema_owner(&mut admin, &victim).await,
        Some(format!("{victim}_owner")),
        "the victim's schema changed hands"
    );
    // Refused twice over: the schema is outside the attacker's namespace (422), and it is
    // not its own (409).
    assert!(is_problem(&put, 422) || is_problem(&put, 409), "{put:?}");
    assert!(
        names_object(detail(&put), "schema", &victim),
        "the refusal names the schema: {put:?}"
    );
    assert!(
        !role_exists(&mut admin, &format!("{attacker}_owner")).await,
        "the refused tenant's roles were created"
    );
}

#[tokio::test]
async fn a_schema_made_by_hand_is_not_taken_over() {
    let api = Api::start().await.ready().await;
    let mut admin = api.admin().await;
    let tenant = unique("t");
    // In the tenant's namespace, so only its identity decides.
    let schema = format!("{tenant}_data");
    run(
        &mut admin,
        &format!("CREATE SCHEMA {schema}; CREATE TABLE {schema}.data (v text)"),
    )
    .await;
    let put = api.put(&tenant, json!({"schema": schema})).await;
    assert_eq!(
        schema_owner(&mut admin, &schema).await.as_deref(),
        Some("postgres"),
        "the hand-made schema changed hands: {put:?}"
    );
    assert!(is_problem(&put, 409), "{put:?}");
    assert!(names_object(detail(&put), "schema", &schema), "{put:?}");
    assert!(!role_exists(&mut admin, &format!("{tenant}_owner")).await);
}

#[tokio::test]
async fn a_schema_made_again_by_hand_under_the_tenant_s_name_is_not_the_tenant_s() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    assert_eq!(api.put(&tenant, json!({})).await.status, 201);
    // The tenant's schema goes, and someone makes one of that name: another OID.
    let mut admin = api.admin().await;
    run(
        &mut admin,
        &format!(
            "DROP SCHEMA {tenant} CASCADE; CREATE SCHEMA {tenant}; CREATE TABLE {tenant}.theirs (v text)"
        ),
    )
    .await;
    let put = api.put(&tenant, json!({})).await;
    assert_eq!(
        schema_owner(&mut admin, &tenant).await.as_deref(),
        Some("postgres"),
        "the schema made by hand changed hands: {put:?}"
    );
    assert!(is_problem(&put, 409), "{put:?}");
    assert!(names_object(detail(&put), "schema", &tenant), "{put:?}");
}

// ---------------------------------------------------------------------------------------
// Finding 3: drop removes what the tenant never created.

#[tokio::test]
async fn a_first_put_that_fails_leaves_no_record() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let database = format!("{tenant}_db");
    // CREATE DATABASE fails (no such encoding): its own step, before the transaction.
    let put = api
        .put(
            &tenant,
            json!({"database": {"name": database, "create": true, "encoding": "NO_SUCH_ENCODING"}}),
        )
        .await;
    assert!((400..500).contains(&put.status), "the PUT fails: {put:?}");
    let got = api.get(&format!("/v1/tenants/{tenant}")).await;
    let list = api.get("/v1/tenants").await;
    let dropped = delete(&api, &tenant, "drop").await;
    assert!(
        is_problem(&got, 404),
        "a failed first PUT left a record: {got:?}"
    );
    assert!(
        !list.body.to_string().contains(&tenant),
        "the list shows it: {list:?}"
    );
    assert!(is_problem(&dropped, 404), "{dropped:?}");
}

#[tokio::test]
async fn a_tenant_whose_first_put_failed_cannot_drop_the_schema_it_named() {
    let api = Api::start().await.ready().await;
    let victim = unique("v");
    let (_, mut owner) = api.owner_session(&victim).await;
    run(
        &mut owner,
        &format!("CREATE TABLE {victim}.orders (id int); INSERT INTO {victim}.orders VALUES (1)"),
    )
    .await;
    // A PUT naming the victim's schema that fails: nothing of the attacker exists.
    let attacker = unique("m");
    let put = api
        .put(
            &attacker,
            json!({"schema": victim, "extensions": ["no_such_extension"]}),
        )
        .await;
    assert!((400..500).contains(&put.status), "the PUT fails: {put:?}");
    let got = api.get(&format!("/v1/tenants/{attacker}")).await;
    let dropped = delete(&api, &attacker, "drop").await;
    let mut admin = api.admin().await;
    assert!(
        relation_exists(&mut admin, &format!("{victim}.orders")).await,
        "the attacker's drop removed the victim's schema: {dropped:?}"
    );
    assert!(is_problem(&got, 404), "{got:?}");
    assert!(is_problem(&dropped, 404), "{dropped:?}");
}

#[tokio::test]
async fn a_hand_made_database_a_tenant_is_created_again_in_is_never_dropped() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let database = format!("{tenant}_db");
    let created = api
        .put(
            &tenant,
            json!({"database": {"name": database, "create": true}}),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let dropped = delete(&api, &tenant, "drop").await;
    assert_eq!(dropped.status, 200, "{dropped:?}");
    let mut admin = api.admin().await;
    assert!(
        !database_exists(&mut admin, &database).await,
        "the API's database went"
    );
    // Someone makes a database of that name, with data; the tenant comes back in it.
    run(&mut admin, &format!("CREATE DATABASE {database}")).await;
    run(
        &mut admin_of(&database).await,
        "CREATE TABLE public.keep (v text); INSERT INTO public.keep VALUES ('k')",
    )
    .await;
    let again = api
        .put(&tenant, json!({"database": {"name": database}}))
        .await;
    assert!(again.status == 200 || again.status == 201, "{again:?}");
    let dropped = delete(&api, &tenant, "drop").await;
    assert!(
        database_exists(&mut admin, &database).await,
        "the hand-made database was dropped: {dropped:?}"
    );
    assert!(
        relation_exists(&mut admin_of(&database).await, "public.keep").await,
        "its table is gone"
    );
    assert_eq!(dropped.status, 200, "{dropped:?}");
}

#[tokio::test]
async fn a_database_other_tenants_live_in_is_not_dropped_with_the_tenant_that_created_it() {
    let api = Api::start().await.ready().await;
    let creator = unique("c");
    let database = format!("{creator}_db");
    let created = api
        .put(
            &creator,
            json!({"database": {"name": database, "create": true}}),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let lodger = unique("l");
    let login = format!("{lodger}_app");
    let lodging =
        json!({"database": {"name": database}, "logins": [{"name": login, "memberOf": "owner"}]});
    // A database a tenant created is that tenant's: no other tenant moves in.
    let refused = api.put(&lodger, lodging.clone()).await;
    assert!(is_problem(&refused, 409), "{refused:?}");
    // One that moved in before that rule (the previous version let it): the creator's
    // record of its database is set aside while the lodger moves in, then put back.
    let mut store = api.admin().await;
    run(
        &mut store,
        &format!("CREATE TABLE kept_owned AS SELECT * FROM devops_api.owned WHERE tenant = '{creator}' AND kind = 'database';
                  DELETE FROM devops_api.owned WHERE tenant = '{creator}' AND kind = 'database'"),
    )
    .await;
    let moved_in = api.put(&lodger, lodging).await;
    run(
        &mut store,
        "INSERT INTO devops_api.owned SELECT * FROM kept_owned; DROP TABLE kept_owned",
    )
    .await;
    assert_eq!(moved_in.status, 201, "{moved_in:?}");
    let mut app = api
        .login(&login, &moved_in.password(&login), Some(&database))
        .await
        .expect("login");
    run(
        &mut app,
        &format!("CREATE TABLE {lodger}.rows (v text); INSERT INTO {lodger}.rows VALUES ('r')"),
    )
    .await;
    drop(app);

    let dropped = delete(&api, &creator, "drop").await;
    let mut admin = api.admin().await;
    assert!(
        database_exists(&mut admin, &database).await,
        "the database went with the other tenant in it: {dropped:?}"
    );
    assert!(
        relation_exists(&mut admin_of(&database).await, &format!("{lodger}.rows")).await,
        "the other tenant's table is gone"
    );
    assert!(is_problem(&dropped, 409), "{dropped:?}");
    assert!(names(detail(&dropped), &lodger), "{dropped:?}");
    assert!(
        role_exists(&mut admin, &format!("{creator}_owner")).await,
        "a refused drop dropped something"
    );
}

#[tokio::test]
async fn a_database_made_again_by_hand_under_the_tenant_s_database_name_is_not_dropped() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let database = format!("{tenant}_db");
    let created = api
        .put(
            &tenant,
            json!({"database": {"name": database, "create": true}}),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    // The API's database goes by hand and someone makes one of that name: another OID.
    let mut admin = api.admin().await;
    run(
        &mut admin,
        &format!("DROP DATABASE {database} WITH (FORCE)"),
    )
    .await;
    run(&mut admin, &format!("CREATE DATABASE {database}")).await;
    run(
        &mut admin_of(&database).await,
        "CREATE TABLE public.keep (v text); INSERT INTO public.keep VALUES ('k')",
    )
    .await;
    let dropped = delete(&api, &tenant, "drop").await;
    assert!(
        database_exists(&mut admin, &database).await,
        "the database made by hand was dropped: {dropped:?}"
    );
    assert!(
        relation_exists(&mut admin_of(&database).await, "public.keep").await,
        "its table is gone"
    );
}

// ---------------------------------------------------------------------------------------
// Finding 4: roles that are not the tenant's are taken over.

/// Tenant `short` claims `long_owner`, the group role of tenant `long` (`short` + `_b`),
/// as a login (its name starts with `short_`, as the rule wants), has it rotated to
/// learn its password, logs in as it and drops `long`'s table.
async fn claim_the_owner_role(api: &Api, short: &str, long: &str) {
    let claimed = format!("{long}_owner");
    let put = api
        .put(
            short,
            json!({"logins": [{"name": claimed, "memberOf": "reader"}]}),
        )
        .await;
    if put.status >= 300 {
        return;
    }
    let rotated = rotate(api, short, &claimed).await;
    if rotated.status >= 300 {
        return;
    }
    let mut as_owner = api
        .login(&claimed, &rotated.password(&claimed), None)
        .await
        .expect("logs in as the other tenant's owner");
    let _ = sqlx::query(&format!("DROP TABLE {long}.secrets"))
        .execute(&mut as_owner)
        .await;
}

/// PUTs `tenant` with an owner login; when accepted, the login makes `<tenant>.secrets`.
async fn put_with_a_table(api: &Api, tenant: &str) -> Answer {
    let login = format!("{tenant}_app");
    let put = api
        .put(
            tenant,
            json!({"logins": [{"name": login, "memberOf": "owner"}]}),
        )
        .await;
    if put.status < 300 {
        let mut app = api
            .login(&login, &put.password(&login), None)
            .await
            .expect("login");
        run(
            &mut app,
            &format!(
                "CREATE TABLE {tenant}.secrets (v text); INSERT INTO {tenant}.secrets VALUES ('s')"
            ),
        )
        .await;
    }
    put
}

#[tokio::test]
async fn a_tenant_is_refused_when_an_existing_tenant_s_name_extends_its_own() {
    let api = Api::start().await.ready().await;
    let short = unique("x");
    let long = format!("{short}_b");
    let made = put_with_a_table(&api, &long).await;
    assert_eq!(made.status, 201, "{made:?}");
    let put = api.put(&short, json!({})).await;
    if put.status < 300 {
        claim_the_owner_role(&api, &short, &long).await;
    }
    let mut admin = api.admin().await;
    assert!(
        relation_exists(&mut admin, &format!("{long}.secrets")).await,
        "tenant {short} took {long}_owner and dropped {long}'s table"
    );
    assert!(
        !can_login(&mut admin, &format!("{long}_owner")).await,
        "{long}_owner was made a login"
    );
    assert!(is_problem(&put, 409), "{put:?}");
    // The other tenant may be outside the caller's scope: it is not named.
    assert!(
        !names(detail(&put), &long),
        "the 409 names tenant {long}: {put:?}"
    );
}

#[tokio::test]
async fn a_tenant_is_refused_when_its_name_extends_an_existing_tenant_s() {
    let api = Api::start().await.ready().await;
    let short = unique("x");
    let long = format!("{short}_b");
    assert_eq!(api.put(&short, json!({})).await.status, 201);
    let put = put_with_a_table(&api, &long).await;
    if put.status < 300 {
        claim_the_owner_role(&api, &short, &long).await;
    }
    let mut admin = api.admin().await;
    assert!(
        put.status >= 300 || relation_exists(&mut admin, &format!("{long}.secrets")).await,
        "tenant {short} took {long}_owner and dropped {long}'s table"
    );
    assert!(
        !can_login(&mut admin, &format!("{long}_owner")).await,
        "{long}_owner was made a login"
    );
    assert!(is_problem(&put, 409), "{put:?}");
    // The other tenant may be outside the caller's scope: it is not named.
    assert!(
        !names(detail(&put), &short),
        "the 409 names tenant {short}: {put:?}"
    );
    assert!(
        !role_exists(&mut admin, &format!("{long}_owner")).await,
        "the refused tenant's roles were created"
    );
}

#[tokio::test]
async fn a_role_the_api_did_not_create_is_not_claimed_as_a_login_on_a_second_put() {
    let api = Api::start().await.ready().await;
    let tenant = unique("x");
    // Like the admin role `devops_admin` for a tenant `devops`.
    let role = format!("{tenant}_admin");
    let mut admin = api.admin().await;
    run(
        &mut admin,
        &format!("CREATE ROLE {role} LOGIN PASSWORD 'hand-made-secret'"),
    )
    .await;
    let verifier = stored_password(&mut admin, &role).await;
    assert_eq!(api.put(&tenant, json!({})).await.status, 201);
    let put = api
        .put(
            &tenant,
            json!({"logins": [{"name": role, "memberOf": "owner"}]}),
        )
        .await;
    let rotated = rotate(&api, &tenant, &role).await;
    assert!(
        api.login(&role, "hand-made-secret", None).await.is_ok(),
        "the hand-made role's password was changed: {rotated:?}"
    );
    assert_eq!(stored_password(&mut admin, &role).await, verifier);
    assert_eq!(
        groups_of(&mut admin, &role).await,
        Vec::<String>::new(),
        "the hand-made role was put in the tenant's groups"
    );
    assert!(
        ask(
            &mut admin,
            "SELECT NOT EXISTS (SELECT 1 FROM pg_db_role_setting WHERE setrole = to_regrole($1)::oid)",
            &[&role],
        )
        .await,
        "the hand-made role was given settings"
    );
    assert!(is_problem(&put, 409), "{put:?}");
    assert!(names_object(detail(&put), "role", &role), "{put:?}");
    assert!(
        rotated.status >= 400 && rotated.body.get("credentials").is_none(),
        "{rotated:?}"
    );
}

#[tokio::test]
async fn a_login_dropped_and_made_again_by_hand_is_neither_rotated_nor_dropped_by_the_api() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let login = format!("{tenant}_app");
    let spec = json!({"logins": [{"name": login, "memberOf": "writer"}]});
    assert_eq!(api.put(&tenant, spec.clone()).await.status, 201);
    // The tenant's login goes by hand and someone makes a role of that name: another OID.
    let mut admin = api.admin().await;
    run(
        &mut admin,
        &format!("DROP ROLE {login}; CREATE ROLE {login} LOGIN PASSWORD 'someone-else-s'"),
    )
    .await;
    let rotated = rotate(&api, &tenant, &login).await;
    let put = api.put(&tenant, spec).await;
    let dropped = delete(&api, &tenant, "drop").await;
    assert!(
        api.login(&login, "someone-else-s", None).await.is_ok(),
        "the role made by hand lost its password or its existence: rotate {rotated:?}, drop {dropped:?}"
    );
    assert_eq!(
        groups_of(&mut admin, &login).await,
        Vec::<String>::new(),
        "the role made by hand was put in the tenant's groups: {put:?}"
    );
    assert!(
        rotated.status >= 400 && rotated.body.get("credentials").is_none(),
        "{rotated:?}"
    );
    assert!(is_problem(&put, 409), "{put:?}");
    assert!(names_object(detail(&put), "role", &login), "{put:?}");
}

// ---------------------------------------------------------------------------------------
// Finding 6: races.

#[tokio::test]
async fn concurrent_puts_and_drops_of_one_tenant_leave_its_record_and_the_catalog_in_agreement() {
    // Many changes of one caller at once: the per-caller bound is lifted, the locks are
    // what is tested.
    let api = Api::start_with(|c| c.tenants.max_changes_per_caller = 100)
        .await
        .ready()
        .await;
    let tenant = unique("t");
    let body = json!({"logins": [{"name": format!("{tenant}_app"), "memberOf": "writer"}]});
    assert_eq!(api.put(&tenant, body.clone()).await.status, 201);
    let pairs = (0..30).map(|_| {
        futures::future::join(
            api.put(&tenant, body.clone()),
            delete(&api, &tenant, "drop"),
        )
    });
    let answers = futures::future::join_all(pairs).await;
    let unusable: Vec<String> = answers
        .iter()
        .flat_map(|(put, drop)| [("PUT", put), ("DELETE", drop)])
        .filter(|(_, a)| a.status >= 300 && !is_retryable(a))
        .map(|(what, a)| format!("{what}: {} {}", a.status, detail(a)))
        .collect();

    let mut admin = api.admin().await;
    let view = api.get(&format!("/v1/tenants/{tenant}")).await;
    let recorded = view.body["status"].as_str().unwrap_or_default().to_owned();
    let owner = role_exists(&mut admin, &format!("{tenant}_owner")).await;
    assert!(
        matches!(
            (recorded.as_str(), owner),
            ("dropped", false) | ("active", true)
        ),
        "the record says {recorded:?} and the role {tenant}_owner {}: {view:?}",
        if owner { "exists" } else { "does not exist" }
    );
    let last = api.put(&tenant, body).await;
    assert!(
        last.status == 200 || last.status == 201,
        "a PUT after the race: {last:?}"
    );
    assert!(
        unusable.is_empty(),
        "answers that are neither success nor busy/unavailable with Retry-After:\n{}",
        unusable.join("\n")
    );
    let view = api.get(&format!("/v1/tenants/{tenant}")).await;
    assert_eq!(view.body["status"], "active", "{view:?}");
    assert!(role_exists(&mut admin, &format!("{tenant}_owner")).await);
}

#[tokio::test]
async fn concurrent_first_puts_of_tenants_into_one_database_never_fail_with_422_or_500() {
    // Many changes of one caller at once: the per-caller bound is lifted, the locks are
    // what is tested.
    let api = Api::start_with(|c| c.tenants.max_changes_per_caller = 100)
        .await
        .ready()
        .await;
    let tenants: Vec<String> = (0..20).map(|_| unique("t")).collect();
    let puts = tenants.iter().map(|tenant| {
        api.put(
            tenant,
            json!({"logins": [{"name": format!("{tenant}_app"), "memberOf": "writer"}]}),
        )
    });
    let answers = futures::future::join_all(puts).await;
    let mut admin = api.admin().await;
    let mut wrong = Vec::new();
    for (tenant, answer) in tenants.iter().zip(&answers) {
        if answer.status >= 300 {
            if !is_retryable(answer) {
                wrong.push(format!("{tenant}: {} {}", answer.status, detail(answer)));
            }
            continue;
        }
        for group in ["owner", "writer", "reader"] {
            let role = format!("{tenant}_{group}");
            let connect = ask(
                &mut admin,
                "SELECT EXISTS (SELECT 1 FROM pg_database d, aclexplode(d.datacl) a
                 WHERE d.datname = current_database() AND a.grantee = to_regrole($1)::oid
                   AND a.privilege_type = 'CONNECT')",
                &[&role],
            )
            .await;
            if !connect {
                wrong.push(format!(
                    "{tenant} answered {} but {role} has no CONNECT on the database",
                    answer.status
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Finding 7: logins removed from the spec keep working.

#[tokio::test]
async fn a_login_removed_from_the_spec_can_no_longer_log_in_and_goes_with_the_tenant() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let kept = format!("{tenant}_x");
    let removed = format!("{tenant}_y");
    let both = api
        .put(
            &tenant,
            json!({"logins": [{"name": kept, "memberOf": "writer"}, {"name": removed, "memberOf": "reader"}]}),
        )
        .await;
    assert_eq!(both.status, 201, "{both:?}");
    let password = both.password(&removed);
    assert!(api.login(&removed, &password, None).await.is_ok());

    let one = api
        .put(
            &tenant,
            json!({"logins": [{"name": kept, "memberOf": "writer"}]}),
        )
        .await;
    assert_eq!(one.status, 200, "{one:?}");
    let mut admin = api.admin().await;
    let logs_in_after_removal = api.login(&removed, &password, None).await.is_ok();
    let groups_after_removal = groups_of(&mut admin, &removed).await;
    let revoked = delete(&api, &tenant, "revoke").await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    let logs_in_after_revoke = api.login(&removed, &password, None).await.is_ok();
    let dropped = delete(&api, &tenant, "drop").await;
    assert_eq!(dropped.status, 200, "{dropped:?}");

    assert!(
        !logs_in_after_removal,
        "{removed}, removed from the spec, still logs in"
    );
    assert_eq!(
        groups_after_removal,
        Vec::<String>::new(),
        "{removed}, removed from the spec, is still in the tenant's groups"
    );
    assert!(!logs_in_after_revoke, "{removed} logs in after revoke");
    assert!(
        !role_exists(&mut admin, &removed).await,
        "{removed} outlived the tenant's drop"
    );
}

// ---------------------------------------------------------------------------------------
// Finding 8: revoke and drop leave sessions open.

/// A tenant with an owner login, connected, which has written to a table of its own.
async fn connected_owner(api: &Api) -> (String, PgConnection) {
    let tenant = unique("t");
    let (_, mut session) = api.owner_session(&tenant).await;
    run(
        &mut session,
        &format!(
            "CREATE TABLE {tenant}.notes (v text); INSERT INTO {tenant}.notes VALUES ('before')"
        ),
    )
    .await;
    (tenant, session)
}

fn terminated_sessions(answer: &Answer) -> Option<u64> {
    answer.body["terminatedSessions"].as_u64()
}

#[tokio::test]
async fn revoke_ends_the_open_sessions_of_the_tenant_s_logins() {
    let api = Api::start().await.ready().await;
    let (tenant, mut session) = connected_owner(&api).await;
    let revoked = delete(&api, &tenant, "revoke").await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    let write = sqlx::query(&format!("INSERT INTO {tenant}.notes VALUES ('after')"))
        .execute(&mut session)
        .await;
    assert!(
        write.is_err(),
        "the login's open session kept writing after revoke"
    );
    assert!(
        terminated_sessions(&revoked).is_some_and(|n| n >= 1),
        "terminatedSessions: {revoked:?}"
    );
}

#[tokio::test]
async fn drop_ends_the_open_sessions_of_the_tenant_s_logins() {
    let api = Api::start().await.ready().await;
    let (tenant, mut session) = connected_owner(&api).await;
    let dropped = delete(&api, &tenant, "drop").await;
    assert_eq!(dropped.status, 200, "{dropped:?}");
    let after = sqlx::query("SELECT 1").execute(&mut session).await;
    assert!(
        after.is_err(),
        "the dropped login's open session still runs queries"
    );
    assert!(
        terminated_sessions(&dropped).is_some_and(|n| n >= 1),
        "terminatedSessions: {dropped:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Finding 9: drift misses hand changes.

/// A tenant with a login in each group, a table its owner login made (so the writer and
/// the reader got their grants on it from the default privileges), and an outsider role.
struct Declared {
    api: Api,
    tenant: String,
    spec: Value,
    admin: PgConnection,
    outsider: String,
}

impl Declared {
    async fn new() -> Self {
        let api = Api::start().await.ready().await;
        let tenant = unique("t");
        let spec = json!({"logins": [
            {"name": format!("{tenant}_app"), "memberOf": "owner"},
            {"name": format!("{tenant}_rw"), "memberOf": "writer"},
            {"name": format!("{tenant}_ro"), "memberOf": "reader"},
        ]});
        let made = api.put(&tenant, spec.clone()).await;
        assert_eq!(made.status, 201, "{made:?}");
        let owner = format!("{tenant}_app");
        let mut app = api
            .login(&owner, &made.password(&owner), None)
            .await
            .expect("login");
        run(&mut app, &format!("CREATE TABLE {tenant}.items (id int)")).await;
        let mut admin = api.admin().await;
        let outsider = unique("outsider");
        run(&mut admin, &format!("CREATE ROLE {outsider} NOLOGIN")).await;
        let declared = Self {
            api,
            tenant,
            spec,
            admin,
            outsider,
        };
        assert_eq!(declared.drift().await, json!([]), "no drift to begin with");
        declared
    }

    fn role(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.tenant)
    }

    fn table(&self) -> String {
        format!("{}.items", self.tenant)
    }

    async fn drift(&self) -> Value {
        let view = self.api.get(&format!("/v1/tenants/{}", self.tenant)).await;
        assert_eq!(view.status, 200, "{view:?}");
        view.body["drift"].clone()
    }

    async fn by_hand(&mut self, sql: &str) {
        run(&mut self.admin, sql).await;
    }

    /// GET reports the hand change as drift; a PUT of the same spec undoes it.
    async fn is_seen_and_repaired(&mut self, change: &str) {
        let drift = self.drift().await;
        assert!(
            drift.as_array().is_some_and(|d| !d.is_empty()),
            "GET does not report {change}: drift = {drift}"
        );
        let put = self.api.put(&self.tenant, self.spec.clone()).await;
        assert_eq!(put.status, 200, "{put:?}");
        assert_eq!(
            self.drift().await,
            json!([]),
            "after a PUT, still drift ({change}): {put:?}"
        );
    }

    async fn ask(&mut self, sql: &str, binds: &[&str]) -> bool {
        ask(&mut self.admin, sql, binds).await
    }
}

async fn a_login_given_an_attribute_by_hand_is_drift_and_a_put_takes_it_back(
    attribute: &str,
    column: &str,
) {
    let mut t = Declared::new().await;
    let login = t.role("app");
    t.by_hand(&format!("ALTER ROLE {login} {attribute}")).await;
    t.is_seen_and_repaired(&format!("{login} made {attribute}"))
        .await;
    let sql = format!("SELECT {column} FROM pg_roles WHERE rolname = $1");
    assert!(
        !t.ask(&sql, &[&login]).await,
        "{login} is still {attribute}"
    );
}

#[tokio::test]
async fn a_login_made_superuser_by_hand_is_drift_and_a_put_takes_it_back() {
    a_login_given_an_attribute_by_hand_is_drift_and_a_put_takes_it_back("SUPERUSER", "rolsuper")
        .await;
}

#[tokio::test]
async fn a_login_given_createrole_by_hand_is_drift_and_a_put_takes_it_back() {
    a_login_given_an_attribute_by_hand_is_drift_and_a_put_takes_it_back(
        "CREATEROLE",
        "rolcreaterole",
    )
    .await;
}

#[tokio::test]
async fn a_login_given_bypassrls_by_hand_is_drift_and_a_put_takes_it_back() {
    a_login_given_an_attribute_by_hand_is_drift_and_a_put_takes_it_back(
        "BYPASSRLS",
        "rolbypassrls",
    )
    .await;
}

#[tokio::test]
async fn an_outsider_made_a_member_of_the_owner_group_is_drift_and_a_put_removes_it() {
    let mut t = Declared::new().await;
    let (owner, outsider) = (t.role("owner"), t.outsider.clone());
    t.by_hand(&format!("GRANT {owner} TO {outsider}")).await;
    t.is_seen_and_repaired(&format!("{outsider} made a member of {owner}"))
        .await;
    assert_eq!(
        groups_of(&mut t.admin, &outsider).await,
        Vec::<String>::new(),
        "{outsider} is still a member"
    );
}

#[tokio::test]
async fn an_outsider_s_grant_on_the_schema_is_drift_and_a_put_revokes_it() {
    let mut t = Declared::new().await;
    let (schema, outsider) = (t.tenant.clone(), t.outsider.clone());
    t.by_hand(&format!("GRANT ALL ON SCHEMA {schema} TO {outsider}"))
        .await;
    t.is_seen_and_repaired(&format!("GRANT ALL ON SCHEMA {schema} TO {outsider}"))
        .await;
    assert!(
        !t.ask(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(n.nspacl) a
             WHERE n.nspname = $1 AND a.grantee = to_regrole($2)::oid)",
            &[&schema, &outsider],
        )
        .await,
        "{outsider} still has privileges on schema {schema}"
    );
}

#[tokio::test]
async fn table_grants_revoked_from_the_tenant_s_groups_are_drift_and_a_put_restores_them() {
    let mut t = Declared::new().await;
    let (table, writer, reader) = (t.table(), t.role("writer"), t.role("reader"));
    t.by_hand(&format!("REVOKE ALL ON {table} FROM {writer}, {reader}"))
        .await;
    t.is_seen_and_repaired(&format!("the groups' grants on {table} revoked"))
        .await;
    let held = "SELECT has_table_privilege($1, $2, $3)";
    for privilege in ["SELECT", "INSERT", "UPDATE", "DELETE"] {
        assert!(
            t.ask(held, &[&writer, &table, privilege]).await,
            "{writer} has no {privilege} on {table}"
        );
    }
    assert!(
        t.ask(held, &[&reader, &table, "SELECT"]).await,
        "{reader} has no SELECT on {table}"
    );
}

#[tokio::test]
async fn an_outsider_s_grant_on_a_table_is_drift_and_a_put_revokes_it() {
    let mut t = Declared::new().await;
    let (table, outsider) = (t.table(), t.outsider.clone());
    t.by_hand(&format!("GRANT SELECT ON {table} TO {outsider}"))
        .await;
    t.is_seen_and_repaired(&format!("GRANT SELECT ON {table} TO {outsider}"))
        .await;
    assert!(
        !t.ask(
            "SELECT EXISTS (SELECT 1 FROM pg_class c, aclexplode(c.relacl) a
             WHERE c.oid = to_regclass($1) AND a.grantee = to_regrole($2)::oid)",
            &[&table, &outsider],
        )
        .await,
        "{outsider} still has privileges on {table}"
    );
}

#[tokio::test]
async fn a_search_path_set_on_a_login_is_drift_and_a_put_resets_it() {
    let mut t = Declared::new().await;
    let (login, schema) = (t.role("app"), t.tenant.clone());
    // What the login's unqualified names then resolve to is someone else's choice.
    t.by_hand(&format!(
        "ALTER ROLE {login} SET search_path = public, {schema}"
    ))
    .await;
    t.is_seen_and_repaired(&format!("a search_path set on {login}"))
        .await;
    assert!(
        !t.ask(
            "SELECT EXISTS (SELECT 1 FROM pg_db_role_setting s, unnest(s.setconfig) c
             WHERE s.setrole = to_regrole($1)::oid AND c LIKE 'search_path=%')",
            &[&login],
        )
        .await,
        "{login} still has a search_path setting"
    );
}

#[tokio::test]
async fn an_outsider_s_default_privileges_in_the_schema_are_drift_and_a_put_removes_them() {
    let mut t = Declared::new().await;
    let (owner, schema, outsider) = (t.role("owner"), t.tenant.clone(), t.outsider.clone());
    // Every table the tenant makes from now on is readable by the outsider.
    t.by_hand(&format!(
        "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} GRANT SELECT ON TABLES TO {outsider}"
    ))
    .await;
    t.is_seen_and_repaired(&format!("default privileges of {outsider} in {schema}"))
        .await;
    assert!(
        !t.ask(
            "SELECT EXISTS (SELECT 1 FROM pg_default_acl d, aclexplode(d.defaclacl) a
             WHERE a.grantee = to_regrole($1)::oid)",
            &[&outsider],
        )
        .await,
        "{outsider} still has default privileges"
    );
}

#[tokio::test]
async fn the_writer_group_given_login_is_drift_and_a_put_takes_it_back() {
    let mut t = Declared::new().await;
    let writer = t.role("writer");
    t.by_hand(&format!("ALTER ROLE {writer} LOGIN")).await;
    t.is_seen_and_repaired(&format!("{writer} given LOGIN"))
        .await;
    assert!(
        !can_login(&mut t.admin, &writer).await,
        "{writer} still logs in"
    );
}

// ---------------------------------------------------------------------------------------
// Finding 11: untrusted extensions installed on request.

#[tokio::test]
async fn untrusted_extensions_are_refused_by_the_allowlist_and_never_installed() {
    let api = Api::start().await.ready().await;
    let mut admin = api.admin().await;
    let mut wrong = Vec::new();
    // Files, other databases and servers, raw pages: each reads past the tenant.
    for extension in ["file_fdw", "dblink", "postgres_fdw", "pageinspect"] {
        let put = api
            .put(&unique("t"), json!({"extensions": [extension]}))
            .await;
        if !(is_problem(&put, 422) && detail(&put).contains("tenants.allowed_extensions")) {
            wrong.push(format!(
                "{extension}: {} {}",
                put.status,
                detail(&put).chars().take(200).collect::<String>()
            ));
        }
        let installed = ask(
            &mut admin,
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = $1)",
            &[extension],
        )
        .await;
        if installed {
            wrong.push(format!("{extension} was installed"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Finding 12: no cap on logins.

#[tokio::test]
async fn more_logins_than_max_logins_are_refused_even_in_a_dry_run() {
    // A body large enough for the logins (the body limit is not what is tested).
    let api = Api::start_with(|c| c.max_body_bytes = 1 << 20)
        .await
        .ready()
        .await;
    let tenant = unique("t");
    let spec = |count: usize| {
        let logins: Vec<Value> = (0..count)
            .map(|i| json!({"name": format!("{tenant}_{i}"), "memberOf": "reader"}))
            .collect();
        json!({ "logins": logins })
    };
    let names_the_limit =
        |a: &Answer| is_problem(a, 422) && detail(a).contains("tenants.max_logins");
    // Each generated password is hashed (4096 PBKDF2 rounds) before anything is refused.
    let planned = api.plan(&tenant, spec(1502)).await;
    assert!(
        names_the_limit(&planned),
        "a dry run with 1,502 logins: {} {}",
        planned.status,
        detail(&planned)
    );
    let put = api.put(&tenant, spec(1502)).await;
    assert!(names_the_limit(&put), "{} {}", put.status, detail(&put));
    // The default limit is 50.
    let one_over = api.plan(&tenant, spec(51)).await;
    assert!(
        names_the_limit(&one_over),
        "51 logins: {} {}",
        one_over.status,
        detail(&one_over)
    );
    let at_the_limit = api.plan(&tenant, spec(50)).await;
    assert_eq!(
        at_the_limit.status,
        200,
        "50 logins: {}",
        detail(&at_the_limit)
    );
    let mut admin = api.admin().await;
    assert!(!role_exists(&mut admin, &format!("{tenant}_owner")).await);
}

// ---------------------------------------------------------------------------------------
// Finding 13: the database's own message in a 500.

#[tokio::test]
async fn a_rejected_admin_password_is_a_503_with_retry_after_and_never_the_database_s_message() {
    let database = hand_made_database().await;
    let role = unique("api");
    let mut admin = admin_of(&database).await;
    run(
        &mut admin,
        &format!("CREATE ROLE {role} LOGIN SUPERUSER PASSWORD 'right-password'"),
    )
    .await;
    let with_password = |password: &str| {
        let url = socket_url(&role, password, &database);
        move |c: &mut devops_api::config::Config| c.database.url = url.parse().expect("url")
    };
    // Wrong from the start: the API never gets in.
    let locked_out = Api::start_on(&database, with_password("wrong-password")).await;
    let mut answers = vec![(
        "PUT, never in",
        locked_out.put(&unique("t"), json!({})).await,
    )];
    // In, and then its password changes under it (a rotated secret, an ALTER ROLE):
    // the sessions it had end, new ones are refused.
    let api = Api::start_on(&database, with_password("right-password"))
        .await
        .ready()
        .await;
    let tenant = unique("t");
    let login = format!("{tenant}_app");
    let created = api
        .put(
            &tenant,
            json!({"logins": [{"name": login, "memberOf": "writer"}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    run(
        &mut admin,
        &format!(
            "ALTER ROLE {role} PASSWORD 'changed-password';
             SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = '{role}'"
        ),
    )
    .await;
    answers.extend([
        ("PUT", api.put(&unique("t"), json!({})).await),
        ("GET", api.get(&format!("/v1/tenants/{tenant}")).await),
        ("GET list", api.get("/v1/tenants").await),
        ("GET audit", api.get("/v1/audit").await),
        ("rotate", rotate(&api, &tenant, &login).await),
        ("revoke", delete(&api, &tenant, "revoke").await),
    ]);
    let wrong: Vec<String> = answers
        .iter()
        .filter(|(_, a)| {
            !(is_problem(a, 503) && a.headers.contains_key("retry-after"))
                || a.body
                    .to_string()
                    .contains("password authentication failed")
        })
        .map(|(what, a)| format!("{what}: {} {}", a.status, a.body))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Finding 14: the client's SCRAM verifier stored verbatim.

#[tokio::test]
async fn a_given_verifier_is_never_stored_or_returned() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let login = format!("{tenant}_svc");
    // Offline guessing starts from a verifier: it is as good as a password hash.
    let verifier = devops_api::scram::verifier("correct horse battery staple").expect("random");
    let body = json!({"logins": [{"name": login, "memberOf": "writer", "password": {"scramVerifier": verifier}}]});
    let created = api.put(&tenant, body.clone()).await;
    assert_eq!(created.status, 201, "{created:?}");
    let mut admin = api.admin().await;
    let row: String =
        sqlx::query_scalar("SELECT t::text FROM devops_api.tenants t WHERE t.name = $1")
            .bind(&tenant)
            .fetch_one(&mut admin)
            .await
            .expect("the tenant's row");
    let view = api.get(&format!("/v1/tenants/{tenant}")).await;
    let audit = api.get(&format!("/v1/audit?tenant={tenant}")).await;
    let holders: Vec<String> = [
        ("devops_api.tenants", row),
        ("GET /v1/tenants/{name}", view.body.to_string()),
        ("GET /v1/audit", audit.body.to_string()),
        ("the PUT's answer", created.body.to_string()),
    ]
    .into_iter()
    .filter(|(_, text)| text.contains("SCRAM-SHA-256$") || text.contains(&verifier))
    .map(|(place, text)| format!("{place}: {text}"))
    .collect();
    assert!(
        holders.is_empty(),
        "the verifier is kept or shown:\n{}",
        holders.join("\n")
    );
    api.login(&login, "correct horse battery staple", None)
        .await
        .expect("the password works");
    let again = api.put(&tenant, body).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert!(again.sql().is_empty(), "the same verifier again: {again:?}");
}
