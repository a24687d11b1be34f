//! Two cluster members and two aggregators, each aggregator connected to both members:
//! the topology the spec allows, where doubles, echoes and stale registrations show.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use gandalf::{connector::Connector, protocol, wire::envelope::Body};

use crate::helpers::{AGG_SECRET, Aggregator, Cluster, aggregator_config};

/// Members `m1`, `m2`; aggregators `a1`, `a2`, each with a stream to both members.
pub struct Mesh {
    pub members: Vec<Cluster>,
    pub aggregators: Vec<Aggregator>,
}

impl Mesh {
    pub async fn start() -> Self {
        let members = vec![Cluster::start(None).await, Cluster::start(None).await];
        let urls: Vec<&str> = members.iter().map(|m| m.grpc.as_str()).collect();
        let mut aggregators = Vec::new();
        for name in ["a1", "a2"] {
            let aggregator = Aggregator::spawn(aggregator_config(name, &urls, AGG_SECRET)).await;
            aggregator.wait_ready().await;
            aggregators.push(aggregator);
        }
        let mesh = Self {
            members,
            aggregators,
        };
        for aggregator in &mesh.aggregators {
            wait_members(aggregator, 2).await;
        }
        mesh
    }

    pub async fn stop(self) {
        for aggregator in self.aggregators {
            aggregator.stop().await;
        }
        for member in self.members {
            member.stop().await;
        }
    }
}

/// Waits (up to 10 s) until `aggregator` holds `count` member streams.
pub async fn wait_members(aggregator: &Aggregator, count: usize) {
    for _ in 0..200 {
        let connections = aggregator.connections().await;
        let members = connections["connections"]
            .as_array()
            .map(|all| all.iter().filter(|c| c["kind"] == "cluster").count())
            .unwrap_or(0);
        if members == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the aggregator did not reach {count} member streams within 10 s");
}

/// Counts, per event uuid, how often `connector` receives it, in the background.
fn tally(connector: &Connector) -> Arc<std::sync::Mutex<HashMap<String, usize>>> {
    let seen = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let mut rx = connector.subscribe();
    let tally = seen.clone();
    tokio::spawn(async move {
        while let Ok(envelope) = rx.recv().await {
            if let (Some(header), Some(Body::Event(event))) = (&envelope.header, &envelope.body)
                && event.topic == "mesh"
            {
                *tally
                    .lock()
                    .expect("tally")
                    .entry(header.uuid.clone())
                    .or_default() += 1;
            }
        }
    });
    seen
}

#[tokio::test]
async fn an_event_published_once_reaches_every_other_connector_exactly_once_and_never_its_sender() {
    let mesh = Mesh::start().await;
    let (a1, a2) = (&mesh.aggregators[0], &mesh.aggregators[1]);
    let sender = a1.connector("sender", "erp").await;
    let neighbour = a1.connector("neighbour", "erp").await;
    let remote = a2.connector("remote", "crm").await;
    let other_remote = a2.connector("other-remote", "crm").await;
    let at_sender = tally(&sender);
    let receivers = [
        ("neighbour", tally(&neighbour)),
        ("remote", tally(&remote)),
        ("other-remote", tally(&other_remote)),
    ];

    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(
            sender
                .send_event("mesh", "PUBLISHED", &format!("{i}"))
                .await
                .expect("send"),
        );
    }
    // Long enough for any double or echo to arrive after the first copies.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    for (name, seen) in &receivers {
        let seen = seen.lock().expect("tally");
        for uuid in &sent {
            assert_eq!(
                seen.get(uuid).copied().unwrap_or(0),
                1,
                "{name} must get event {uuid} exactly once: {seen:?}"
            );
        }
        assert_eq!(seen.len(), sent.len(), "{name}: nothing else");
    }
    assert!(
        at_sender.lock().expect("tally").is_empty(),
        "the sender never gets its own events back: {:?}",
        at_sender.lock().expect("tally")
    );
    for member in &mesh.members {
        let log = member.events().await;
        let logged = log["events"]
            .as_array()
            .expect("log")
            .iter()
            .filter(|e| e["topic"] == "mesh")
            .count();
        assert_eq!(
            logged,
            sent.len(),
            "each member logs each event once: {log}"
        );
    }
    mesh.stop().await;
}

