//! Hostile names, passwords and the server log, authentication, client mistakes, the
//! audit log, a database that is down, the OpenAPI document.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Api, TOKEN, answer, role_exists, server_log, unique};

#[tokio::test]
async fn hostile_names_get_422_and_no_sql_runs() {
    let api = Api::start().await.ready().await;
    let marker = unique("m");
    let cases = [
        // A tenant in the path.
        (
            format!("/v1/tenants/{marker}%22%3B%20DROP%20ROLE%20postgres%3B--"),
            json!({}),
        ),
        (format!("/v1/tenants/Upper{marker}"), json!({})),
        (format!("/v1/tenants/{}", "a".repeat(64)), json!({})),
        // Names in the body.
        (
            format!("/v1/tenants/{marker}"),
            json!({"schema": format!("{marker}'; DROP SCHEMA public; --")}),
        ),
        (
            format!("/v1/tenants/{marker}"),
            json!({"logins": [{"name": format!("{marker}_a;b"), "memberOf": "reader"}]}),
        ),
        (
            format!("/v1/tenants/{marker}"),
            json!({"extensions": [format!("{marker}\"x")]}),
        ),
        (
            format!("/v1/tenants/{marker}"),
            json!({"database": {"name": format!("{marker}DB")}}),
        ),
    ];
    for (path, body) in cases {
        let answered = api.call(Method::PUT, &path, Some(body.clone())).await;
        assert_eq!(answered.status, 422, "{path} {body}: {answered:?}");
        assert_eq!(answered.headers["content-type"], "application/problem+json");
        assert!(
            answered.body["errors"]
                .as_array()
                .is_some_and(|e| !e.is_empty()),
            "{answered:?}"
        );
    }
    // Statements of the API's sessions are logged (log_statement = all): none of these
    // names reached the server.
    let log = server_log();
    assert!(!log.contains(&marker), "a refused name reached the server");
    let mut admin = api.admin().await;
    assert!(!role_exists(&mut admin, &format!("{marker}_owner")).await);
}

#[tokio::test]
async fn no_password_appears_in_the_server_log() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let body = json!({"logins": [{"name": format!("{tenant}_app"), "memberOf": "writer"}]});
    let created = api.put(&tenant, body).await;
    assert_eq!(created.status, 201, "{created:?}");
    let first = created.password(&format!("{tenant}_app"));
    let rotated = api
        .call(
            Method::POST,
            &format!("/v1/tenants/{tenant}/logins/{tenant}_app/rotate"),
            None,
        )
        .await;
    let second = rotated.password(&format!("{tenant}_app"));
    let log = server_log();
    assert!(
        log.contains(&format!("CREATE ROLE \"{tenant}_app\"")),
        "statements are logged"
    );
    assert!(
        log.contains("SCRAM-SHA-256$4096:"),
        "only verifiers reach the server"
    );
    assert!(
        !log.contains(&first) && !log.contains(&second),
        "a password is in the server log"
    );
    // Nor in the audit log.
    let audit = api.get(&format!("/v1/audit?tenant={tenant}")).await;
    let text = audit.body.to_string();
    assert!(!text.contains(&first) && !text.contains(&second) && !text.contains("SCRAM-SHA-256$"));
}

