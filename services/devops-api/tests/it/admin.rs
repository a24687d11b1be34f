//! The API as it should run in production: its admin a role with CREATEROLE and CREATEDB
//! that is not a superuser, owning the API's database. Whatever a tenant manages to make
//! the API run then runs with those rights only.

use reqwest::Method;
use serde_json::json;
use sqlx::{Connection as _, PgConnection};

use crate::helpers::{Api, admin_url, role_exists, run, unique, with_database};

#[tokio::test]
async fn a_createrole_admin_that_is_not_a_superuser_runs_a_tenant_s_whole_life() {
    let role = unique("devops_admin");
    let database = unique("devops");
    let mut superuser = PgConnection::connect(&admin_url()).await.expect("connect");
    run(
        &mut superuser,
        &format!("CREATE ROLE {role} LOGIN CREATEROLE CREATEDB"),
    )
    .await;
    run(
        &mut superuser,
        &format!("CREATE DATABASE {database} OWNER {role}"),
    )
    .await;
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::integer")
        .fetch_one(&mut superuser)
        .await
        .expect("version");
    if version >= 160_000 {
        run(
            &mut superuser,
            &format!("ALTER ROLE {role} SET createrole_self_grant = 'set, inherit'"),
        )
        .await;
    }
    // The harness trusts TCP on loopback: the admin logs in by name.
    let url = with_database(&admin_url(), &database).replacen("postgres@", &format!("{role}@"), 1);
    let api = Api::start_on(&database, |c| {
        c.database.url = url.parse().expect("url");
    })
    .await
    .ready()
    .await;

    let tenant = unique("t");
    let (app, ro) = (format!("{tenant}_app"), format!("{tenant}_ro"));
    let spec = json!({
        "logins": [{"name": app, "memberOf": "owner"}, {"name": ro, "memberOf": "reader"}],
        "extensions": ["pgcrypto"]
    });
    let created = api.put(&tenant, spec.clone()).await;
    assert_eq!(created.status, 201, "{created:?}");
    if version < 160_000 {
        assert!(
            created
                .sql()
                .contains(&format!("GRANT \"{tenant}_owner\" TO \"{role}\"")),
            "on 15 the admin makes itself a member of what it creates: {created:?}"
        );
    }
    let again = api.put(&tenant, spec.clone()).await;
    assert_eq!((again.status, again.sql().len()), (200, 0), "{again:?}");

    // The logins work as they do under a superuser admin.
    let mut owner = api
        .login(&app, &created.password(&app), None)
        .await
        .expect("owner login");
    run(
        &mut owner,
        &format!("CREATE TABLE {tenant}.orders (id int); INSERT INTO {tenant}.orders VALUES (7)"),
    )
    .await;
    let mut reader = api
        .login(&ro, &created.password(&ro), None)
        .await
        .expect("reader login");
    let id: i32 = sqlx::query_scalar(&format!("SELECT id FROM {tenant}.orders"))
        .fetch_one(&mut reader)
        .await
        .expect("the reader reads what the owner created");
    assert_eq!(id, 7);

    // Drift made by a superuser is converged by the non-superuser admin.
    let mut hand = PgConnection::connect(&with_database(&admin_url(), &database))
        .await
        .expect("connect");
    run(
        &mut hand,
        &format!("REVOKE SELECT ON {tenant}.orders FROM {tenant}_reader"),
    )
    .await;
    let repaired = api.put(&tenant, spec.clone()).await;
    assert_eq!(
        repaired.sql(),
        [format!(
            "GRANT SELECT ON TABLE {tenant}.orders TO \"{tenant}_reader\""
        )],
        "{repaired:?}"
    );

    let rotated = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{tenant}/logins/{app}/rotate"),
            None,
        )
        .await;
    assert_eq!(rotated.status, 200, "{rotated:?}");

    // Revoke ends the reader's open session: the admin may, being a member of the login.
    let revoked = api
        .call(
            Method::DELETE,
            &format!("/v1/tenants/{tenant}?mode=revoke"),
            None,
        )
        .await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    assert!(
        revoked.body["terminatedSessions"].as_i64() >= Some(1),
        "{revoked:?}"
    );
    sqlx::query("SELECT 1")
        .execute(&mut reader)
        .await
        .expect_err("the reader's session was ended");
    let dropped = api
        .call(
            Method::DELETE,
            &format!("/v1/tenants/{tenant}?mode=drop"),
            None,
        )
        .await;
    assert_eq!(dropped.status, 200, "{dropped:?}");
    for name in [&app, &ro, &format!("{tenant}_owner")] {
        assert!(!role_exists(&mut superuser, name).await, "{name}");
    }

    // A tenant with a database of its own, created and dropped by the admin.
    let other = unique("t");
    let own = format!("{other}_db");
    let made = api
        .put(
            &other,
            json!({"database": {"name": own, "create": true},
                   "logins": [{"name": format!("{other}_app"), "memberOf": "writer"}]}),
        )
        .await;
    assert_eq!(made.status, 201, "{made:?}");
    let gone = api
        .call(
            Method::DELETE,
            &format!("/v1/tenants/{other}?mode=drop"),
            None,
        )
        .await;
    assert_eq!(gone.status, 200, "{gone:?}");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&own)
            .fetch_one(&mut superuser)
            .await
            .expect("query");
    assert!(!exists, "the database the tenant created is dropped");
    let rolsuper: bool = sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = $1")
        .bind(&role)
        .fetch_one(&mut superuser)
        .await
        .expect("query");
    assert!(!rolsuper, "the admin never was a superuser");
}
