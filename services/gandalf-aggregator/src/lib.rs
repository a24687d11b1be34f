//! gandalf-aggregator: routes events, commands, configuration and secrets between the
//! connectors of one tenant and the members of a Gandalf cluster.
//!
//! Start-up follows five steps, in order, each logged and each failure a clear exit:
//! 1. communication: streams to the cluster members (retried with backoff until the first
//!    answers; members that drop are reconnected);
//! 2. secret: the aggregator's own secret validated by the cluster (rejected: exit 1);
//! 3. logical configuration: saved with the cluster, the stored one received back;
//! 4. database: the tenant's database info asked for; when configured, the command log;
//! 5. API: connectors are served, and `/readyz` turns ready.
//!
//! Routing is in [`router`]; the connector side in [`connectors`]; the member side in
//! [`members`].

pub mod commandlog;
pub mod config;
pub mod connectors;
pub mod http;
pub mod members;
pub mod router;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use gandalf::{frame::FrameServer, protocol, wire::envelope::Body};
use platform::ops::{OpsServer, Readiness};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    commandlog::CommandLog, config::Config, connectors::AggregatorService, members::MemberEvent,
    router::Router,
};

/// Why the aggregator could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("step 1/5 (communication): no cluster member answered within {0} s")]
    NoCluster(u64),
    #[error(
        "step 2/5 (secret): cluster member {member} rejected this aggregator's secret: {reason}"
    )]
    SecretRejected { member: String, reason: String },
    #[error("step 3/5 (logical configuration): {0}")]
    Configuration(String),
    #[error("step 4/5 (database): {0}")]
    Database(String),
    #[error("serving: {0}")]
    Serve(String),
}

/// The aggregator, bound and ready to start.
pub struct App {
    config: Config,
    grpc: TcpListener,
    ops: OpsServer,
    router: Arc<Router>,
    readiness: Readiness,
}

impl App {
    /// Binds the connector and admin listeners (port 0 picks free ones). The admin port
    /// answers from the start: `/healthz` alive, `/readyz` 503 until step 5.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let grpc = TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError::Bind(config.listen, e))?;
        let router = Router::new(&config);
        let readiness = Readiness::with_components(["initialised", "cluster"]);
        let ops = OpsServer::bind(config.admin_listen, readiness.clone())
            .await
            .map_err(|e| StartError::Bind(config.admin_listen, e))?
            .merge(http::routes(router.clone()));
        Ok(Self {
            config,
            grpc,
            ops,
            router,
            readiness,
        })
    }

    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.ops.local_addr()
    }

    /// Initialises (the five steps), then serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartError> {
        let Self {
            config,
            grpc,
            ops,
            router,
            readiness,
        } = self;
        let ops_task = tokio::spawn(ops.run(shutdown.clone()));

        // Step 1 and 2: member streams, each validated with the aggregator's secret.
        let (events_tx, mut events) = mpsc::channel(64);
        for member in &config.cluster {
            tokio::spawn(members::supervise(
                router.clone(),
                member.clone(),
                config.secret.clone(),
                Duration::from_millis(config.reconnect_backoff_max_ms),
                events_tx.clone(),
                shutdown.clone(),
            ));
        }
        drop(events_tx);
        tracing::info!(members = ?config.cluster, "step 1/5 (communication): connecting to the cluster");
        let startup = async {
            loop {
                match events.recv().await {
                    Some(MemberEvent::Connected(member)) => return Ok(member),
                    Some(MemberEvent::Rejected(member, reason)) => {
                        return Err(StartError::SecretRejected { member, reason });
                    }
                    Some(MemberEvent::Disconnected(_)) => continue,
                    None => return Err(StartError::NoCluster(config.startup_timeout_secs)),
                }
            }
        };
        let first = if config.startup_timeout_secs == 0 {
            tokio::select! { r = startup => r, () = shutdown.cancelled() => return Ok(()) }
        } else {
            tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(config.startup_timeout_secs), startup) =>
                    r.unwrap_or(Err(StartError::NoCluster(config.startup_timeout_secs))),
                () = shutdown.cancelled() => return Ok(()),
            }
        };
        let member = first?;
        tracing::info!(member = %member, "step 1/5 (communication): connected");
        tracing::info!(member = %member, "step 2/5 (secret): validated by the cluster");
        readiness.set("cluster", true);

        // Step 3: logical configuration.
        let own = serde_json::json!({
            "logical_name": config.logical_name,
            "tenant": config.tenant,
            "component_type": "aggregator",
            "listen": grpc.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "version": env!("CARGO_PKG_VERSION"),
        })
        .to_string();
        let saved = router
            .ask_cluster(
                protocol::configuration(&config.tenant, protocol::SAVE, &config.logical_name, &own),
                Duration::from_secs(5),
            )
            .await
            .map_err(StartError::Configuration)?;
        let stored = match saved.body {
            Some(Body::Configuration(c)) => match c.context.get("error") {
                Some(problem) => return Err(StartError::Configuration(problem.clone())),
                None => c.payload,
            },
            other => {
                return Err(StartError::Configuration(format!(
                    "unexpected reply {other:?}"
                )));
            }
        };
        tracing::info!(stored = %stored, "step 3/5 (logical configuration): saved with the cluster");

        // Step 4: database.
        let reply = router
            .ask_cluster(
                protocol::configuration_database(&config.tenant, protocol::REQUEST, ""),
                Duration::from_secs(5),
            )
            .await
            .map_err(StartError::Database)?;
        let database_url = database_url(reply)?;
        match database_url {
            Some(url) => {
                let log = CommandLog::start(&url, &config.logical_name, &config.tenant)
                    .await
                    .map_err(StartError::Database)?;
                router.set_command_log(log);
                tracing::info!("step 4/5 (database): connected; commands are logged");
            }
            None => tracing::info!(
                "step 4/5 (database): none configured for the tenant; command log off"
            ),
        }

        // Step 5: API.
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_serving::<FrameServer<AggregatorService>>()
            .await;
        let drain = platform::shutdown::Drain::new();
        let service = AggregatorService::new(router.clone(), shutdown.clone(), drain.clone());
        let stream = config.stream();
        let serve = stream
            .server()
            .add_service(health)
            .add_service(FrameServer::new(service, stream.max_message_bytes))
            .serve_with_incoming_shutdown(nodelay(grpc), shutdown.clone().cancelled_owned());
        readiness.set("initialised", true);
        tracing::info!(logical_name = %config.logical_name, tenant = %config.tenant, "step 5/5 (API): serving connectors");

        // Readiness follows the cluster: at least one member connected. A member that
        // rejects the secret now is retried by its supervisor while the others serve.
        let watch_readiness = {
            let (readiness, router) = (readiness.clone(), router.clone());
            async move {
                while let Some(event) = events.recv().await {
                    if let MemberEvent::Rejected(member, reason) = &event {
                        tracing::error!(member = %member, %reason, members_connected = router.cluster_connections(), "a cluster member rejects this aggregator's secret; retrying it with backoff");
                    }
                    readiness.set("cluster", router.cluster_connections() > 0);
                }
                Ok::<(), StartError>(())
            }
        };
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        let outcome = tokio::select! {
            served = serve => served.map_err(|e| StartError::Serve(e.to_string())),
            watched = watch_readiness => watched,
            () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => Ok(()),
        };
        reporter
            .set_not_serving::<FrameServer<AggregatorService>>()
            .await;
        shutdown.cancel();
        // The connector handlers end on the token; wait for exactly them, then flush
        // what they logged.
        if let Err(err) = drain.wait(grace).await {
            tracing::warn!(error = %err, "connector handlers still running at exit");
        }
        if let Some(log) = router.command_log() {
            let _ = tokio::time::timeout(grace, log.flush()).await;
        }
        let _ = ops_task.await;
        outcome
    }
}

