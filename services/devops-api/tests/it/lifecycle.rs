//! A tenant's life against real PostgreSQL: create, nothing to do, dry run, drift,
//! rotate, revoke, drop, concurrent PUTs, and what its roles may and may not do.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Api, role_exists, snapshot, unique};

fn spec(tenant: &str) -> serde_json::Value {
    json!({
        "logins": [
            {"name": format!("{tenant}_app"), "memberOf": "owner", "connectionLimit": 20,
             "password": {"generate": true}},
            {"name": format!("{tenant}_ro"), "memberOf": "reader"}
        ],
        "extensions": ["pgcrypto"]
    })
}

#[tokio::test]
async fn a_tenant_is_created_and_an_identical_put_changes_nothing() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let created = api.put(&tenant, spec(&tenant)).await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.headers["cache-control"], "no-store");
    let sql = created.sql().join("\n");
    for expected in [
        format!("CREATE ROLE \"{tenant}_owner\" NOLOGIN"),
        format!("CREATE SCHEMA \"{tenant}\" AUTHORIZATION \"{tenant}_owner\""),
        format!("CREATE EXTENSION IF NOT EXISTS \"pgcrypto\" SCHEMA \"{tenant}\""),
    ] {
        assert!(sql.contains(&expected), "{expected}\n{sql}");
    }
    assert!(!sql.contains("SCRAM"), "verifiers are not shown: {sql}");
    let app_password = created.password(&format!("{tenant}_app"));
    let ro_password = created.password(&format!("{tenant}_ro"));
    assert_eq!(app_password.len(), 32);

    let mut admin = api.admin().await;
    let before = snapshot(&mut admin, &tenant, &tenant).await;
    let again = api.put(&tenant, spec(&tenant)).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert!(again.sql().is_empty(), "{again:?}");
    assert!(
        again.body.get("credentials").is_none(),
        "a password is returned once only"
    );
    assert_eq!(snapshot(&mut admin, &tenant, &tenant).await, before);

    // The owner login works in its schema, not in public; the reader reads what the
    // owner creates later, and cannot write.
    let mut app = api
        .login(&format!("{tenant}_app"), &app_password, None)
        .await
        .expect("login");
    sqlx::query(&format!(
        "CREATE TABLE {tenant}.orders (id int PRIMARY KEY, total numeric)"
    ))
    .execute(&mut app)
    .await
    .expect("create table in its schema");
    sqlx::query(&format!("INSERT INTO {tenant}.orders VALUES (1, 9.5)"))
        .execute(&mut app)
        .await
        .expect("insert");
    let public = sqlx::query("CREATE TABLE public.intruder (id int)")
        .execute(&mut app)
        .await
        .expect_err("no CREATE in public");
    assert!(public.to_string().contains("permission denied"), "{public}");
    let owner: String = sqlx::query_scalar(&format!(
        "SELECT tableowner::text FROM pg_tables WHERE schemaname = '{tenant}' AND tablename = 'orders'"
    ))
    .fetch_one(&mut admin)
    .await
    .expect("owner");
    assert_eq!(
        owner,
        format!("{tenant}_owner"),
        "what the login creates belongs to the owner"
    );
    let mut ro = api
        .login(&format!("{tenant}_ro"), &ro_password, None)
        .await
        .expect("login");
    let total: f64 = sqlx::query_scalar(&format!("SELECT total::float8 FROM {tenant}.orders"))
        .fetch_one(&mut ro)
        .await
        .expect("the reader reads the table created after it");
    assert_eq!(total, 9.5);
    let write = sqlx::query(&format!("DELETE FROM {tenant}.orders"))
        .execute(&mut ro)
        .await
        .expect_err("the reader cannot write");
    assert!(write.to_string().contains("permission denied"), "{write}");

    // Another tenant's login cannot read this one.
    let other = unique("t");
    let made = api
        .put(
            &other,
            json!({"logins": [{"name": format!("{other}_app"), "memberOf": "writer"}]}),
        )
        .await;
    assert_eq!(made.status, 201, "{made:?}");
    let mut stranger = api
        .login(
            &format!("{other}_app"),
            &made.password(&format!("{other}_app")),
            None,
        )
        .await
        .expect("login");
    let denied = sqlx::query(&format!("SELECT * FROM {tenant}.orders"))
        .execute(&mut stranger)
        .await
        .expect_err("no access to another tenant");
    assert!(denied.to_string().contains("permission denied"), "{denied}");
}

