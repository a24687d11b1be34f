//! Who may touch which tenant, and what one client can hold of the listener, tried the
//! way an attacker would: a scoped token reaching for another team's tenant, a forged
//! identity header, an identity the operator never gave a scope, connections that never
//! finish their headers or hold every slot, a request that never ends.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use devops_api::auth::Pattern;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
};

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

/// The API's address, for raw connections.
fn address(api: &Api) -> SocketAddr {
    api.base
        .trim_start_matches("http://")
        .parse()
        .expect("an address")
}

/// A connection that sent `bytes` (not a whole request) and nothing more.
async fn dangling(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    stream
}

/// Waits until the server closes `stream` (end of file, or a reset), whatever it sends
/// before; false if it is still open at `deadline`.
async fn closed_by(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0_u8; 1024];
    tokio::time::timeout_at(deadline.into(), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn connections_that_never_finish_their_headers_are_closed_and_others_are_served() {
    let api = Api::start_with(|c| c.http.header_read_timeout_secs = 1)
        .await
        .ready()
        .await;
    let addr = address(&api);
    let mut slow = Vec::new();
    for i in 0..200 {
        // Half stop inside the request line, half inside the headers.
        let bytes: &[u8] = if i % 2 == 0 {
            b"GET /v1/tena"
        } else {
            b"GET /v1/tenants HTTP/1.1\r\nHost: devops-api\r\nAuthorization: Bearer "
        };
        slow.push(dangling(addr, bytes).await);
    }
    // One trickles a header byte every 200 ms: never idle, never done.
    let trickler = tokio::spawn(async move {
        let mut stream = dangling(addr, b"GET /v1/tenants HTTP/1.1\r\n").await;
        let started = Instant::now();
        for byte in b"X-Slow: ".iter().chain([b'a'; 200].iter()).cycle() {
            if started.elapsed() > Duration::from_secs(30) {
                return None;
            }
            if stream.write_all(&[*byte]).await.is_err()
                || closed_by(&mut stream, Instant::now() + Duration::from_millis(200)).await
            {
                return Some(started.elapsed());
            }
        }
        None
    });

    // Meanwhile a client that sends its request gets its answer.
    let served = api.get("/v1/tenants").await;
    assert_eq!(served.status, 200, "{served:?}");

    let deadline = Instant::now() + Duration::from_secs(20);
    let closed = futures::future::join_all(slow.iter_mut().map(|s| closed_by(s, deadline))).await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(
        open, 0,
        "{open} of 200 connections without complete headers are still open"
    );
    let trickled = trickler.await.expect("trickler");
    assert!(
        trickled.is_some_and(|t| t < Duration::from_secs(10)),
        "a connection trickling its headers was not closed: {trickled:?}"
    );
    // Still serving.
    assert_eq!(api.get("/v1/tenants").await.status, 200);
}

#[tokio::test]
async fn headers_larger_than_the_head_buffer_are_refused_and_others_are_served() {
    let api = Api::start().await.ready().await;
    // A head of 300 KiB: within hyper's default buffer (~400 KiB, which 1024 connections
    // would hold as 400 MiB), beyond what a connection may buffer here (64 KiB, about
    // twice that as the buffer grows).
    let mut stream = TcpStream::connect(address(&api)).await.expect("connect");
    let request = format!(
        "GET /openapi.json HTTP/1.1\r\nHost: devops-api\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(300 * 1024)
    );
    // The server may stop reading and close (reset) before all of it is written.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answered = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answered))
        .await
        .expect("the connection is answered and closed");
    let text = String::from_utf8_lossy(&answered);
    assert!(
        read.is_err() || answered.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    assert!(!text.contains("openapi"), "served: {text}");
    assert_eq!(api.get("/v1/tenants").await.status, 200);
}

/// A whole request on a fresh connection (closed after the answer).
const WHOLE_REQUEST: &[u8] =
    b"GET /openapi.json HTTP/1.1\r\nHost: devops-api\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn beyond_the_connection_cap_a_connection_waits_until_one_closes() {
    let api = Api::start_with(|c| {
        c.http.max_connections = 8;
        c.http.header_read_timeout_secs = 60;
    })
    .await
    .ready()
    .await;
    let addr = address(&api);
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(dangling(addr, b"GET / HTTP/1.1\r\n").await);
    }
    let mut ninth = dangling(addr, WHOLE_REQUEST).await;
    let mut buf = [0_u8; 64];
    let early = tokio::time::timeout(Duration::from_secs(1), ninth.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a ninth connection was served while eight were open: {early:?}"
    );
    // One of the eight goes: the ninth is taken and answered.
    drop(idle.pop());
    let read = tokio::time::timeout(Duration::from_secs(20), ninth.read(&mut buf))
        .await
        .expect("the ninth connection is served once a slot is free")
        .expect("read");
    assert!(
        buf[..read].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..read])
    );
}

