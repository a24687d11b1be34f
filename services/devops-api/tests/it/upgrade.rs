//! An API database written by the previous version (migration 0001 only, tenants recorded
//! by name, a client's verifier kept in the spec) is taken over by this one: migration
//! 0002 records what those tenants own by OID and forgets the verifier, and the tenants
//! carry on as they were.

use serde_json::json;
use sha2::{Digest as _, Sha384};
use sqlx::{Connection as _, PgConnection};

use crate::helpers::{Api, admin_url, run, unique, with_database};

/// The previous version's only migration, as sqlx recorded it.
const FIRST: &str = include_str!("../../migrations/0001_tenants_and_audit.sql");

#[tokio::test]
async fn tenants_recorded_by_the_previous_version_are_adopted_by_oid_and_lose_their_verifier() {
    let database = unique("devops");
    let mut server = PgConnection::connect(&admin_url()).await.expect("connect");
    run(&mut server, &format!("CREATE DATABASE {database}")).await;
    let mut old = PgConnection::connect(&with_database(&admin_url(), &database))
        .await
        .expect("connect");
    // The previous version's schema, and sqlx's record that it ran.
    run(
        &mut old,
        "CREATE SCHEMA devops_api; SET search_path = devops_api",
    )
    .await;
    run(&mut old, FIRST).await;
    run(
        &mut old,
        "CREATE TABLE devops_api._sqlx_migrations (version bigint PRIMARY KEY, description text NOT NULL,
             installed_on timestamptz NOT NULL DEFAULT now(), success boolean NOT NULL,
             checksum bytea NOT NULL, execution_time bigint NOT NULL)",
    )
    .await;
    sqlx::query(
        "INSERT INTO devops_api._sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (1, 'tenants and audit', true, $1, 1)",
    )
    .bind(Sha384::digest(FIRST.as_bytes()).to_vec())
    .execute(&mut old)
    .await
    .expect("migration row");

    // A tenant as the previous version left it: its roles and schema, recorded by name,
    // its login's verifier in the spec.
    let tenant = unique("t");
    let login = format!("{tenant}_svc");
    let verifier = devops_api::scram::verifier("old password").expect("random");
    let spec = json!({"logins": [{"name": login, "memberOf": "writer",
                                  "password": {"scramVerifier": verifier}}]});
    run(
        &mut old,
        &format!(
            "CREATE ROLE {tenant}_owner NOLOGIN; CREATE ROLE {tenant}_writer NOLOGIN;
             CREATE ROLE {tenant}_reader NOLOGIN;
             CREATE ROLE {login} LOGIN PASSWORD '{verifier}' IN ROLE {tenant}_writer;
             CREATE SCHEMA {tenant} AUTHORIZATION {tenant}_owner"
        ),
    )
    .await;
    sqlx::query(
        "INSERT INTO devops_api.tenants (name, spec, database, created_database, verifiers)
         VALUES ($1, $2, $3, false, $4)",
    )
    .bind(&tenant)
    .bind(&spec)
    .bind(&database)
    .bind(json!({ &login: devops_api::plan::verifier_hash(&verifier) }))
    .execute(&mut old)
    .await
    .expect("tenant row");

    let api = Api::start_on(&database, |_| {}).await.ready().await;
    let kept: String =
        sqlx::query_scalar("SELECT spec::text FROM devops_api.tenants WHERE name = $1")
            .bind(&tenant)
            .fetch_one(&mut old)
            .await
            .expect("spec");
    assert!(
        !kept.contains("SCRAM-SHA-256$"),
        "the verifier is no longer kept: {kept}"
    );
    let owned: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM devops_api.owned WHERE tenant = $1 AND kind = 'role' ORDER BY name",
    )
    .bind(&tenant)
    .fetch_all(&mut old)
    .await
    .expect("owned");
    assert_eq!(
        owned,
        [
            format!("{tenant}_owner"),
            format!("{tenant}_reader"),
            login.clone(),
            format!("{tenant}_writer"),
        ]
    );

    // The tenant carries on: its roles and schema are its own, its password unchanged.
    let again = api.put(&tenant, spec).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert!(
        !again.sql().iter().any(|s| s.contains("PASSWORD")),
        "the same verifier is not set again: {again:?}"
    );
    let view = api.get(&format!("/v1/tenants/{tenant}")).await;
    assert_eq!(view.status, 200, "{view:?}");
    assert_eq!(view.body["drift"], json!([]), "{view:?}");
    api.login(&login, "old password", None)
        .await
        .expect("the login's password is the one it had");
}