#[tokio::test]
async fn a_dry_run_returns_exactly_what_the_run_then_executes_and_changes_nothing() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let planned = api.plan(&tenant, spec(&tenant)).await;
    assert_eq!(planned.status, 200, "{planned:?}");
    assert_eq!(planned.body["dryRun"], true);
    assert!(planned.body.get("credentials").is_none());
    let mut admin = api.admin().await;
    assert!(
        !role_exists(&mut admin, &format!("{tenant}_owner")).await,
        "the dry run created nothing"
    );
    let applied = api.put(&tenant, spec(&tenant)).await;
    assert_eq!(applied.status, 201);
    assert_eq!(planned.sql(), applied.sql());
    // Also for a drifted tenant.
    sqlx::query(&format!("ALTER ROLE {tenant}_ro CONNECTION LIMIT 3"))
        .execute(&mut admin)
        .await
        .expect("drift");
    let planned = api.plan(&tenant, spec(&tenant)).await;
    let applied = api.put(&tenant, spec(&tenant)).await;
    assert_eq!(
        planned.sql(),
        [format!("ALTER ROLE \"{tenant}_ro\" CONNECTION LIMIT -1")]
    );
    assert_eq!(planned.sql(), applied.sql());
}

#[tokio::test]
async fn a_grant_removed_by_hand_is_drift_and_a_put_restores_it() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    assert_eq!(api.put(&tenant, spec(&tenant)).await.status, 201);
    let mut admin = api.admin().await;
    sqlx::query(&format!(
        "REVOKE USAGE ON SCHEMA {tenant} FROM {tenant}_reader"
    ))
    .execute(&mut admin)
    .await
    .expect("revoke by hand");
    let view = api.get(&format!("/v1/tenants/{tenant}")).await;
    assert_eq!(view.status, 200, "{view:?}");
    let drift: Vec<&str> = view.body["drift"]
        .as_array()
        .expect("drift")
        .iter()
        .filter_map(|s| s["sql"].as_str())
        .collect();
    assert_eq!(
        drift,
        [format!(
            "GRANT USAGE ON SCHEMA \"{tenant}\" TO \"{tenant}_reader\""
        )]
    );
    assert_eq!(
        view.body["exists"]["schemaOwner"],
        format!("{tenant}_owner")
    );
    let repaired = api.put(&tenant, spec(&tenant)).await;
    assert_eq!(repaired.sql(), drift);
    let view = api.get(&format!("/v1/tenants/{tenant}")).await;
    assert_eq!(view.body["drift"], json!([]));
}

#[tokio::test]
async fn rotate_changes_the_password_and_the_old_one_stops_working() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let created = api.put(&tenant, spec(&tenant)).await;
    let login = format!("{tenant}_app");
    let old = created.password(&login);
    api.login(&login, &old, None)
        .await
        .expect("the first password works");
    let rotated = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{tenant}/logins/{login}/rotate"),
            None,
        )
        .await;
    assert_eq!(rotated.status, 200, "{rotated:?}");
    let new = rotated.password(&login);
    assert_ne!(new, old);
    assert_eq!(
        rotated.sql(),
        [format!("ALTER ROLE \"{login}\" PASSWORD '<redacted>'")]
    );
    let refused = api
        .login(&login, &old, None)
        .await
        .expect_err("the old password is refused");
    assert!(
        refused
            .to_string()
            .contains("password authentication failed"),
        "{refused}"
    );
    api.login(&login, &new, None)
        .await
        .expect("the new password works");
    // Rotating a login the tenant does not declare is a 404.
    let missing = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{tenant}/logins/{tenant}_nobody/rotate"),
            None,
        )
        .await;
    assert_eq!(missing.status, 404, "{missing:?}");
}

#[tokio::test]
async fn revoke_keeps_the_data_and_stops_the_login_and_drop_removes_everything_twice() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let created = api.put(&tenant, spec(&tenant)).await;
    let login = format!("{tenant}_app");
    let password = created.password(&login);
    let mut app = api.login(&login, &password, None).await.expect("login");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {tenant}.kept (v text); INSERT INTO {tenant}.kept VALUES ('x')"
    ))
    .execute(&mut app)
    .await
    .expect("data");
    drop(app);

    let revoked = api
        .call(
            Method::DELETE,
            &format!("/v1/tenants/{tenant}?mode=revoke"),
            None,
        )
        .await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    assert!(
        revoked
            .sql()
            .contains(&format!("ALTER ROLE \"{login}\" NOLOGIN")),
        "{revoked:?}"
    );
    let refused = api
        .login(&login, &password, None)
        .await
        .expect_err("no login after revoke");
    assert!(
        refused.to_string().contains("not permitted to log in"),
        "{refused}"
    );
    let mut admin = api.admin().await;
    let kept: String = sqlx::query_scalar(&format!("SELECT v FROM {tenant}.kept"))
        .fetch_one(&mut admin)
        .await
        .expect("the data is kept");
    assert_eq!(kept, "x");
    let again = api
        .call(
            Method::DELETE,
            &format!("/v1/tenants/{tenant}?mode=revoke"),
            None,
        )
        .await;
    assert_eq!((again.status, again.sql().len()), (200, 0), "{again:?}");
    // A PUT brings it back.
    let restored = api.put(&tenant, spec(&tenant)).await;
    assert!(
        restored
            .sql()
            .contains(&format!("ALTER ROLE \"{login}\" LOGIN")),
        "{restored:?}"
    );
    api.login(&login, &password, None)
        .await
        .expect("the login works again");

    let dropped = api
        .call(
            Method::DELETE,
            &format!("/v1/tenants/{tenant}?mode=drop"),
            None,
        )
        .await;
    assert_eq!(dropped.status, 200, "{dropped:?}");
    assert!(dropped.sql()[0].starts_with("DROP OWNED BY"), "{dropped:?}");
    for role in ["owner", "writer", "reader", "app", "ro"] {
        assert!(
            !role_exists(&mut admin, &format!("{tenant}_{role}")).await,
            "{role}"
        );
    }
    let schema: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&tenant)
            .fetch_one(&mut admin)
            .await
            .expect("query");
    assert!(!schema, "the schema and its table are gone");
    let again = api
        .call(
            Method::DELETE,
            &format!("/v1/tenants/{tenant}?mode=drop"),
            None,
        )
        .await;
    assert_eq!((again.status, again.sql().len()), (200, 0), "{again:?}");
}