#[tokio::test]
async fn no_or_wrong_credentials_get_401_or_403_and_nothing_runs() {
    let api = Api::start_with(|c| c.auth.trusted_proxies = vec!["10.0.0.0/8".into()])
        .await
        .ready()
        .await;
    let tenant = unique("t");
    let url = format!("{}/v1/tenants/{tenant}", api.base);
    let none = answer(
        api.client
            .put(&url)
            .json(&json!({}))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(none.status, 401, "{none:?}");
    assert!(none.headers.contains_key("www-authenticate"));
    let wrong = answer(
        api.client
            .put(&url)
            .bearer_auth("not-the-token-0000000000")
            .json(&json!({}))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(wrong.status, 403, "{wrong:?}");
    // The identity header from 127.0.0.1, which is not a trusted proxy here: ignored.
    let header = answer(
        api.client
            .put(&url)
            .header("X-Auth-Request-User", "mallory")
            .json(&json!({}))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(header.status, 401, "{header:?}");
    let mut admin = api.admin().await;
    assert!(
        !role_exists(&mut admin, &format!("{tenant}_owner")).await,
        "nothing was executed"
    );
    let audit = api.get(&format!("/v1/audit?tenant={tenant}")).await;
    assert_eq!(audit.body, json!([]));
}

#[tokio::test]
async fn the_identity_header_from_a_trusted_proxy_is_the_actor_of_the_audit_log() {
    let api = Api::start_with(|c| {
        c.auth.trusted_proxies = vec!["127.0.0.1/32".into()];
        c.auth.identity_scopes = [("alice@example.com".into(), vec!["t_*".into()])].into();
    })
    .await
    .ready()
    .await;
    let tenant = unique("t");
    let put = answer(
        api.client
            .put(format!("{}/v1/tenants/{tenant}", api.base))
            .header("X-Auth-Request-User", "alice@example.com")
            .header("x-request-id", "req-42")
            .json(&json!({}))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(put.status, 201, "{put:?}");
    assert_eq!(put.headers["x-request-id"], "req-42");
    let audit = api.get(&format!("/v1/audit?tenant={tenant}")).await;
    let entries = audit.body.as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{audit:?}");
    assert_eq!(entries[0]["actor"], "alice@example.com");
    assert_eq!(entries[0]["requestId"], "req-42");
    assert_eq!(entries[0]["action"], "put");
    assert_eq!(entries[0]["outcome"], "applied");
    assert!(entries[0]["plan"].as_array().is_some_and(|p| !p.is_empty()));
    // The token works too, and says who.
    api.put(&tenant, json!({})).await;
    let audit = api.get(&format!("/v1/audit?tenant={tenant}")).await;
    assert_eq!(audit.body[1]["actor"], "ops");
    assert_eq!(audit.body[1]["outcome"], "unchanged");
    // Append-only, even for the API's own role.
    let mut admin = api.admin().await;
    sqlx::query("CREATE ROLE api_like NOLOGIN")
        .execute(&mut admin)
        .await
        .ok();
    let refused = sqlx::query("UPDATE devops_api.audit_log SET actor = 'nobody'")
        .execute(&mut admin)
        .await
        .expect_err("no update");
    assert!(refused.to_string().contains("append-only"), "{refused}");
    let refused = sqlx::query("DELETE FROM devops_api.audit_log")
        .execute(&mut admin)
        .await
        .expect_err("no delete");
    assert!(refused.to_string().contains("append-only"), "{refused}");
}

#[tokio::test]
async fn client_mistakes_get_problem_json_and_never_a_500() {
    let api = Api::start_with(|c| c.max_body_bytes = 4096)
        .await
        .ready()
        .await;
    let tenant = unique("t");
    let url = format!("{}/v1/tenants/{tenant}", api.base);
    let send = |request: reqwest::RequestBuilder| async move {
        answer(request.bearer_auth(TOKEN).send().await.expect("sent")).await
    };
    let cases =
        [
            (
                send(
                    api.client
                        .put(&url)
                        .header("content-type", "application/json")
                        .body("{not json"),
                )
                .await,
                400,
            ),
            (
                send(api.client.put(&url).json(&json!({"shema": "x"}))).await,
                422,
            ),
            (
                send(api.client.put(&url).json(
                    &json!({"logins": [{"name": format!("{tenant}_a"), "memberOf": "root"}]}),
                ))
                .await,
                422,
            ),
            (
                send(
                    api.client
                        .put(&url)
                        .header("content-type", "application/json")
                        .body(format!("{{\"schema\": \"{}\"}}", "a".repeat(5000))),
                )
                .await,
                413,
            ),
            (send(api.client.patch(&url).json(&json!({}))).await, 405),
            (send(api.client.get(&url)).await, 404),
            (
                send(api.client.get(format!("{}/v1/nothing", api.base))).await,
                404,
            ),
            (
                send(
                    api.client
                        .put(format!("{url}?dryRun=maybe"))
                        .json(&json!({})),
                )
                .await,
                400,
            ),
            (
                send(api.client.delete(format!("{url}?mode=shred"))).await,
                400,
            ),
            (send(api.client.put(&url).body("{}")).await, 415),
            (
                send(
                    api.client
                        .put(&url)
                        .json(&json!({"database": {"name": format!("{tenant}_missing")}})),
                )
                .await,
                422,
            ),
        ];
    for (answered, status) in cases {
        assert_eq!(answered.status, status, "{answered:?}");
        assert_eq!(
            answered.headers["content-type"], "application/problem+json",
            "{answered:?}"
        );
        assert_eq!(answered.body["status"], status);
        assert!(
            answered.body["requestId"]
                .as_str()
                .is_some_and(|id| !id.is_empty()),
            "{answered:?}"
        );
        assert!(answered.body["detail"].is_string());
    }
    // Still serving.
    assert_eq!(api.put(&tenant, json!({})).await.status, 201);
}

#[tokio::test]
async fn a_database_that_is_down_gives_503_with_retry_after_and_readyz_false() {
    // A port where nothing listens.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let api = Api::start_with(|c| {
        c.database.url = format!("postgres://postgres@127.0.0.1:{port}/postgres")
            .parse()
            .expect("url");
        c.database.acquire_timeout_secs = 1;
    })
    .await;
    let ready = api
        .client
        .get(format!("{}/readyz", api.admin_http))
        .send()
        .await
        .expect("sent");
    assert_eq!(ready.status(), 503);
    let put = api.put(&unique("t"), json!({})).await;
    assert_eq!(put.status, 503, "{put:?}");
    assert_eq!(put.headers["retry-after"], "5");
    assert_eq!(put.headers["content-type"], "application/problem+json");
    let health = api
        .client
        .get(format!("{}/healthz", api.admin_http))
        .send()
        .await
        .expect("sent");
    assert_eq!(health.status(), 200, "alive, though not ready");
}

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint() {
    let api = Api::start().await.ready().await;
    let doc = answer(
        api.client
            .get(format!("{}/openapi.json", api.base))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(doc.status, 200);
    assert!(
        doc.body["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    let paths = doc.body["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/v1/tenants/{name}", "put"),
        ("/v1/tenants/{name}", "get"),
        ("/v1/tenants/{name}", "delete"),
        ("/v1/tenants", "get"),
        ("/v1/tenants/{name}/logins/{login}/rotate", "post"),
        ("/v1/audit", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path}"
        );
    }
    let spec = &doc.body["components"]["schemas"]["TenantSpec"]["properties"];
    for field in ["schema", "database", "logins", "extensions", "revokePublic"] {
        assert!(spec.get(field).is_some(), "{field}: {spec}");
    }
}

#[tokio::test]
async fn a_rotated_tokens_file_takes_effect_without_a_restart() {
    let api = Api::start().await.ready().await;
    let tokens = api.tokens_file();
    std::fs::write(&tokens, "ops:the-new-token-0123456789ab\n").expect("rotate");
    let tenant = unique("t");
    let url = format!("{}/v1/tenants", api.base);
    let mut old = 0;
    for _ in 0..40 {
        old = api
            .client
            .get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("sent")
            .status()
            .as_u16();
        if old == 403 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(old, 403, "the old token stops working");
    let new = api
        .client
        .put(format!("{url}/{tenant}"))
        .bearer_auth("the-new-token-0123456789ab")
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    assert_eq!(new.status(), 201);
}

#[tokio::test]
async fn requests_plans_statements_and_lock_waits_are_measured() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    assert_eq!(api.put(&tenant, json!({})).await.status, 201);
    assert_eq!(api.get("/v1/tenants/nobody_here").await.status, 404);
    let metrics = api
        .client
        .get(format!("{}/metrics", api.admin_http))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    for expected in [
        "devops_api_requests_total{route=\"/v1/tenants/{name}\",status=\"201\"}",
        "devops_api_requests_total{route=\"/v1/tenants/{name}\",status=\"404\"}",
        "devops_api_plan_statements",
        "devops_api_statement_seconds",
        "devops_api_lock_wait_seconds",
    ] {
        assert!(metrics.contains(expected), "{expected}:\n{metrics}");
    }
}
