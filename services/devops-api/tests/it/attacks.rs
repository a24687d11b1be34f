//! The second attacker's suite: each test replays an attack on the real server against
//! real PostgreSQL and asserts the behaviour the fix must have (findings F1-F16 of the
//! second review). Where an attack needs an accepted request to go on, the test goes on
//! only when the API accepted it, and asserts the harm first, the refusal after.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection};

use crate::helpers::{
    Answer, Api, TOKEN, admin_of, admin_url, answer, ask, database_exists, delete, detail,
    is_problem, is_refusal, is_retryable, names, role_exists, run, unique,
};

// ---------------------------------------------------------------------------------------
// Requests and catalog questions the attacks share.

async fn schema_exists(conn: &mut PgConnection, schema: &str) -> bool {
    ask(
        conn,
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
        &[schema],
    )
    .await
}

/// A new database, made by hand (not by the API), with `options` (`ENCODING ...`).
async fn hand_made_database(options: &str) -> String {
    let database = unique("hand");
    let mut admin = PgConnection::connect(&admin_url()).await.expect("admin");
    run(&mut admin, &format!("CREATE DATABASE {database} {options}")).await;
    database
}

const OUTSIDER_PASSWORD: &str = "outsider-password-1f2e3d";

/// A login no tenant owns, made by hand, with a password.
async fn hand_made_login(admin: &mut PgConnection, prefix: &str) -> String {
    let role = unique(prefix);
    run(
        admin,
        &format!("CREATE ROLE {role} LOGIN PASSWORD '{OUTSIDER_PASSWORD}'"),
    )
    .await;
    role
}

/// Whether `text` (a statement) is about the schema `public`.
fn mentions_schema_public(sql: &str) -> bool {
    let lower = sql.to_lowercase();
    lower.contains("schema public") || lower.contains("schema \"public\"")
}

/// A tenant on a fresh API, with logins (`suffix`, group): `<tenant>_<suffix>`.
struct Team {
    api: Api,
    tenant: String,
    spec: Value,
    made: Answer,
    admin: PgConnection,
}

impl Team {
    async fn new(logins: &[(&str, &str)]) -> Self {
        let api = Api::start().await.ready().await;
        let tenant = unique("t");
        let logins: Vec<Value> = logins
            .iter()
            .map(|(suffix, group)| json!({"name": format!("{tenant}_{suffix}"), "memberOf": group}))
            .collect();
        let spec = json!({ "logins": logins });
        let made = api.put(&tenant, spec.clone()).await;
        assert_eq!(made.status, 201, "{made:?}");
        let admin = api.admin().await;
        Self {
            api,
            tenant,
            spec,
            made,
            admin,
        }
    }

    fn role(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.tenant)
    }

    /// A session of the login `<tenant>_<suffix>` (over the Unix socket, with the password
    /// its creation returned).
    async fn session(&self, suffix: &str, database: Option<&str>) -> PgConnection {
        let login = self.role(suffix);
        self.api
            .login(&login, &self.made.password(&login), database)
            .await
            .unwrap_or_else(|e| panic!("{login} logs in: {e}"))
    }

    async fn drift(&self) -> Value {
        let view = self.api.get(&format!("/v1/tenants/{}", self.tenant)).await;
        assert_eq!(view.status, 200, "{view:?}");
        view.body["drift"].clone()
    }

    async fn ask(&mut self, sql: &str, binds: &[&str]) -> bool {
        ask(&mut self.admin, sql, binds).await
    }
}

fn is_empty_list(value: &Value) -> bool {
    value.as_array().is_some_and(Vec::is_empty)
}

// ---------------------------------------------------------------------------------------
// F1: a schema named like another tenant's role captures that role's "$user".

#[tokio::test]
async fn a_schema_named_like_another_tenant_s_future_owner_role_is_refused_with_422() {
    let api = Api::start().await.ready().await;
    let attacker = unique("teama");
    let victim = unique("teamb");
    // Tenant `victim` does not exist yet: no role has this name, so no check sees it.
    let planted = format!("{victim}_owner");
    let login = format!("{attacker}_app");
    let put = api
        .put(
            &attacker,
            json!({"schema": planted, "logins": [{"name": login, "memberOf": "owner"}]}),
        )
        .await;
    if put.status < 300 {
        // The attacker's owner login owns the schema and opens it to everyone.
        let mut app = api
            .login(&login, &put.password(&login), None)
            .await
            .expect("login");
        run(
            &mut app,
            &format!("GRANT USAGE, CREATE ON SCHEMA {planted} TO PUBLIC"),
        )
        .await;
    }
    // The victim arrives; its owner login (SET role = <victim>_owner) creates a table
    // unqualified: "$user" is <victim>_owner, first on the default search_path.
    let victim_login = format!("{victim}_app");
    let made = api
        .put(
            &victim,
            json!({"logins": [{"name": victim_login, "memberOf": "owner"}]}),
        )
        .await;
    assert_eq!(made.status, 201, "{made:?}");
    let mut session = api
        .login(&victim_login, &made.password(&victim_login), None)
        .await
        .expect("login");
    let _ = sqlx::query("CREATE TABLE items (v text)")
        .execute(&mut session)
        .await;
    let mut admin = api.admin().await;
    assert!(
        !ask(
            &mut admin,
            "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = 'items')",
            &[&planted],
        )
        .await,
        "{victim}'s owner login created its table in {planted}, the schema tenant {attacker} owns"
    );
    assert!(is_refusal(&put), "{put:?}");
    assert!(
        !schema_exists(&mut admin, &planted).await,
        "a schema {planted} was made"
    );
    assert!(
        !role_exists(&mut admin, &format!("{attacker}_owner")).await,
        "the refused tenant's roles were created"
    );
}

