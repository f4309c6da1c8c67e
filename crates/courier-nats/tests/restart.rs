//! A private nats-server is killed and restarted while events are in flight: every accepted event
//! still gets exactly one verdict, every success is stored, and re-publishing the retryable
//! failures lands them all exactly once.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{event, stored_messages};
use courier_conformance::fresh_topic;
use courier_conformance::nats_server::PrivateServer;
use courier_core::dispatch::Delivery;
use courier_core::{Bus, EventId, PublisherConfig, Topic};
use courier_nats::{NatsBus, NatsConfig};
use futures::StreamExt;

const EVENTS: usize = 30_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_stream_loses_no_result_and_no_event() {
    let mut server = PrivateServer::start("");
    let config = NatsConfig::new(server.url()).ack_timeout(Duration::from_secs(2));
    let bus = NatsBus::connect(config).await.expect("connect to the private server");
    let topic = fresh_topic(&bus, "restart").await;

    let publisher =
        bus.publisher(PublisherConfig::default().window(1_024).close_timeout(Duration::from_secs(60)));
    let mut results = publisher.results().unwrap();
    let reader = tokio::spawn(async move {
        let mut verdicts = HashMap::new();
        while let Some(result) = results.recv().await {
            let previous = verdicts.insert(result.event_id, result.outcome);
            assert!(previous.is_none(), "two verdicts for {}", result.event_id);
        }
        verdicts
    });

    let events: Vec<_> = (0..EVENTS).map(|i| event(&format!("agg-{}", i % 100), format!("{i}"))).collect();
    let by_id: HashMap<EventId, _> = events.iter().map(|e| (e.event_id(), e.clone())).collect();
    let producer = {
        let (publisher, topic) = (publisher.clone(), topic.clone());
        tokio::spawn(async move {
            let mut accepted = HashSet::new();
            for e in events {
                let id = publisher.submit(&topic, e).await.expect("accepted");
                accepted.insert(id);
                // Keep the stream going at a pace where the restart lands mid-way.
                if accepted.len() % 250 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            accepted
        })
    };

    // Kill the server once a part has been published, and bring it back a moment later.
    while publisher.pending() == 0 || stored_messages(&bus, &topic).await < (EVENTS / 5) as u64 {
        assert!(!producer.is_finished(), "publishing ended before the restart could interrupt it");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let in_flight = publisher.pending();
    server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.start_again();

    let accepted = producer.await.unwrap();
    publisher.close().await.expect("close drains every verdict");
    let verdicts = reader.await.unwrap();
    assert_eq!(verdicts.len(), accepted.len(), "a verdict for every accepted event");
    assert_eq!(verdicts.keys().copied().collect::<HashSet<_>>(), accepted);

    let mut succeeded = HashSet::new();
    let mut retry = Vec::new();
    for (id, outcome) in &verdicts {
        match outcome {
            Ok(_) => {
                succeeded.insert(*id);
            }
            Err(err) => {
                assert!(err.is_retryable(), "non-retryable error during a restart: {err}");
                retry.push(by_id[id].clone());
            }
        }
    }
    eprintln!(
        "{in_flight} in flight at the kill; {} acknowledged, {} retryable failures",
        succeeded.len(),
        retry.len()
    );
    let connects = bus.client().statistics().connects.load(std::sync::atomic::Ordering::Relaxed);
    assert!(connects >= 2, "the client never reconnected ({connects} connects)");

    // Every acknowledged event survived the crash.
    let stored = read_all(&bus, &topic).await;
    let missing = succeeded.difference(&stored).count();
    assert_eq!(missing, 0, "{missing} acknowledged events are not in the stream");

    // Re-publishing the failures is safe: each lands exactly once.
    let again = bus.publisher(PublisherConfig::default());
    let mut acks = Vec::new();
    for e in retry {
        acks.push(again.publish(&topic, e).await.unwrap());
    }
    for ack in acks {
        ack.await.expect("re-publish after the restart");
    }
    again.close().await.unwrap();
    assert_eq!(stored_messages(&bus, &topic).await, EVENTS as u64, "each event stored exactly once");
    assert_eq!(read_all(&bus, &topic).await.len(), EVENTS);
}

/// Event ids currently in the stream, read through a fresh consumer group.
async fn read_all(bus: &NatsBus, topic: &Topic) -> HashSet<EventId> {
    let expected = stored_messages(bus, topic).await as usize;
    let group = format!("verify-{}", uuid::Uuid::now_v7().simple());
    let mut stream = bus.subscribe(topic, &group).await.unwrap();
    let mut ids = HashSet::new();
    let mut read = 0;
    while read < expected {
        let delivery = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .unwrap_or_else(|_| panic!("read {read} of {expected} stored events"))
            .unwrap();
        ids.insert(delivery.envelope().event_id());
        delivery.ack().await.unwrap();
        read += 1;
    }
    ids
}