/// Accepted connections with TCP_NODELAY: small envelopes must not wait for Nagle's
/// algorithm (with delayed ACKs that costs tens of milliseconds per exchange).
fn nodelay(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// The command log's URL from the cluster's ConfigurationDatabase reply (none: the tenant
/// has no database). Errors never show the payload: it holds the URL and its password.
fn database_url(reply: gandalf::wire::Envelope) -> Result<Option<String>, StartError> {
    match reply.body {
        Some(Body::ConfigurationDatabase(c)) if !c.payload.is_empty() => {
            serde_json::from_str::<serde_json::Value>(&c.payload)
                .ok()
                .and_then(|v| v["url"].as_str().map(str::to_owned))
                .map(Some)
                .ok_or_else(|| {
                    StartError::Database(format!(
                        "the cluster's database reply is not JSON with a string \"url\" \
                         ({} bytes, not shown: it may hold credentials)",
                        c.payload.len()
                    ))
                })
        }
        Some(Body::ConfigurationDatabase(_)) => Ok(None),
        Some(other) => Err(StartError::Database(format!(
            "the cluster answered the database request with {}",
            protocol::kind(&other)
        ))),
        None => Err(StartError::Database(
            "the cluster answered the database request with an empty envelope".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use gandalf::protocol;

    use super::database_url;

    #[test]
    fn an_unreadable_database_reply_is_reported_without_its_payload() {
        for payload in [
            r#"{"url": 5, "dsn": "postgres://log:s3cret@db/x"}"#,
            "postgres://log:s3cret@db/x",
        ] {
            let reply = protocol::configuration_database("acme", protocol::REPLY, payload);
            let error = database_url(reply).expect_err("unreadable").to_string();
            assert!(!error.contains("s3cret"), "{error}");
            assert!(error.contains("step 4/5"), "{error}");
        }
        let other = protocol::event("acme", "t", "E", "", "postgres://log:s3cret@db/x");
        let error = database_url(other).expect_err("not a reply").to_string();
        assert!(!error.contains("s3cret"), "{error}");
        let good = protocol::configuration_database(
            "acme",
            protocol::REPLY,
            r#"{"url":"postgres://h/db"}"#,
        );
        assert_eq!(
            database_url(good).expect("readable").as_deref(),
            Some("postgres://h/db")
        );
    }
}