#[tokio::test]
async fn a_schema_that_is_neither_the_tenant_s_name_nor_prefixed_by_it_is_refused_with_422() {
    let api = Api::start().await.ready().await;
    let mut admin = api.admin().await;
    let mut wrong = Vec::new();
    for shape in ["unrelated", "glued", "suffixed"] {
        let tenant = unique("t");
        let schema = match shape {
            "unrelated" => unique("s"),
            // Not `<tenant>_...`: the tenant's name with something glued on.
            "glued" => format!("{tenant}x"),
            _ => format!("x_{tenant}"),
        };
        let put = api.put(&tenant, json!({"schema": schema})).await;
        if !is_refusal(&put) {
            wrong.push(format!(
                "schema {schema} for tenant {tenant}: {} {}",
                put.status,
                detail(&put)
            ));
        }
        if schema_exists(&mut admin, &schema).await {
            wrong.push(format!("schema {schema} was made"));
        }
        if role_exists(&mut admin, &format!("{tenant}_owner")).await {
            wrong.push(format!("{tenant}_owner was made"));
        }
    }
    // What stays allowed: the tenant's name, and `<tenant>_...`.
    let tenant = unique("t");
    let own = api
        .put(&tenant, json!({"schema": format!("{tenant}_data")}))
        .await;
    if own.status != 201 {
        wrong.push(format!(
            "schema {tenant}_data: {} {}",
            own.status,
            detail(&own)
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------
// F2: grant options let a tenant's group pass privileges on to strangers.

/// A tenant with an owner, a writer and a reader login, and a hand-made outsider login.
async fn team_and_outsider() -> (Team, String) {
    let mut team = Team::new(&[("app", "owner"), ("rw", "writer"), ("ro", "reader")]).await;
    let outsider = hand_made_login(&mut team.admin, "outsider").await;
    (team, outsider)
}

/// The owner login gives the reader group SELECT WITH GRANT OPTION on a table of its own,
/// and the reader login passes SELECT on to the outsider.
async fn reader_passes_a_table_on(team: &mut Team, outsider: &str) -> String {
    let table = format!("{}.secret", team.tenant);
    let reader = team.role("reader");
    let mut owner = team.session("app", None).await;
    run(
        &mut owner,
        &format!(
            "CREATE TABLE {table} (v text); INSERT INTO {table} VALUES ('s');
             GRANT SELECT ON {table} TO {reader} WITH GRANT OPTION"
        ),
    )
    .await;
    let mut ro = team.session("ro", None).await;
    run(&mut ro, &format!("GRANT SELECT ON {table} TO {outsider}")).await;
    assert!(
        team.ask(
            "SELECT has_table_privilege($1, $2, 'SELECT')",
            &[outsider, &table]
        )
        .await,
        "setup: the outsider was given SELECT on {table}"
    );
    table
}

const TABLE_PRIVILEGE: &str = "SELECT has_table_privilege($1, $2, $3)";

#[tokio::test]
async fn a_grant_option_on_a_table_is_drift_and_a_put_takes_it_and_what_it_passed_on_back() {
    let (mut team, outsider) = team_and_outsider().await;
    let table = reader_passes_a_table_on(&mut team, &outsider).await;
    let reader = team.role("reader");
    let before = team.drift().await;
    let put = team.api.put(&team.tenant, team.spec.clone()).await;
    let outsider_reads = team
        .ask(TABLE_PRIVILEGE, &[&outsider, &table, "SELECT"])
        .await;
    let reader_reads = team
        .ask(TABLE_PRIVILEGE, &[&reader, &table, "SELECT"])
        .await;
    let reader_passes_on = team
        .ask(
            TABLE_PRIVILEGE,
            &[&reader, &table, "SELECT WITH GRANT OPTION"],
        )
        .await;
    let after = team.drift().await;
    assert!(
        !is_empty_list(&before),
        "GET shows no drift for the grant chain: {before}"
    );
    assert_eq!(put.status, 200, "{put:?}");
    assert!(!outsider_reads, "{outsider} still has SELECT on {table}");
    assert!(reader_reads, "{reader} lost SELECT on {table}");
    assert!(
        !reader_passes_on,
        "{reader} still holds SELECT on {table} WITH GRANT OPTION"
    );
    assert_eq!(after, json!([]), "drift after the PUT");
}

#[tokio::test]
async fn a_put_that_removes_a_login_answers_200_while_a_grant_chain_exists_and_undoes_it() {
    let (mut team, outsider) = team_and_outsider().await;
    let table = reader_passes_a_table_on(&mut team, &outsider).await;
    let reader = team.role("reader");
    // The reader login, the one that passed SELECT on, leaves the spec.
    let mut spec = team.spec.clone();
    spec["logins"]
        .as_array_mut()
        .expect("logins")
        .retain(|l| l["name"] != team.role("ro"));
    let put = team.api.put(&team.tenant, spec).await;
    let outsider_reads = team
        .ask(TABLE_PRIVILEGE, &[&outsider, &table, "SELECT"])
        .await;
    let reader_passes_on = team
        .ask(
            TABLE_PRIVILEGE,
            &[&reader, &table, "SELECT WITH GRANT OPTION"],
        )
        .await;
    assert_eq!(put.status, 200, "{put:?}");
    assert!(!outsider_reads, "{outsider} still has SELECT on {table}");
    assert!(
        !reader_passes_on,
        "{reader} still holds SELECT on {table} WITH GRANT OPTION"
    );
    assert_eq!(team.drift().await, json!([]), "drift after the PUT");
}

#[tokio::test]
async fn a_grant_option_on_the_schema_is_drift_and_a_put_takes_it_and_what_it_passed_on_back() {
    let (mut team, outsider) = team_and_outsider().await;
    let schema = team.tenant.clone();
    let writer = team.role("writer");
    let mut owner = team.session("app", None).await;
    run(
        &mut owner,
        &format!("GRANT USAGE ON SCHEMA {schema} TO {writer} WITH GRANT OPTION"),
    )
    .await;
    let mut rw = team.session("rw", None).await;
    run(
        &mut rw,
        &format!("GRANT USAGE ON SCHEMA {schema} TO {outsider}"),
    )
    .await;
    let usage = "SELECT has_schema_privilege($1, $2, $3)";
    assert!(
        team.ask(usage, &[&outsider, &schema, "USAGE"]).await,
        "setup: the outsider was given USAGE on {schema}"
    );
    let before = team.drift().await;
    let put = team.api.put(&team.tenant, team.spec.clone()).await;
    let outsider_uses = team.ask(usage, &[&outsider, &schema, "USAGE"]).await;
    let writer_uses = team.ask(usage, &[&writer, &schema, "USAGE"]).await;
    let writer_passes_on = team
        .ask(usage, &[&writer, &schema, "USAGE WITH GRANT OPTION"])
        .await;
    let after = team.drift().await;
    assert!(
        !is_empty_list(&before),
        "GET shows no drift for the grant chain: {before}"
    );
    assert_eq!(put.status, 200, "{put:?}");
    assert!(!outsider_uses, "{outsider} still has USAGE on {schema}");
    assert!(writer_uses, "{writer} lost USAGE on {schema}");
    assert!(
        !writer_passes_on,
        "{writer} still holds USAGE on {schema} WITH GRANT OPTION"
    );
    assert_eq!(after, json!([]), "drift after the PUT");
}

// ---------------------------------------------------------------------------------------
// F3: a tenant put into a database it did not create rewrites that database's `public`.

#[tokio::test]
async fn a_tenant_in_a_database_it_did_not_create_leaves_that_database_s_public_schema_alone() {
    let database = hand_made_database("").await;
    let mut there = admin_of(&database).await;
    run(&mut there, "GRANT CREATE ON SCHEMA public TO PUBLIC").await;
    let legacy = hand_made_login(&mut there, "legacy").await;
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let put = api
        .put(&tenant, json!({"database": {"name": database}}))
        .await;
    assert_eq!(put.status, 201, "{put:?}");
    // The database's own users keep what its owner gave them.
    let legacy_creates = match api.login(&legacy, OUTSIDER_PASSWORD, Some(&database)).await {
        Ok(mut session) => sqlx::query("CREATE TABLE public.legacy_rows (v text)")
            .execute(&mut session)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("cannot log in: {e}")),
    };
    let can_create = ask(
        &mut there,
        "SELECT has_schema_privilege($1, 'public', 'CREATE')",
        &[&legacy],
    )
    .await;
    let about_public: Vec<String> = put
        .sql()
        .into_iter()
        .filter(|s| mentions_schema_public(s))
        .collect();
    assert!(
        can_create && legacy_creates.is_ok(),
        "{legacy} can no longer create in public of {database} ({legacy_creates:?}): the PUT ran {about_public:?}"
    );
    assert_eq!(
        about_public,
        Vec::<String>::new(),
        "the plan changes schema public of a database the tenant did not create"
    );
}

// ---------------------------------------------------------------------------------------
// F4: SQL_ASCII databases.

#[tokio::test]
async fn a_database_asked_for_with_the_sql_ascii_encoding_is_refused_with_422_and_not_created() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let database = format!("{tenant}_db");
    let put = api
        .put(
            &tenant,
            json!({"database": {"name": database, "create": true, "encoding": "SQL_ASCII"}}),
        )
        .await;
    let mut admin = api.admin().await;
    assert!(
        !database_exists(&mut admin, &database).await,
        "database {database} was created: {put:?}"
    );
    assert!(is_problem(&put, 422), "{put:?}");
    assert!(!role_exists(&mut admin, &format!("{tenant}_owner")).await);
}

#[tokio::test]
async fn the_sql_ascii_encoding_is_refused_however_it_is_spelled() {
    // PostgreSQL reads encoding names case-blind and without `_`.
    let api = Api::start().await.ready().await;
    let mut admin = api.admin().await;
    let mut wrong = Vec::new();
    for spelling in ["sql_ascii", "SqlAscii", "sqlascii"] {
        let tenant = unique("t");
        let database = format!("{tenant}_db");
        let put = api
            .put(
                &tenant,
                json!({"database": {"name": database, "create": true, "encoding": spelling}}),
            )
            .await;
        if !is_problem(&put, 422) {
            wrong.push(format!("{spelling}: {} {}", put.status, detail(&put)));
        }
        if database_exists(&mut admin, &database).await {
            wrong.push(format!("{spelling}: database {database} was created"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn a_tenant_put_into_an_existing_sql_ascii_database_is_refused_with_422() {
    let database =
        hand_made_database("ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
            .await;
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let put = api
        .put(&tenant, json!({"database": {"name": database}}))
        .await;
    let mut admin = api.admin().await;
    let schema_made = schema_exists(&mut admin_of(&database).await, &tenant).await;
    assert!(is_problem(&put, 422), "{put:?}");
    assert!(!schema_made, "schema {tenant} was made in {database}");
    assert!(
        !role_exists(&mut admin, &format!("{tenant}_owner")).await,
        "the refused tenant's roles were created"
    );
}

// ---------------------------------------------------------------------------------------
// F5: grants another tenant made to the victim's roles in another database block its drop.

#[tokio::test]
async fn grants_another_tenant_made_to_the_victim_s_roles_in_another_database_do_not_block_its_drop()
 {
    let api = Api::start().await.ready().await;
    let victim = unique("v");
    let made = api.put(&victim, json!({})).await;
    assert_eq!(made.status, 201, "{made:?}");
    let other = unique("a");
    let database = format!("{other}_db");
    let login = format!("{other}_app");
    let created = api
        .put(
            &other,
            json!({"database": {"name": database, "create": true},
                   "logins": [{"name": login, "memberOf": "owner"}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let mut app = api
        .login(&login, &created.password(&login), Some(&database))
        .await
        .expect("login");
    run(
        &mut app,
        &format!(
            "CREATE TABLE {other}.t (x int);
             GRANT SELECT ON {other}.t TO {victim}_reader;
             ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {victim}_writer;"
        ),
    )
    .await;
    drop(app);
    let dropped = delete(&api, &victim, "drop").await;
    let mut admin = api.admin().await;
    let left: Vec<String> = {
        let mut left = Vec::new();
        for group in ["owner", "writer", "reader"] {
            let role = format!("{victim}_{group}");
            if role_exists(&mut admin, &role).await {
                left.push(role);
            }
        }
        left
    };
    assert_eq!(dropped.status, 200, "{dropped:?}");
    assert_eq!(left, Vec::<String>::new(), "roles outlived the drop");
}

// ---------------------------------------------------------------------------------------
// F6: one caller can hold every connection with changes in flight.

const TEAMB_TOKEN: &str = "teamb-token-0123456789ab";

/// Sets `tenants.max_changes_per_caller` through the config's own serde form (the field
/// is named as the config file names it); where the config has no such field the default
/// stays, and the assertions below say what the API then does.
fn bound_changes_per_caller(config: &mut devops_api::config::Config, max: u64) {
    let mut tenants = serde_json::to_value(&config.tenants).expect("tenants config");
    tenants["max_changes_per_caller"] = json!(max);
    match serde_json::from_value(tenants) {
        Ok(bounded) => config.tenants = bounded,
        Err(e) => eprintln!("tenants.max_changes_per_caller cannot be set: {e}"),
    }
}

/// A PUT with `token`, as a task of its own.
fn spawn_put(
    api: &Api,
    token: &'static str,
    tenant: &str,
    body: Value,
) -> tokio::task::JoinHandle<Answer> {
    let request = api
        .client
        .put(format!("{}/v1/tenants/{tenant}", api.base))
        .bearer_auth(token)
        .json(&body);
    tokio::spawn(async move { answer(request.send().await.expect("sent")).await })
}

/// The answer of a request under way, if it comes within 15 s.
async fn within(request: tokio::task::JoinHandle<Answer>) -> Option<Answer> {
    match tokio::time::timeout(Duration::from_secs(15), request).await {
        Ok(answered) => Some(answered.expect("the request's task")),
        Err(_) => None,
    }
}

/// Waits until a session waits for an advisory lock in the connection's database.
async fn until_a_lock_is_awaited(conn: &mut PgConnection) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting = ask(
            conn,
            "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE NOT l.granted AND a.datname = current_database())",
            &[],
        )
        .await;
        if waiting {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the PUT never waited for the tenant's lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_caller_with_a_change_in_flight_beyond_its_bound_gets_429_and_other_callers_go_on() {
    let api = Api::start_with(|c| {
        let tokens = c.auth.tokens_file.clone().expect("tokens file");
        std::fs::write(
            tokens,
            format!("ops:{TOKEN}\nteamb:{TEAMB_TOKEN}:teamb_*\n"),
        )
        .expect("tokens");
        c.database.lock_timeout_ms = 25_000;
        c.database.statement_timeout_ms = 30_000;
        bound_changes_per_caller(c, 1);
    })
    .await
    .ready()
    .await;
    let blocked = unique("t");
    let mut holder = api.admin().await;
    // The API's lock of the tenant: its row in devops_api.locks, held FOR UPDATE.
    run(
        &mut holder,
        &format!(
            "BEGIN; INSERT INTO devops_api.locks VALUES ('devops-api/tenant/{blocked}');
             SELECT 1 FROM devops_api.locks WHERE key = 'devops-api/tenant/{blocked}' FOR UPDATE"
        ),
    )
    .await;
    let first = spawn_put(&api, TOKEN, &blocked, json!({}));
    until_a_lock_is_awaited(&mut holder).await;
    // ops has one change in flight: its next one is refused at once.
    let second = unique("t");
    let again = within(spawn_put(&api, TOKEN, &second, json!({}))).await;
    // Another caller is not held back by ops.
    let theirs = unique("teamb");
    let other = within(spawn_put(&api, TEAMB_TOKEN, &theirs, json!({}))).await;
    run(&mut holder, "COMMIT").await;
    let first = first.await.expect("first PUT");
    let mut admin = api.admin().await;
    let again = again.expect("ops's second change was neither answered nor refused within 15 s");
    let other = other.expect("the other caller's PUT was not answered within 15 s");
    assert_eq!(
        again.status, 429,
        "ops's second change in flight: {again:?}"
    );
    assert!(
        again.headers.contains_key("retry-after"),
        "429 without Retry-After: {again:?}"
    );
    assert!(
        !role_exists(&mut admin, &format!("{second}_owner")).await,
        "the refused change was made"
    );
    assert_eq!(other.status, 201, "the other caller's PUT: {other:?}");
    assert_eq!(
        first.status, 201,
        "the first PUT, once the lock went: {first:?}"
    );
}

// ---------------------------------------------------------------------------------------
// F7: a database created by a first PUT that then failed is orphaned.

/// Allowed by the config, installed nowhere: `CREATE EXTENSION` fails, after `CREATE
/// DATABASE` ran.
const MISSING_EXTENSION: &str = "devops_no_such_extension";

async fn api_with_a_missing_extension() -> Api {
    Api::start_with(|c| c.tenants.allowed_extensions.push(MISSING_EXTENSION.into()))
        .await
        .ready()
        .await
}

/// A first PUT of `tenant` that creates `database` and then fails.
async fn created_then_failed(api: &Api, tenant: &str, database: &str) {
    let failed = api
        .put(
            tenant,
            json!({"database": {"name": database, "create": true}, "extensions": [MISSING_EXTENSION]}),
        )
        .await;
    let mut admin = api.admin().await;
    assert!(
        (400..500).contains(&failed.status) && database_exists(&mut admin, database).await,
        "setup: the first PUT creates {database} and then fails: {failed:?}"
    );
}

#[tokio::test]
async fn a_tenant_whose_first_put_created_its_database_and_failed_cannot_move_to_another_one() {
    let api = api_with_a_missing_extension().await;
    let tenant = unique("t");
    let first = format!("{tenant}_a");
    let second = format!("{tenant}_b");
    created_then_failed(&api, &tenant, &first).await;
    let moved = api
        .put(
            &tenant,
            json!({"database": {"name": second, "create": true}}),
        )
        .await;
    let dropped = delete(&api, &tenant, "drop").await;
    let mut admin = api.admin().await;
    assert!(
        is_problem(&moved, 409) && names(detail(&moved), &first),
        "a PUT naming another database: {moved:?}"
    );
    assert!(
        !database_exists(&mut admin, &second).await,
        "{second} was created"
    );
    assert_eq!(dropped.status, 200, "{dropped:?}");
    assert!(
        !database_exists(&mut admin, &first).await,
        "{first}, created by the tenant, outlived its drop"
    );
}

#[tokio::test]
async fn a_tenant_whose_first_put_created_its_database_and_failed_can_be_dropped_with_it() {
    let api = api_with_a_missing_extension().await;
    let tenant = unique("t");
    let database = format!("{tenant}_db");
    created_then_failed(&api, &tenant, &database).await;
    let dropped = delete(&api, &tenant, "drop").await;
    let mut admin = api.admin().await;
    assert_eq!(dropped.status, 200, "{dropped:?}");
    assert!(
        !database_exists(&mut admin, &database).await,
        "{database}, created by the tenant, outlived its drop"
    );
}

// ---------------------------------------------------------------------------------------
// F8: an extension lives in one schema per database.

#[tokio::test]
async fn an_extension_another_tenant_installed_in_the_database_is_a_409_naming_it() {
    let api = Api::start().await.ready().await;
    let first = unique("t");
    let second = unique("t");
    let installed = api.put(&first, json!({"extensions": ["pgcrypto"]})).await;
    assert_eq!(installed.status, 201, "{installed:?}");
    let refused = api.put(&second, json!({"extensions": ["pgcrypto"]})).await;
    let view = api.get(&format!("/v1/tenants/{first}")).await;
    let mut admin = api.admin().await;
    let in_first = ask(
        &mut admin,
        "SELECT EXISTS (SELECT 1 FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
         WHERE e.extname = 'pgcrypto' AND n.nspname = $1)",
        &[&first],
    )
    .await;
    assert!(in_first, "pgcrypto is not in schema {first}");
    assert!(
        view.body["exists"]["extensions"]
            .as_array()
            .is_some_and(|e| e.contains(&json!("pgcrypto"))),
        "{view:?}"
    );
    assert!(
        is_problem(&refused, 409) && detail(&refused).contains("pgcrypto"),
        "a second tenant asking for pgcrypto in the same database: {refused:?}"
    );
    assert!(
        !role_exists(&mut admin, &format!("{second}_owner")).await,
        "the refused tenant's roles were created"
    );
}

// ---------------------------------------------------------------------------------------
// F9: revoke leaves what strangers were given.

#[tokio::test]
async fn revoke_takes_back_what_strangers_were_given_on_the_tenant_s_schema_and_tables() {
    let mut team = Team::new(&[("app", "owner")]).await;
    let outsider = hand_made_login(&mut team.admin, "outsider").await;
    let schema = team.tenant.clone();
    let table = format!("{schema}.t");
    let mut owner = team.session("app", None).await;
    run(
        &mut owner,
        &format!(
            "CREATE TABLE {table} (x int);
             GRANT USAGE ON SCHEMA {schema} TO {outsider};
             GRANT SELECT ON {table} TO {outsider};"
        ),
    )
    .await;
    drop(owner);
    let revoked = delete(&team.api, &team.tenant, "revoke").await;
    let uses = team
        .ask(
            "SELECT has_schema_privilege($1, $2, 'USAGE')",
            &[&outsider, &schema],
        )
        .await;
    let reads = team
        .ask(TABLE_PRIVILEGE, &[&outsider, &table, "SELECT"])
        .await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    assert!(!uses, "{outsider} still has USAGE on {schema} after revoke");
    assert!(
        !reads,
        "{outsider} still has SELECT on {table} after revoke"
    );
}

// ---------------------------------------------------------------------------------------
// F10: a validUntil past what a timestamp holds.

#[tokio::test]
async fn a_valid_until_beyond_the_year_9999_is_a_422_and_the_api_keeps_serving() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let login = format!("{tenant}_app");
    let put = api
        .put(
            &tenant,
            json!({"logins": [{"name": login, "memberOf": "reader",
                               "validUntil": "9999-12-31T23:59:59.999999999-23:59"}]}),
        )
        .await;
    let next = api.put(&unique("t"), json!({})).await;
    let mut admin = api.admin().await;
    assert!(is_problem(&put, 422), "{put:?}");
    assert!(
        !role_exists(&mut admin, &login).await,
        "{login} was created"
    );
    assert_eq!(next.status, 201, "the next PUT: {next:?}");
}

// ---------------------------------------------------------------------------------------
// F12: the drop of a tenant's database, audited and safe under concurrent drops.

/// Three concurrent drops of `tenant`, which created `database`: what went wrong (`shape`
/// says which tenant it was).
async fn three_concurrent_drops(
    api: &Api,
    tenant: &str,
    database: &str,
    shape: &str,
) -> Vec<String> {
    let drops = (0..3).map(|_| delete(api, tenant, "drop"));
    let answers = futures::future::join_all(drops).await;
    let mut wrong: Vec<String> = answers
        .iter()
        .filter(|a| a.status != 200 && !is_retryable(a))
        .map(|a| {
            format!(
                "{shape}: a drop answered neither 200 nor busy/unavailable with Retry-After: {} {}",
                a.status, a.body
            )
        })
        .collect();
    let mut admin = api.admin().await;
    if database_exists(&mut admin, database).await {
        wrong.push(format!("{shape}: {database} outlived the drops"));
    }
    let audit = api.get(&format!("/v1/audit?tenant={tenant}")).await;
    let audited = audit.body.as_array().is_some_and(|entries| {
        entries.iter().any(|e| {
            e["action"] == "drop"
                && e["plan"].as_array().is_some_and(|plan| {
                    plan.iter().any(|s| {
                        s["sql"]
                            .as_str()
                            .is_some_and(|sql| sql.contains("DROP DATABASE"))
                    })
                })
        })
    });
    if !audited {
        wrong.push(format!(
            "{shape}: no drop entry of the audit log holds DROP DATABASE: {} {}",
            audit.status, audit.body
        ));
    }
    wrong
}

#[tokio::test]
async fn concurrent_drops_of_a_tenant_that_created_its_database_drop_it_and_audit_it() {
    let api = api_with_a_missing_extension().await;
    // A live tenant, with a session of its owner login in its database.
    let tenant = unique("t");
    let database = format!("{tenant}_db");
    let login = format!("{tenant}_app");
    let created = api
        .put(
            &tenant,
            json!({"database": {"name": database, "create": true},
                   "logins": [{"name": login, "memberOf": "owner"}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let mut session = api
        .login(&login, &created.password(&login), Some(&database))
        .await
        .expect("login");
    run(
        &mut session,
        &format!("CREATE TABLE {tenant}.rows (v text)"),
    )
    .await;
    let mut wrong = three_concurrent_drops(&api, &tenant, &database, "a live tenant").await;
    // A tenant whose first PUT created its database and then failed.
    let failed = unique("t");
    let orphan = format!("{failed}_db");
    created_then_failed(&api, &failed, &orphan).await;
    wrong.extend(
        three_concurrent_drops(
            &api,
            &failed,
            &orphan,
            "a tenant whose first PUT created its database and failed",
        )
        .await,
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------
// F13: a 409 names other tenants.

#[tokio::test]
async fn a_409_for_overlapping_names_does_not_name_the_other_tenant() {
    let api = Api::start().await.ready().await;
    let short = unique("x");
    let long = format!("{short}_b");
    assert_eq!(api.put(&long, json!({})).await.status, 201);
    let refused = api.put(&short, json!({})).await;
    // The other direction: `short2` exists, `short2_b` is asked for.
    let short2 = unique("x");
    let long2 = format!("{short2}_b");
    assert_eq!(api.put(&short2, json!({})).await.status, 201);
    let refused2 = api.put(&long2, json!({})).await;
    for (answer, other) in [(&refused, &long), (&refused2, &short2)] {
        let text = detail(answer);
        assert!(is_problem(answer, 409), "{answer:?}");
        assert!(
            !names(text, other),
            "the 409 names the other tenant {other}: {text}"
        );
        // It still says why: another (unnamed) tenant's names overlap.
        let lower = text.to_lowercase();
        assert!(
            ["overlap", "other tenant", "existing tenant"]
                .iter()
                .any(|why| lower.contains(why)),
            "the 409 does not say another tenant's names overlap: {text}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// F14: strangers' privileges on the tenant's aggregates and types.

#[tokio::test]
async fn execute_given_to_a_stranger_on_an_aggregate_of_the_tenant_is_drift_and_a_put_revokes_it() {
    let mut team = Team::new(&[("app", "owner")]).await;
    let outsider = hand_made_login(&mut team.admin, "outsider").await;
    let aggregate = format!("{}.agg(integer)", team.tenant);
    let mut owner = team.session("app", None).await;
    run(
        &mut owner,
        &format!(
            "CREATE AGGREGATE {t}.agg (int) (sfunc = int4pl, stype = int);
             GRANT EXECUTE ON FUNCTION {t}.agg(int) TO {outsider};",
            t = team.tenant
        ),
    )
    .await;
    let held = "SELECT EXISTS (SELECT 1 FROM pg_proc p, aclexplode(p.proacl) a
                WHERE p.oid = $1::regprocedure AND a.grantee = to_regrole($2)::oid)";
    assert!(
        team.ask(held, &[&aggregate, &outsider]).await,
        "setup: {outsider} was given EXECUTE on {aggregate}"
    );
    let before = team.drift().await;
    let put = team.api.put(&team.tenant, team.spec.clone()).await;
    let still = team.ask(held, &[&aggregate, &outsider]).await;
    assert!(
        !is_empty_list(&before),
        "GET shows no drift for EXECUTE on {aggregate} given to {outsider}: {before}"
    );
    assert_eq!(put.status, 200, "{put:?}");
    assert!(!still, "{outsider} still holds EXECUTE on {aggregate}");
    assert_eq!(team.drift().await, json!([]), "drift after the PUT");
}

#[tokio::test]
async fn usage_given_to_a_stranger_on_a_type_of_the_tenant_is_drift_and_a_put_revokes_it() {
    let mut team = Team::new(&[("app", "owner")]).await;
    let outsider = hand_made_login(&mut team.admin, "outsider").await;
    let kind = format!("{}.mood", team.tenant);
    let mut owner = team.session("app", None).await;
    run(
        &mut owner,
        &format!("CREATE TYPE {kind} AS ENUM ('a'); GRANT USAGE ON TYPE {kind} TO {outsider};"),
    )
    .await;
    let held = "SELECT EXISTS (SELECT 1 FROM pg_type t, aclexplode(t.typacl) a
                WHERE t.oid = $1::regtype AND a.grantee = to_regrole($2)::oid)";
    assert!(
        team.ask(held, &[&kind, &outsider]).await,
        "setup: {outsider} was given USAGE on {kind}"
    );
    let before = team.drift().await;
    let put = team.api.put(&team.tenant, team.spec.clone()).await;
    let still = team.ask(held, &[&kind, &outsider]).await;
    assert!(
        !is_empty_list(&before),
        "GET shows no drift for USAGE on {kind} given to {outsider}: {before}"
    );
    assert_eq!(put.status, 200, "{put:?}");
    assert!(!still, "{outsider} still holds USAGE on {kind}");
    assert_eq!(team.drift().await, json!([]), "drift after the PUT");
}

// ---------------------------------------------------------------------------------------
// F16: two identity headers in one request.

#[tokio::test]
async fn two_identity_headers_in_one_request_are_refused_in_either_order() {
    let api = Api::start_with(|c| {
        c.auth.trusted_proxies = vec!["127.0.0.1/32".into()];
        c.auth.identity_scopes = [
            ("alice".to_owned(), vec!["*".to_owned()]),
            ("mallory".to_owned(), vec!["*".to_owned()]),
        ]
        .into();
    })
    .await
    .ready()
    .await;
    let mut admin = api.admin().await;
    let mut wrong = Vec::new();
    for (first, second) in [("mallory", "alice"), ("alice", "mallory")] {
        let tenant = unique("t");
        let with_both = |method: Method, path: String| {
            api.client
                .request(method, format!("{}{path}", api.base))
                .header("X-Auth-Request-User", first)
                .header("X-Auth-Request-User", second)
        };
        let put = answer(
            with_both(Method::PUT, format!("/v1/tenants/{tenant}"))
                .json(&json!({}))
                .send()
                .await
                .expect("sent"),
        )
        .await;
        let list = answer(
            with_both(Method::GET, "/v1/tenants".into())
                .send()
                .await
                .expect("sent"),
        )
        .await;
        for (what, answered) in [("PUT", &put), ("GET list", &list)] {
            if !matches!(answered.status, 400 | 403) {
                wrong.push(format!(
                    "{what} as {first} then {second}: {} {}",
                    answered.status, answered.body
                ));
            }
        }
        if role_exists(&mut admin, &format!("{tenant}_owner")).await {
            wrong.push(format!("{first} then {second}: {tenant} was created"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------------------
// The second review of the release binary.

#[tokio::test]
async fn a_tenant_login_holding_advisory_locks_on_the_api_s_own_keys_holds_back_nothing() {
    let api = Api::start_with(|c| c.database.lock_timeout_ms = 1_000)
        .await
        .ready()
        .await;
    let squatter = unique("t");
    let (_, mut session) = api.owner_session(&squatter).await;
    let victim = unique("t");
    // The keys the API's locks had (the README named the function): the victim's, the one
    // new tenant names take, and the squatter's own, so that its revoke would wait.
    for key in [
        format!("devops-api/tenant/{victim}"),
        "devops-api/names/".to_owned(),
        format!("devops-api/tenant/{squatter}"),
    ] {
        run(
            &mut session,
            &format!("SELECT pg_advisory_lock(pg_catalog.hashtextextended('{key}', 0))"),
        )
        .await;
    }
    let created = api.put(&victim, json!({})).await;
    assert_eq!(
        created.status, 201,
        "held back by a tenant's lock: {created:?}"
    );
    let revoked = delete(&api, &squatter, "revoke").await;
    assert_eq!(
        revoked.status, 200,
        "the squatter escaped its revoke: {revoked:?}"
    );
    sqlx::query("SELECT 1")
        .execute(&mut session)
        .await
        .expect_err("the revoke ended the squatter's session");
}

#[tokio::test]
async fn a_procedure_and_a_function_whose_arguments_read_alike_do_not_stop_a_put_or_a_revoke() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let (_, mut owner) = api.owner_session(&tenant).await;
    run(
        &mut owner,
        &format!(
            "CREATE PROCEDURE {tenant}.p(IN a int, OUT b int) LANGUAGE sql AS 'SELECT 1';
             CREATE FUNCTION {tenant}.p(int, int) RETURNS int LANGUAGE sql AS 'SELECT 1';
             GRANT EXECUTE ON FUNCTION {tenant}.p(int, int) TO {tenant}_reader"
        ),
    )
    .await;
    let spec = json!({"logins": [{"name": format!("{tenant}_app"), "memberOf": "owner"}]});
    let put = api.put(&tenant, spec).await;
    assert_eq!(put.status, 200, "{put:?}");
    let granted = ask(
        &mut api.admin().await,
        "SELECT has_function_privilege($1, $2, 'EXECUTE')
                AND (SELECT proacl FROM pg_proc WHERE oid = $2::regprocedure)::text LIKE '%' || $1 || '%'",
        &[&format!("{tenant}_reader"), &format!("{tenant}.p(int, int)")],
    )
    .await;
    assert!(
        !granted,
        "the reader's grant on the function was not taken back"
    );
    let revoked = delete(&api, &tenant, "revoke").await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
}

#[tokio::test]
async fn a_failed_create_does_not_let_the_tenant_claim_a_database_made_later_by_hand() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let database = format!("{tenant}_billing");
    let failed = api
        .put(
            &tenant,
            json!({"database": {"name": database, "create": true, "encoding": "FOO"}}),
        )
        .await;
    assert!((400..500).contains(&failed.status), "{failed:?}");
    // Later, by hand, unrelated to the tenant: an operator's database with data in it.
    let mut server = sqlx::PgConnection::connect(&admin_url())
        .await
        .expect("connect");
    run(&mut server, &format!("CREATE DATABASE {database}")).await;
    run(
        &mut admin_of(&database).await,
        "CREATE TABLE invoices (id int); INSERT INTO invoices VALUES (1)",
    )
    .await;
    let moved_in = api
        .put(&tenant, json!({"database": {"name": database}}))
        .await;
    assert_eq!(moved_in.status, 201, "{moved_in:?}");
    assert!(
        !moved_in.sql().iter().any(|s| s.contains("FROM PUBLIC")),
        "the tenant treats the operator's database as its own: {moved_in:?}"
    );
    let dropped = delete(&api, &tenant, "drop").await;
    assert_eq!(dropped.status, 200, "{dropped:?}");
    assert!(
        database_exists(&mut server, &database).await,
        "the operator's database was dropped with the tenant: {dropped:?}"
    );
}
