//! Who may touch which tenant, tried the way an attacker would: a scoped token reaching
//! for another team's tenant, a forged identity header, an identity the operator never
//! gave a scope.

use std::collections::BTreeMap;

use devops_api::auth::Pattern;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use crate::helpers::{Answer, Api, TOKEN, admin_url, answer, role_exists, unique};

/// The token of a team limited to its own tenants.
const TEAM_TOKEN: &str = "team-token-7c1e55d0a2b94f3e";

/// The problem type of a tenant outside the caller's scope.
const OUT_OF_SCOPE: &str = "https://devops-api.invalid/problems/out-of-scope";

/// The API with the ops token (every tenant) and `team:TEAM_TOKEN:<patterns>`.
async fn with_team_token(patterns: &str) -> Api {
    Api::start_with(|c| {
        let path = c.auth.tokens_file.clone().expect("a tokens file");
        std::fs::write(
            &path,
            format!(
                "ops:{TOKEN}\n# team B sees its own tenants only\nteam:{TEAM_TOKEN}:{patterns}\n"
            ),
        )
        .expect("tokens");
    })
    .await
    .ready()
    .await
}

/// A call with `bearer` (None: with the identity header `actor` alone).
async fn call_as(
    api: &Api,
    who: Who<'_>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let mut request = api.client.request(method, format!("{}{path}", api.base));
    request = match who {
        Who::Token(token) => request.bearer_auth(token),
        Who::Identity(actor) => request.header("X-Auth-Request-User", actor),
    };
    if let Some(body) = body {
        request = request.json(&body);
    }
    answer(request.send().await.expect("sent")).await
}

#[derive(Debug, Clone, Copy)]
enum Who<'a> {
    Token(&'a str),
    Identity(&'a str),
}

fn assert_out_of_scope(answered: &Answer, tenant: &str) {
    assert_eq!(answered.status, 403, "{answered:?}");
    assert_eq!(answered.headers["content-type"], "application/problem+json");
    assert_eq!(answered.body["type"], OUT_OF_SCOPE, "{answered:?}");
    let detail = answered.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(tenant) && detail.contains("outside the caller's scope"),
        "{answered:?}"
    );
}