#[tokio::test]
async fn idle_connections_beyond_the_cap_are_timed_out_eight_at_a_time_and_a_request_is_then_served()
 {
    let api = Api::start_with(|c| {
        c.http.max_connections = 8;
        c.http.header_read_timeout_secs = 1;
    })
    .await
    .ready()
    .await;
    let addr = address(&api);
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(dangling(addr, b"GET / HTTP/1.1\r\n").await);
    }
    let client = reqwest::Client::new();
    let request = tokio::spawn(async move {
        client
            .get(format!("http://{addr}/openapi.json"))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // Each connection gets its 1 s from the moment it is taken: a slot frees at the
    // earliest 1 s after the start, and its next connection is closed 1 s later at the
    // earliest. So before 2 s at most the first eight can have been closed, whatever
    // the scheduling; without a cap all 50 would be closed after about 1 s.
    let closed_at = futures::future::join_all(idle.iter_mut().map(|s| async move {
        closed_by(s, Instant::now() + Duration::from_secs(60))
            .await
            .then(Instant::now)
    }))
    .await;
    let early = closed_at
        .iter()
        .flatten()
        .filter(|at| at.duration_since(started) < Duration::from_millis(1900))
        .count();
    assert!(
        early <= 8,
        "{early} connections were closed within the first header timeout: more than the cap were held"
    );
    let open = closed_at.iter().filter(|c| c.is_none()).count();
    assert_eq!(open, 0, "{open} idle connections were never closed");
    let status = request.await.expect("task").expect("served");
    assert_eq!(status, 200);
}

/// A TCP relay to PostgreSQL that can stop relaying: the API's database calls then hang,
/// as on a database that stopped answering without closing its connections.
struct Relay {
    addr: SocketAddr,
    open: watch::Sender<bool>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (open, gate) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, gate.clone()));
                tokio::spawn(pump(server_read, client_write, gate.clone()));
            }
        });
        Self { addr, open }
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut gate: watch::Receiver<bool>) {
    let mut buf = vec![0_u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if gate.wait_for(|open| *open).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_request_over_the_request_timeout_gets_503_with_retry_after() {
    let port: u16 = std::env::var("TEST_DATABASE_PORT")
        .expect("TEST_DATABASE_PORT")
        .parse()
        .expect("port");
    let relay = Relay::start(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let relayed = relay.addr;
    let api = Api::start_with(|c| {
        let url = c
            .database
            .url
            .expose()
            .replace(&format!("127.0.0.1:{port}"), &relayed.to_string());
        c.database.url = url.parse().expect("url");
        // Neither a statement nor a wait for a connection ends the request first.
        c.database.statement_timeout_ms = 1000;
        c.database.acquire_timeout_secs = 120;
        c.http.request_timeout_secs = 2;
    })
    .await
    .ready()
    .await;
    assert_eq!(api.get("/v1/tenants").await.status, 200);

    relay.set_open(false);
    let started = Instant::now();
    let slow = answer(
        api.client
            .get(format!("{}/v1/tenants", api.base))
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("an answer within 30 s"),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(slow.status, 503, "{slow:?}");
    assert_eq!(
        slow.body["type"], "https://devops-api.invalid/problems/timeout",
        "{slow:?}"
    );
    assert_eq!(slow.headers["content-type"], "application/problem+json");
    assert!(slow.headers.contains_key("retry-after"), "{slow:?}");
    assert!(slow.body["requestId"].is_string(), "{slow:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "answered after {took:?}"
    );

    // The database answers again: so does the API.
    relay.set_open(true);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = api.get("/v1/tenants").await.status;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