#[tokio::test]
async fn a_command_through_two_members_is_executed_once_and_acknowledged() {
    let mesh = Mesh::start().await;
    let (a1, a2) = (&mesh.aggregators[0], &mesh.aggregators[1]);
    let sender = a1.connector("billing-1", "erp").await;
    // One receiver on the other aggregator, one on the sender's: the command's legs
    // through the sender's own aggregator reuse its uuid.
    let received = Arc::new(AtomicUsize::new(0));
    let mut serving = Vec::new();
    for (aggregator, name, kind) in [(a2, "crm-remote", "crm"), (a1, "ledger-local", "ledger")] {
        let receiver = Arc::new(aggregator.connector(name, kind).await);
        let received = received.clone();
        serving.push(tokio::spawn(async move {
            while let Some(incoming) = receiver.next_command().await {
                received.fetch_add(1, Ordering::SeqCst);
                receiver.acknowledge(&incoming).await.expect("ack");
            }
        }));
    }

    for kind in ["crm", "ledger"] {
        for _ in 0..5 {
            let ack = sender
                .send_command(kind, "SYNC", "{}", 1000)
                .await
                .unwrap_or_else(|e| panic!("a command to {kind} is acknowledged: {e}"));
            assert_eq!(ack.event, protocol::ON_GOING);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        received.load(Ordering::SeqCst),
        10,
        "each command executed exactly once"
    );
    for task in serving {
        task.abort();
    }
    mesh.stop().await;
}

#[tokio::test]
async fn a_member_that_rejects_the_secret_after_start_up_is_retried_while_the_other_serves() {
    let mesh = Mesh::start().await;
    let a1 = &mesh.aggregators[0];
    let sender = a1.connector("billing-1", "erp").await;
    let receiver = Arc::new(mesh.aggregators[1].connector("crm-1", "crm").await);
    let received = Arc::new(AtomicUsize::new(0));
    let _serve = {
        let (receiver, received) = (receiver.clone(), received.clone());
        tokio::spawn(async move {
            while let Some(incoming) = receiver.next_command().await {
                received.fetch_add(1, Ordering::SeqCst);
                let _ = receiver.acknowledge(&incoming).await;
            }
        })
    };
    // Member 2 comes back with rolled secrets that no longer accept the aggregators'.
    let mut members = mesh.members;
    let second = members.pop().expect("two members");
    let address = second.addr;
    second.stop().await;
    let rejecting = Cluster::start_accepting(address, None, "rolled-secret").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!a1.task.is_finished(), "the aggregator keeps running");
    assert_eq!(a1.ready_status().await, 200, "ready: member 1 serves");
    sender
        .send_command("crm", "SYNC", "{}", 1000)
        .await
        .expect("routed through member 1");

    // The secrets are fixed: the aggregator gets back to member 2 by itself.
    rejecting.stop().await;
    let accepting = Cluster::start_at(address, None).await;
    wait_members(a1, 2).await;
    members.push(accepting);
    let mesh = Mesh {
        members,
        aggregators: mesh.aggregators,
    };
    mesh.stop().await;
}

#[tokio::test]
async fn when_a_member_dies_mid_stream_events_and_commands_go_on_through_the_other() {
    let mesh = Mesh::start().await;
    let (a1, a2) = (&mesh.aggregators[0], &mesh.aggregators[1]);
    let sender = a1.connector("sender", "erp").await;
    let receiver = Arc::new(a2.connector("remote", "crm").await);
    let seen = tally(&receiver);
    let _serve = {
        let receiver = receiver.clone();
        tokio::spawn(async move {
            while let Some(incoming) = receiver.next_command().await {
                let _ = receiver.acknowledge(&incoming).await;
            }
        })
    };
    let mut members = mesh.members;
    let first = members.remove(0);
    let mut before = Vec::new();
    for i in 0..50 {
        before.push(
            sender
                .send_event("mesh", "BEFORE", &i.to_string())
                .await
                .expect("send"),
        );
    }
    first.stop().await;
    wait_members(a1, 1).await;
    wait_members(a2, 1).await;
    let mut after = Vec::new();
    for i in 0..50 {
        after.push(
            sender
                .send_event("mesh", "AFTER", &i.to_string())
                .await
                .expect("send"),
        );
    }
    for _ in 0..3 {
        sender
            .send_command("crm", "SYNC", "{}", 1000)
            .await
            .expect("acknowledged through the surviving member");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = seen.lock().expect("tally").clone();
    for uuid in before.iter().chain(&after) {
        assert_eq!(
            counts.get(uuid).copied(),
            Some(1),
            "event {uuid} exactly once: {counts:?}"
        );
    }
    let mesh = Mesh {
        members,
        aggregators: mesh.aggregators,
    };
    mesh.stop().await;
}

#[tokio::test]
async fn commands_and_configs_of_another_tenant_are_refused_with_wrong_tenant() {
    let mesh = Mesh::start().await;
    let sender = mesh.aggregators[0].connector("sender", "erp").await;
    let _target = mesh.aggregators[1].connector("remote", "crm").await;
    let mut errors = sender.subscribe();
    let foreign = [
        protocol::command("globex", "crm", "SYNC", "{}", 500),
        protocol::config("globex", protocol::REQUEST, "remote", "{}"),
    ];
    for envelope in foreign {
        let uuid = envelope
            .header
            .as_ref()
            .map(|h| h.uuid.clone())
            .expect("uuid");
        sender.send(envelope).await.expect("sent");
        let error = crate::helpers::next_event(&mut errors, protocol::WRONG_TENANT).await;
        let Some(Body::Event(event)) = error.body else {
            panic!("an event");
        };
        assert_eq!(event.reference_uuid, uuid);
    }
    mesh.stop().await;
}

/// With two members and two aggregators, a connector that stops reading on one
/// aggregator holds back no one on either: the healthy connectors get at least 90% of a
/// paced flood, none twice (the closing of the silent one is tested in `topology`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_that_stops_reading_slows_no_one_across_the_mesh() {
    use crate::topology::{SilentConnector, count_events, flood, wait_count};
    const EVENTS: usize = 6000;
    let mesh = Mesh::start().await;
    let (a1, a2) = (&mesh.aggregators[0], &mesh.aggregators[1]);
    let sender = a1.connector("sender", "erp").await;
    let near = a1.connector("near", "erp").await;
    let far = a2.connector("far", "erp").await;
    let _silent = SilentConnector::connect(a2, "silent", "erp").await;
    let (at_near, at_far) = (count_events(&near, "FLOOD"), count_events(&far, "FLOOD"));

    flood(&sender, "FLOOD", EVENTS).await;
    for (name, count) in [("near", &at_near), ("far", &at_far)] {
        let got = wait_count(count, EVENTS, Duration::from_secs(20)).await;
        assert!(got * 10 >= EVENTS * 9, "{name} got {got} of {EVENTS}");
        assert!(got <= EVENTS, "{name} got doubles: {got}");
    }
    mesh.stop().await;
}
