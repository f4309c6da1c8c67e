//! Fault injection on librdkafka's mock cluster: whatever the brokers do, every accepted event
//! gets exactly one verdict, failures are typed and retryable where a retry can help, and
//! re-publishing the failed events gets every event stored; a subscriber commits a record that is
//! not an event only once its dead-letter copy is stored.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use courier_conformance::events;
use courier_core::dispatch::Delivery;
use courier_core::{
    Bus, Envelope, ErrorKind, EventId, Position, PublisherConfig, Receipt, Topic, TopicConfig, Transport,
};
use courier_kafka::{KafkaBus, KafkaConfig};
use futures::StreamExt;
use rdkafka::bindings::{rd_kafka_resp_err_t, rd_kafka_test_fatal_error};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::ClientConfig;

const BROKERS: i32 = 3;

/// A fresh topic with three partitions, replicated on `replicas` brokers.
async fn topic_on(bus: &KafkaBus, test: &str, replicas: u32) -> Topic {
    let topic = Topic::new(format!("fault-{test}-{}", uuid::Uuid::now_v7().simple())).unwrap();
    let config = TopicConfig::new(topic.clone()).partitions(3).replicas(replicas);
    bus.provision(&config).await.expect("provision");
    topic
}

/// Publishes `events` pipelined and returns each event's verdict, checking there is exactly one.
async fn publish(
    bus: &KafkaBus,
    topic: &Topic,
    events: &[Envelope],
) -> HashMap<EventId, Result<Receipt, courier_core::Error>> {
    let publisher = bus.publisher(PublisherConfig::default().window(10_000));
    let mut acks = Vec::with_capacity(events.len());
    for e in events {
        acks.push(publisher.publish(topic, e.clone()).await.expect("accepted"));
    }
    let mut verdicts = HashMap::new();
    for ack in acks {
        let id = ack.event_id();
        assert!(verdicts.insert(id, ack.await).is_none(), "two verdicts for {id}");
    }
    publisher.close().await.expect("close drains every verdict");
    assert_eq!(verdicts.len(), events.len());
    verdicts
}