fn tenant_names(answered: &Answer) -> Vec<String> {
    assert_eq!(answered.status, 200, "{answered:?}");
    answered
        .body
        .as_array()
        .unwrap_or_else(|| panic!("a list: {answered:?}"))
        .iter()
        .map(|t| t["tenant"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn login_spec(tenant: &str) -> Value {
    json!({"logins": [{"name": format!("{tenant}_app"), "memberOf": "writer"}]})
}

#[tokio::test]
async fn a_scoped_token_is_refused_every_tenant_outside_its_patterns_and_nothing_is_done() {
    let team = unique("tb");
    let api = with_team_token(&format!("{team}_*")).await;
    let team_token = Who::Token(TEAM_TOKEN);
    let mut admin = api.admin().await;

    // Another team's tenant, created by ops: the team token can neither see, rotate nor
    // remove it. `{team}x` would match if `_` were a wildcard, as it is in SQL LIKE.
    let other = unique("ta");
    let near_miss = format!("{team}x");
    for tenant in [&other, &near_miss] {
        let created = api.put(tenant, login_spec(tenant)).await;
        assert_eq!(created.status, 201, "{created:?}");
    }
    for tenant in [&other, &near_miss] {
        let path = format!("/v1/tenants/{tenant}");
        assert_out_of_scope(
            &call_as(&api, team_token, Method::GET, &path, None).await,
            tenant,
        );
        assert_out_of_scope(
            &call_as(&api, team_token, Method::PUT, &path, Some(json!({}))).await,
            tenant,
        );
        assert_out_of_scope(
            &call_as(
                &api,
                team_token,
                Method::POST,
                &format!("{path}/logins/{tenant}_app/rotate"),
                None,
            )
            .await,
            tenant,
        );
        for mode in ["revoke", "drop"] {
            assert_out_of_scope(
                &call_as(
                    &api,
                    team_token,
                    Method::DELETE,
                    &format!("{path}?mode={mode}"),
                    None,
                )
                .await,
                tenant,
            );
        }
        assert!(
            role_exists(&mut admin, &format!("{tenant}_owner")).await,
            "{tenant} was not dropped"
        );
        let login_can: bool =
            sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
                .bind(format!("{tenant}_app"))
                .fetch_one(&mut admin)
                .await
                .expect("login");
        assert!(login_can, "{tenant}_app was not revoked");
    }
    // A tenant nobody made yet: refused before any SQL, nothing is created.
    let fresh = unique("tc");
    let put = call_as(
        &api,
        team_token,
        Method::PUT,
        &format!("/v1/tenants/{fresh}"),
        Some(login_spec(&fresh)),
    )
    .await;
    assert_out_of_scope(&put, &fresh);
    for role in ["owner", "writer", "reader", "app"] {
        assert!(!role_exists(&mut admin, &format!("{fresh}_{role}")).await);
    }
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM devops_api.tenants WHERE name = $1")
            .bind(&fresh)
            .fetch_one(&mut admin)
            .await
            .expect("count");
    assert_eq!(recorded, 0, "an out-of-scope tenant was recorded");
    // Only ops' own changes are in the audit log: nothing refused was attempted.
    let audit = api.get("/v1/audit").await;
    let actors: Vec<&str> = audit
        .body
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["actor"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(actors, ["ops", "ops"], "{audit:?}");
    // A hostile name is still a 422 (the name is checked before the scope).
    let hostile = call_as(
        &api,
        team_token,
        Method::PUT,
        &format!("/v1/tenants/{team}_X%22"),
        Some(json!({})),
    )
    .await;
    assert_eq!(hostile.status, 422, "{hostile:?}");

    // Inside its patterns the team token does everything.
    let own = format!("{team}_app");
    let path = format!("/v1/tenants/{own}");
    let created = call_as(&api, team_token, Method::PUT, &path, Some(login_spec(&own))).await;
    assert_eq!(created.status, 201, "{created:?}");
    assert!(role_exists(&mut admin, &format!("{own}_owner")).await);
    let got = call_as(&api, team_token, Method::GET, &path, None).await;
    assert_eq!(got.status, 200, "{got:?}");
    let rotated = call_as(
        &api,
        team_token,
        Method::POST,
        &format!("{path}/logins/{own}_app/rotate"),
        None,
    )
    .await;
    assert_eq!(rotated.status, 200, "{rotated:?}");
    let dropped = call_as(
        &api,
        team_token,
        Method::DELETE,
        &format!("{path}?mode=drop"),
        None,
    )
    .await;
    assert_eq!(dropped.status, 200, "{dropped:?}");
    assert!(!role_exists(&mut admin, &format!("{own}_owner")).await);
}

#[tokio::test]
async fn lists_and_the_audit_log_show_a_scoped_caller_only_its_tenants() {
    let team = unique("tb");
    let api = with_team_token(&format!("{team}_*,{team}?q")).await;
    let team_token = Who::Token(TEAM_TOKEN);
    let own = [
        format!("{team}_one"),
        format!("{team}_two"),
        format!("{team}zq"),
    ];
    let others = [unique("ta"), format!("{team}x"), format!("{team}zzq")];
    for tenant in own.iter().chain(&others) {
        assert_eq!(api.put(tenant, json!({})).await.status, 201, "{tenant}");
    }

    let mut listed =
        tenant_names(&call_as(&api, team_token, Method::GET, "/v1/tenants", None).await);
    listed.sort();
    let mut expected = own.to_vec();
    expected.sort();
    assert_eq!(listed, expected);
    // ops sees every tenant.
    assert_eq!(tenant_names(&api.get("/v1/tenants").await).len(), 6);

    let audit = call_as(&api, team_token, Method::GET, "/v1/audit", None).await;
    assert_eq!(audit.status, 200, "{audit:?}");
    let mut audited: Vec<String> = audit
        .body
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["tenant"].as_str().unwrap_or_default().to_owned())
        .collect();
    audited.sort();
    assert_eq!(audited, expected, "{audit:?}");
    assert_eq!(
        api.get("/v1/audit").await.body.as_array().map(Vec::len),
        Some(6)
    );
    for other in &others {
        let asked = call_as(
            &api,
            team_token,
            Method::GET,
            &format!("/v1/audit?tenant={other}"),
            None,
        )
        .await;
        assert_out_of_scope(&asked, other);
    }
    let asked = call_as(
        &api,
        team_token,
        Method::GET,
        &format!("/v1/audit?tenant={}", own[0]),
        None,
    )
    .await;
    assert_eq!(asked.body.as_array().map(Vec::len), Some(1), "{asked:?}");
}

#[tokio::test]
async fn the_identity_header_from_localhost_is_not_believed_with_the_default_config() {
    let api = Api::start().await.ready().await;
    let tenant = unique("t");
    let put = call_as(
        &api,
        Who::Identity("mallory"),
        Method::PUT,
        &format!("/v1/tenants/{tenant}"),
        Some(json!({})),
    )
    .await;
    assert_eq!(put.status, 401, "{put:?}");
    assert!(put.headers.contains_key("www-authenticate"));
    let list = call_as(
        &api,
        Who::Identity("mallory"),
        Method::GET,
        "/v1/tenants",
        None,
    )
    .await;
    assert_eq!(list.status, 401, "{list:?}");
    let mut admin = api.admin().await;
    assert!(!role_exists(&mut admin, &format!("{tenant}_owner")).await);
}

#[tokio::test]
async fn an_identity_without_identity_scopes_gets_no_tenant_and_one_with_them_gets_its_own() {
    let team = unique("tb");
    let api = Api::start_with(|c| {
        c.auth.trusted_proxies = vec!["127.0.0.1/32".into()];
        c.auth.identity_scopes =
            BTreeMap::from([("alice@example.com".into(), vec![format!("{team}_*")])]);
    })
    .await
    .ready()
    .await;
    let existing = format!("{team}_old");
    let other = unique("ta");
    for tenant in [&existing, &other] {
        assert_eq!(api.put(tenant, json!({})).await.status, 201);
    }
    let mut admin = api.admin().await;

    // Authenticated by the proxy, but given no tenant by the operator.
    let mallory = Who::Identity("mallory@example.com");
    let fresh = format!("{team}_new");
    for (method, path, body) in [
        (Method::PUT, format!("/v1/tenants/{fresh}"), Some(json!({}))),
        (Method::GET, format!("/v1/tenants/{existing}"), None),
        (
            Method::DELETE,
            format!("/v1/tenants/{existing}?mode=drop"),
            None,
        ),
        (Method::PUT, format!("/v1/tenants/{other}"), Some(json!({}))),
    ] {
        let answered = call_as(&api, mallory, method, &path, body).await;
        assert_eq!(answered.status, 403, "{path}: {answered:?}");
        assert_eq!(answered.body["type"], OUT_OF_SCOPE, "{answered:?}");
    }
    assert!(!role_exists(&mut admin, &format!("{fresh}_owner")).await);
    assert!(role_exists(&mut admin, &format!("{existing}_owner")).await);
    assert_eq!(
        call_as(&api, mallory, Method::GET, "/v1/tenants", None)
            .await
            .body,
        json!([])
    );
    assert_eq!(
        call_as(&api, mallory, Method::GET, "/v1/audit", None)
            .await
            .body,
        json!([])
    );
    // Headers differing from the configured actor in case or spacing are other actors.
    let shouting = Who::Identity("ALICE@example.com");
    let refused = call_as(
        &api,
        shouting,
        Method::GET,
        &format!("/v1/tenants/{existing}"),
        None,
    )
    .await;
    assert_eq!(refused.status, 403, "{refused:?}");

    // The configured actor gets its patterns, and only them.
    let alice = Who::Identity("alice@example.com");
    let created = call_as(
        &api,
        alice,
        Method::PUT,
        &format!("/v1/tenants/{fresh}"),
        Some(json!({})),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_out_of_scope(
        &call_as(
            &api,
            alice,
            Method::PUT,
            &format!("/v1/tenants/{other}"),
            Some(json!({})),
        )
        .await,
        &other,
    );
    let mut listed = tenant_names(&call_as(&api, alice, Method::GET, "/v1/tenants", None).await);
    listed.sort();
    // Sorted: `_new` before `_old`.
    assert_eq!(listed, [fresh.clone(), existing.clone()]);
    let audit = call_as(&api, alice, Method::GET, "/v1/audit", None).await;
    let audited: Vec<&str> = audit
        .body
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["tenant"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(audited, [existing.as_str(), fresh.as_str()], "{audit:?}");
}

#[tokio::test]
async fn a_pattern_and_its_sql_like_form_agree_on_every_name() {
    let mut conn = PgConnection::connect(&admin_url()).await.expect("connect");
    let patterns = [
        "teamb_*", "a_b", "t?_x", "*_prod", "a*b*c", "*", "exact", "_", "??", "*a", "a*", "__*",
        "?*?",
    ];
    let names = [
        "teamb_", "teamb_x", "teambx", "teamb", "a_b", "axb", "ab", "ta_x", "tab_x", "t__x",
        "x_prod", "xprod", "_prod", "abc", "aabbcc", "acb", "exact", "exactly", "_", "a", "aa",
        "a_", "__", "___", "ba",
    ];
    for pattern in patterns {
        let parsed = Pattern::parse(pattern).expect("a pattern");
        let like = parsed.to_like();
        for name in names {
            let sql: bool = sqlx::query_scalar("SELECT $1 LIKE $2")
                .bind(name)
                .bind(&like)
                .fetch_one(&mut conn)
                .await
                .expect("like");
            assert_eq!(
                parsed.matches(name),
                sql,
                "{pattern} (LIKE {like}) on {name}"
            );
        }
    }
    for bad in ["", "Team*", "a-b", "a%", "a\\_", "a b", "a,b", "*;drop"] {
        assert!(Pattern::parse(bad).is_err(), "{bad:?} was accepted");
    }
}
