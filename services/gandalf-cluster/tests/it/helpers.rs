//! A cluster per test, and aggregator streams driven by hand.

use std::{collections::BTreeMap, str::FromStr, time::Duration};

use gandalf::{
    protocol::{self, ComponentType, Peer},
    wire::{Envelope, cluster_client::ClusterClient},
};
use gandalf_cluster::{
    App,
    config::{Config, DatabaseInfo, TenantConfig},
};
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, Streaming, transport::Channel};

pub struct TestCluster {
    pub grpc: String,
    pub admin: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestCluster {
    /// Tenants: acme (secrets s1, s2; a database) and globex (g1; no database).
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// [`TestCluster::start`] with `adjust` applied to the test configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let mut tenants = BTreeMap::new();
        tenants.insert(
            "acme".to_owned(),
            TenantConfig {
                secrets: vec![SecretString::from("s1"), SecretString::from("s2")],
                aggregator_secrets: Vec::new(),
                database: Some(DatabaseInfo {
                    url: FromStr::from_str("postgres://acme:pw@db/acme").expect("url"),
                }),
            },
        );
        tenants.insert(
            "globex".to_owned(),
            TenantConfig {
                secrets: vec![SecretString::from("g1")],
                aggregator_secrets: Vec::new(),
                database: None,
            },
        );
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            admin_listen: "127.0.0.1:0".parse().expect("addr"),
            tenants,
            event_log_capacity: 3,
            shutdown_grace_secs: 2,
            ..Config::default()
        };
        adjust(&mut config);
        let app = App::build(config).await.expect("bind");
        let grpc = format!("http://{}", app.grpc_addr().expect("addr"));
        let admin = format!("http://{}", app.admin_addr().expect("addr"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run(stop.clone()));
        Self {
            grpc,
            admin,
            stop,
            task,
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc.clone())
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("stops within its grace period")
            .expect("join")
            .expect("clean stop");
    }
}

/// An aggregator stream played by the test.
pub struct Aggregator {
    tx: mpsc::Sender<Envelope>,
    rx: Streaming<Envelope>,
}

impl Aggregator {
    /// Opens a stream and sends VALIDATION; returns the stream and the first reply, or
    /// the status the open failed with.
    pub async fn open(
        cluster: &TestCluster,
        name: &str,
        tenant: &str,
        secret: &str,
    ) -> Result<(Self, Envelope), Status> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(protocol::validation(tenant, secret))
            .await
            .expect("queue");
        let mut request = Request::new(ReceiverStream::new(rx));
        Peer {
            logical_name: name.into(),
            component_type: ComponentType::Aggregator,
            connector_type: None,
        }
        .write_metadata(request.metadata_mut())
        .expect("metadata");
        let mut rx = ClusterClient::new(cluster.channel().await)
            .connect(request)
            .await?
            .into_inner();
        let first = rx
            .message()
            .await?
            .ok_or_else(|| Status::unknown("stream ended"))?;
        Ok((Self { tx, rx }, first))
    }

    /// Opens a validated stream.
    pub async fn connected(cluster: &TestCluster, name: &str, tenant: &str, secret: &str) -> Self {
        let (aggregator, reply) = Self::open(cluster, name, tenant, secret)
            .await
            .expect("open");
        assert_eq!(
            secret_reply(&reply),
            Some(("VALIDATION_REPLY".into(), "true".into()))
        );
        aggregator
    }

    pub async fn send(&self, envelope: Envelope) {
        self.tx.send(envelope).await.expect("send");
    }

    /// The next envelope, within 5 s.
    pub async fn next(&mut self) -> Envelope {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("an envelope within 5 s")
            .expect("stream ok")
            .expect("stream open")
    }

    /// Asserts nothing arrives for `ms`.
    pub async fn expect_silence(&mut self, ms: u64) {
        if let Ok(message) =
            tokio::time::timeout(Duration::from_millis(ms), self.rx.message()).await
        {
            panic!("expected nothing, got {message:?}");
        }
    }

    /// The status the stream ends with.
    pub async fn end_status(&mut self) -> Option<Status> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.rx.message())
                .await
                .expect("ends")
            {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    }
}

/// (command, payload) of a Secret body.
pub fn secret_reply(envelope: &Envelope) -> Option<(String, String)> {
    match &envelope.body {
        Some(gandalf::wire::envelope::Body::Secret(s)) => {
            Some((s.command.clone(), s.payload.clone()))
        }
        _ => None,
    }
}