/// Reads `topic` from the start with a fresh group until `expected` ids were seen; returns how
/// often each id was received.
async fn consume(bus: &KafkaBus, topic: &Topic, expected: &HashSet<EventId>) -> HashMap<EventId, usize> {
    let mut stream =
        bus.subscribe(topic, &format!("reader-{}", uuid::Uuid::now_v7().simple())).await.unwrap();
    let mut seen = HashMap::new();
    while !expected.iter().all(|id| seen.contains_key(id)) {
        let d = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} events readable", seen.len(), expected.len()))
            .expect("stream open");
        *seen.entry(d.envelope().event_id()).or_insert(0) += 1;
        d.ack().await.unwrap();
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_down_then_up_every_event_gets_one_verdict_and_none_is_lost() {
    let bus = KafkaBus::connect(
        KafkaConfig::mock(BROKERS as u32)
            .delivery_timeout(Duration::from_millis(1500))
            .producer_set("reconnect.backoff.max.ms", "200"),
    )
    .expect("mock cluster");
    let topic = topic_on(&bus, "outage", BROKERS as u32).await;
    let warm_up = events(100, 10, 64);
    assert!(publish(&bus, &topic, &warm_up).await.values().all(Result::is_ok));

    let batch = events(3_000, 50, 256);
    let publishing = {
        let (bus, topic, batch) = (bus.clone(), topic.clone(), batch.clone());
        tokio::spawn(async move { publish(&bus, &topic, &batch).await })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    {
        let mock = bus.mock_cluster().expect("mock cluster");
        for broker in 1..=BROKERS {
            mock.broker_down(broker).unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    {
        let mock = bus.mock_cluster().expect("mock cluster");
        for broker in 1..=BROKERS {
            mock.broker_up(broker).unwrap();
        }
    }
    let verdicts = publishing.await.unwrap();
    let failed: Vec<Envelope> = batch.iter().filter(|e| verdicts[&e.event_id()].is_err()).cloned().collect();
    assert!(!failed.is_empty(), "the outage outlasted message.timeout.ms, so some events must have failed");
    for e in &failed {
        let err = verdicts[&e.event_id()].as_ref().unwrap_err();
        assert!(err.is_retryable(), "an outage is retryable: {err}");
        assert!(err.message().contains(&e.event_id().to_string()), "the error names the event: {err}");
    }

    // Re-publish what failed, as the outbox relay does, until everything is stored.
    let mut pending = failed;
    for _round in 0..10 {
        if pending.is_empty() {
            break;
        }
        let retried = publish(&bus, &topic, &pending).await;
        pending.retain(|e| match &retried[&e.event_id()] {
            Ok(_) => false,
            Err(err) => {
                assert!(err.is_retryable(), "{err}");
                true
            }
        });
    }
    assert!(pending.is_empty(), "{} events still failing after the brokers came back", pending.len());
    let all: HashSet<EventId> = warm_up.iter().chain(&batch).map(Envelope::event_id).collect();
    consume(&bus, &topic, &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_produce_errors_are_retried_without_duplicates() {
    let bus = KafkaBus::mock(BROKERS as u32).expect("mock cluster");
    let topic = topic_on(&bus, "transient", BROKERS as u32).await;
    bus.mock_cluster().expect("mock cluster").request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        ],
    );
    let batch = events(2_000, 40, 128);
    let verdicts = publish(&bus, &topic, &batch).await;
    for (id, verdict) in &verdicts {
        verdict.as_ref().unwrap_or_else(|err| panic!("{id}: librdkafka retries transient errors: {err}"));
    }
    let positions: HashSet<(i32, i64)> = verdicts
        .values()
        .map(|v| match v.as_ref().unwrap().position {
            Position::Partition { partition, offset } => (partition, offset),
            ref other => panic!("not a Kafka position: {other:?}"),
        })
        .collect();
    assert_eq!(positions.len(), batch.len(), "two events reported at one position");
    let ids: HashSet<EventId> = batch.iter().map(Envelope::event_id).collect();
    let seen = consume(&bus, &topic, &ids).await;
    let duplicated: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "idempotence must prevent duplicates from internal retries: {duplicated:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_produce_errors_are_typed_and_not_retryable() {
    let bus = KafkaBus::mock(BROKERS as u32).expect("mock cluster");
    let topic = topic_on(&bus, "permanent", BROKERS as u32).await;
    bus.mock_cluster().expect("mock cluster").request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 50],
    );
    let batch = events(200, 10, 64);
    let verdicts = publish(&bus, &topic, &batch).await;
    let refused: Vec<_> = verdicts.values().filter_map(|v| v.as_ref().err()).collect();
    assert!(!refused.is_empty(), "the injected errors reached no event");
    for err in refused {
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(!err.is_retryable());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_as_payload_too_large() {
    let bus = KafkaBus::connect(KafkaConfig::mock(1).producer_set("message.max.bytes", "20000"))
        .expect("mock cluster");
    let topic = topic_on(&bus, "size", 1).await;
    let publisher = bus.publisher(PublisherConfig::default());
    // Within the publisher's payload limit, but the headers push the record past librdkafka's.
    let limit = publisher.transport().max_payload();
    assert!(limit < 20_000);
    let mut builder = Envelope::builder("order", "o-1", "Placed").payload(vec![b'x'; limit]);
    for i in 0..200 {
        builder = builder.header(format!("x-padding-{i}"), "y".repeat(100));
    }
    let err = publisher.publish(&topic, builder.build().unwrap()).await.unwrap().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err}");
    assert!(!err.is_retryable());
    publisher.close().await.unwrap();
}

/// A bus whose librdkafka queue holds 10 messages, waiting up to `wait` for room.
async fn tiny_queue_bus(wait: Duration) -> (KafkaBus, Topic) {
    let config = KafkaConfig::mock(1)
        .producer_set("queue.buffering.max.messages", "10")
        .producer_set("reconnect.backoff.max.ms", "100")
        .queue_full_timeout(wait)
        // Queued events outlive the outage: these tests are about waiting for queue room.
        .delivery_timeout(Duration::from_secs(30));
    let bus = KafkaBus::connect(config).expect("mock cluster");
    let topic = topic_on(&bus, "queue", 1).await;
    (bus, topic)
}

fn set_broker(bus: &KafkaBus, up: bool) {
    let mock = bus.mock_cluster().expect("mock cluster");
    if up { mock.broker_up(1) } else { mock.broker_down(1) }.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_waits_then_reports_backpressure() {
    let (bus, topic) = tiny_queue_bus(Duration::from_millis(300)).await;
    set_broker(&bus, false);
    let batch = events(50, 5, 64);
    let publishing = {
        let (bus, topic, batch) = (bus.clone(), topic.clone(), batch.clone());
        tokio::spawn(async move { publish(&bus, &topic, &batch).await })
    };
    // Everything beyond the queue has waited its bound and failed by now; then let the queue drain.
    tokio::time::sleep(Duration::from_secs(3)).await;
    set_broker(&bus, true);
    let verdicts = publishing.await.unwrap();
    let refused: Vec<_> = verdicts.values().filter_map(|v| v.as_ref().err()).collect();
    assert!(!refused.is_empty(), "the queue holds 10, so some of 50 events must have found it full");
    for err in &refused {
        assert_eq!(err.kind(), ErrorKind::Backpressure, "{err}");
        assert!(err.is_retryable());
    }
    assert!(verdicts.len() - refused.len() >= 10, "the queued events are delivered once the broker is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_waits_for_room_within_the_bound() {
    let (bus, topic) = tiny_queue_bus(Duration::from_secs(30)).await;
    set_broker(&bus, false);
    let batch = events(50, 5, 64);
    let publishing = {
        let (bus, topic, batch) = (bus.clone(), topic.clone(), batch.clone());
        tokio::spawn(async move { publish(&bus, &topic, &batch).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    set_broker(&bus, true);
    for (id, verdict) in publishing.await.unwrap() {
        verdict.unwrap_or_else(|err| panic!("{id} should have waited for room: {err}"));
    }
}

#[tokio::test]
async fn publishing_to_a_missing_topic_fails_naming_it() {
    let bus = KafkaBus::connect(
        KafkaConfig::mock(1)
            .producer_set("allow.auto.create.topics", "false")
            .producer_set("topic.metadata.propagation.max.ms", "500"),
    )
    .expect("mock cluster");
    let topic = Topic::new(format!("fault-missing-{}", uuid::Uuid::now_v7().simple())).unwrap();
    let events = events(3, 1, 64);
    let verdicts = publish(&bus, &topic, &events).await;
    for verdict in verdicts.values() {
        let err = verdict.as_ref().expect_err("nothing can be stored in a missing topic");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.message().contains(topic.as_str()), "{err}");
    }
}

// A fatal librdkafka error (the idempotent producer raising `ERR__FATAL`, e.g. after losing
// track of its sequence numbers) leaves a producer that refuses every message for good. The bus
// replaces it: events in flight at that moment each get one verdict (success, or a retryable
// error so the outbox relay re-publishes them), and later publishes succeed on the new producer.
/// Raises a fatal error on the producer in use, as librdkafka does when idempotence breaks.
fn inject_fatal_error(bus: &KafkaBus) {
    let reason = c"injected by the test";
    let code = bus.with_producer_client(|client| {
        // SAFETY: the client is live for the duration of the call, and `reason` is a C string
        // that librdkafka copies.
        unsafe {
            rd_kafka_test_fatal_error(
                client.native_ptr(),
                rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            )
        }
    });
    assert_eq!(code, rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR, "the fatal error was raised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_error_replaces_the_producer_and_loses_no_event() {
    let bus = KafkaBus::connect(KafkaConfig::mock(1).delivery_timeout(Duration::from_secs(10)))
        .expect("mock cluster");
    let topic = Topic::new(format!("fatal-{}", uuid::Uuid::now_v7().simple())).unwrap();
    bus.provision(&TopicConfig::new(topic.clone()).partitions(3)).await.expect("provision");
    let warm_up = events(100, 10, 64);
    assert!(publish(&bus, &topic, &warm_up).await.values().all(Result::is_ok));

    // The fatal error strikes while the first batch is queued or in flight.
    let publisher = bus.publisher(PublisherConfig::default().window(10_000));
    let (before, after) = (events(2_000, 40, 128), events(2_000, 40, 128));
    let mut acks = Vec::new();
    for e in &before {
        acks.push(publisher.publish(&topic, e.clone()).await.expect("accepted"));
    }
    inject_fatal_error(&bus);
    let mut later_acks = Vec::new();
    for e in &after {
        later_acks.push(publisher.publish(&topic, e.clone()).await.expect("accepted"));
    }

    let mut failed = Vec::new();
    let by_id: HashMap<EventId, &Envelope> = before.iter().map(|e| (e.event_id(), e)).collect();
    for ack in acks {
        let id = ack.event_id();
        let verdict =
            tokio::time::timeout(Duration::from_secs(60), ack).await.expect("a verdict for every event");
        if let Err(err) = verdict {
            assert!(err.is_retryable(), "an event caught by the fatal error can be re-published: {err}");
            failed.push(by_id[&id].clone());
        }
    }
    for ack in later_acks {
        let verdict =
            tokio::time::timeout(Duration::from_secs(60), ack).await.expect("a verdict for every event");
        let receipt = verdict.expect("publishes after the fatal error go to the new producer");
        assert!(!receipt.duplicate);
    }
    publisher.close().await.expect("close drains every verdict");
    assert_eq!(bus.producer_restarts(), 1);

    // Re-publish what failed, as the outbox relay does.
    let retried = publish(&bus, &topic, &failed).await;
    for (id, verdict) in &retried {
        assert!(verdict.is_ok(), "re-publish of {id} on the new producer: {verdict:?}");
    }

    // Every event is stored: read the topic back.
    let expected: HashSet<EventId> =
        warm_up.iter().chain(&before).chain(&after).map(Envelope::event_id).collect();
    let mut stream =
        bus.subscribe(&topic, &format!("reader-{}", uuid::Uuid::now_v7().simple())).await.unwrap();
    let mut seen = HashSet::new();
    while !expected.iter().all(|id| seen.contains(id)) {
        let delivery = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} events readable", seen.len(), expected.len()))
            .expect("stream open");
        seen.insert(delivery.envelope().event_id());
        delivery.ack().await.unwrap();
    }
}

/// A record that is not a Courier event is committed only once its dead-letter copy is stored:
/// while the dead-letter topic is missing, the subscriber retries and hands out nothing after the
/// record (so commits nothing past it); once the topic exists, the copy lands there and the next
/// event follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_record_waits_for_its_dead_letter_copy_to_be_stored() {
    let bus = KafkaBus::connect(
        KafkaConfig::mock(1)
            .producer_set("allow.auto.create.topics", "false")
            .producer_set("topic.metadata.propagation.max.ms", "500"),
    )
    .expect("mock cluster");
    let topic = Topic::new(format!("fault-undecodable-{}", uuid::Uuid::now_v7().simple())).unwrap();
    bus.provision(&TopicConfig::new(topic.clone())).await.expect("provision");
    let bootstrap = bus.bootstrap_servers().to_owned();
    let foreign: BaseProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    foreign.send(BaseRecord::to(topic.as_str()).key("order-0").payload("not an event")).unwrap();
    foreign.flush(Duration::from_secs(30)).expect("the foreign record is stored");
    let good = events(1, 1, 16).remove(0);
    publish(&bus, &topic, std::slice::from_ref(&good)).await[&good.event_id()].as_ref().expect("stored");

    let mut stream = bus.subscribe(&topic, "reader").await.expect("subscribe");
    let early = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
    assert!(early.is_err(), "an event was handed out past a record that is not dead-lettered yet");
    let dlq = bus.dead_letter_topic(&topic).unwrap();
    bus.provision(&TopicConfig::new(dlq.clone())).await.expect("provision the dead-letter topic");
    let next =
        tokio::time::timeout(Duration::from_secs(60), stream.next()).await.expect("handed out").unwrap();
    assert_eq!(next.envelope().event_id(), good.event_id());

    let copy = tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "dead-letter-reader")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        reader.subscribe(&[dlq.as_str()]).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            assert!(std::time::Instant::now() < deadline, "no dead-letter copy within 60 s");
            if let Some(Ok(message)) = reader.poll(Duration::from_millis(500)) {
                let headers = message.headers().expect("headers").detach();
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|h| h.key == name)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                };
                let payload = message.payload().map(<[u8]>::to_vec);
                return (
                    payload,
                    header("courier-dead-letter-reason"),
                    header("courier-dead-letter-position"),
                );
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(copy.0.as_deref(), Some(&b"not an event"[..]));
    assert!(copy.1.as_deref().is_some_and(|r| r.starts_with("undecodable message")), "{:?}", copy.1);
    assert_eq!(copy.2, Some(format!("topic {topic} partition 0 offset 0")));
}