#[tokio::test]
async fn a_database_the_api_creates_is_dropped_with_the_tenant() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let database = format!("{tenant}_db");
    let body = json!({"database": {"name": database, "create": true}, "logins": [{"name": format!("{tenant}_app"), "memberOf": "writer"}]});
    let created = api.put(&tenant, body.clone()).await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(
        created.sql()[0],
        format!("CREATE DATABASE \"{database}\" TEMPLATE template0")
    );
    assert!(created.sql().contains(&format!(
        "REVOKE ALL ON DATABASE \"{database}\" FROM PUBLIC"
    )));
    let login = format!("{tenant}_app");
    let mut app = api
        .login(&login, &created.password(&login), Some(&database))
        .await
        .expect("login to the new database");
    sqlx::query(&format!(
        "SELECT count(*) FROM pg_namespace WHERE nspname = '{tenant}'"
    ))
    .execute(&mut app)
    .await
    .expect("query");
    drop(app);
    assert!(api.put(&tenant, body).await.sql().is_empty());
    let dropped = api
        .call(
            Method::DELETE,
            &format!("/v1/tenants/{tenant}?mode=drop"),
            None,
        )
        .await;
    assert_eq!(dropped.status, 200, "{dropped:?}");
    assert_eq!(
        dropped.sql().last().map(String::as_str),
        Some(format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)").as_str())
    );
    let mut admin = api.admin().await;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&database)
            .fetch_one(&mut admin)
            .await
            .expect("query");
    assert!(!exists);
}

#[tokio::test]
async fn concurrent_puts_of_one_tenant_serialise_without_an_error() {
    // More than tenants.max_changes_per_caller at once: the bound is lifted, the lock is
    // what is tested.
    let api = Api::start_with(|c| c.tenants.max_changes_per_caller = 100)
        .await
        .ready()
        .await;
    let tenant = unique("t");
    let puts = (0..6).map(|_| api.put(&tenant, spec(&tenant)));
    let answers = futures::future::join_all(puts).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 201),
        "{answers:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    let applied = answers.iter().filter(|a| !a.sql().is_empty()).count();
    assert_eq!(applied, 1, "one PUT did the work, the others found it done");
    assert!(api.put(&tenant, spec(&tenant)).await.sql().is_empty());
}

#[tokio::test]
async fn a_given_verifier_and_an_expiry_are_applied_once_and_compared_after() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let login = format!("{tenant}_svc");
    // The client computes the verifier; the clear password never reaches the API.
    let verifier = devops_api::scram::verifier("correct horse battery").expect("random");
    let body = |verifier: &str| {
        json!({"logins": [{"name": login, "memberOf": "writer", "validUntil": "2999-01-31T12:30:00Z",
                            "password": {"scramVerifier": verifier}}]})
    };
    let created = api.put(&tenant, body(&verifier)).await;
    assert_eq!(created.status, 201, "{created:?}");
    assert!(
        created.body.get("credentials").is_none(),
        "nothing generated, nothing returned"
    );
    api.login(&login, "correct horse battery", None)
        .await
        .expect("the client's password works");
    let mut admin = api.admin().await;
    let until: String = sqlx::query_scalar("SELECT to_char(rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM pg_roles WHERE rolname = $1")
        .bind(&login)
        .fetch_one(&mut admin)
        .await
        .expect("query");
    assert_eq!(until, "2999-01-31 12:30:00");
    assert!(
        api.put(&tenant, body(&verifier)).await.sql().is_empty(),
        "same verifier, same expiry: nothing"
    );
    let next = devops_api::scram::verifier("another one").expect("random");
    let changed = api.put(&tenant, body(&next)).await;
    assert_eq!(
        changed.sql(),
        [format!("ALTER ROLE \"{login}\" PASSWORD '<redacted>'")]
    );
    api.login(&login, "another one", None)
        .await
        .expect("the new password works");
    // A login whose password the client manages is not rotated by the API.
    let rotate = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{tenant}/logins/{login}/rotate"),
            None,
        )
        .await;
    assert_eq!(rotate.status, 409, "{rotate:?}");
}
