//! Subscriber behaviour beyond the conformance suite: messages that cannot be handed out are
//! dead-lettered, never skipped.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{event, shared_bus};
use courier_conformance::fresh_topic;
use courier_core::dispatch::{dispatch, Delivery, DispatchConfig};
use courier_core::wire::{self, HeaderStyle, WireMode};
use courier_core::{
    Backoff, Bus, Envelope, HandlerError, PublisherConfig, Topic, DEAD_LETTER_ATTEMPTS_HEADER,
    DEAD_LETTER_ERROR_HEADER, DEAD_LETTER_POSITION_HEADER, DEAD_LETTER_REASON_HEADER,
};
use futures::StreamExt;

#[tokio::test]
async fn undecodable_message_goes_to_the_dead_letter_topic() {
    let bus = shared_bus(|c| c).await;
    let topic = fresh_topic(&bus, "garbage").await;
    let dlq = bus.config().dead_letter_topic(&topic).unwrap();
    // A foreign publisher writes something that is neither CloudEvents nor a reference envelope.
    bus.jetstream().publish(topic.to_string(), "not an event".into()).await.unwrap().await.unwrap();
    let good = event("g-1", "fine");
    let publisher = bus.publisher(PublisherConfig::default());
    publisher.publish(&topic, good.clone()).await.unwrap().await.unwrap();
    publisher.close().await.unwrap();

    let mut stream = bus.subscribe(&topic, "reader").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap();
    assert_eq!(first.envelope().event_id(), good.event_id(), "the garbage is not handed out");
    first.ack().await.unwrap();

    // Its stream was provisioned on first use; a raw reader sees the original body and the reason.
    let mut dead =
        bus.jetstream().get_stream(courier_nats::stream_name(&dlq)).await.expect("dead-letter stream");
    let message = dead.get_raw_message(1).await.expect("dead-lettered message");
    assert_eq!(message.payload.as_ref(), b"not an event");
    let reason = message.headers.get(DEAD_LETTER_REASON_HEADER).expect("reason header").to_string();
    assert!(reason.contains("undecodable"), "{reason}");
    assert_eq!(message.headers.get(DEAD_LETTER_ATTEMPTS_HEADER).unwrap().as_str(), "1");
    assert_eq!(dead.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn message_redelivered_past_the_limit_is_dead_lettered() {
    let bus = shared_bus(|c| c.max_deliveries(Some(1))).await;
    let topic = fresh_topic(&bus, "crashloop").await;
    bus.dead_letter(&topic).await.unwrap();
    let poison = event("p-1", "crashes the handler");
    let publisher = bus.publisher(PublisherConfig::default());
    publisher.publish(&topic, poison.clone()).await.unwrap().await.unwrap();
    publisher.close().await.unwrap();

    {
        // Handed out, never acknowledged: as if the process died mid-handler.
        let mut stream = bus.subscribe(&topic, "worker").await.unwrap();
        let d = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap();
        assert_eq!((d.envelope().event_id(), d.delivered()), (poison.event_id(), 1));
    }
    let dlq_topic = bus.config().dead_letter_topic(&topic).unwrap();
    let mut dead = bus.subscribe(&dlq_topic, "dlq-reader").await.unwrap();
    let _worker = bus.subscribe(&topic, "worker").await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(20), dead.next()).await.expect("dead-lettered").unwrap();
    assert_eq!(d.envelope().event_id(), poison.event_id());
    assert!(d.envelope().headers()[DEAD_LETTER_REASON_HEADER].contains("delivered 2 times"));
    assert_eq!(d.envelope().headers()[DEAD_LETTER_ATTEMPTS_HEADER], "2");
}

/// Issue 15: the head event of an aggregate fails for about three times `ack_wait`, each retry
/// wait longer than `ack_wait`, while the aggregate's later events wait in its queue. Every
/// delivery held by the subscriber, the head's included, is kept alive: JetStream redelivers
/// none of them, and each event is handled once, in order.
#[tokio::test]
async fn deliveries_held_behind_a_slow_head_are_not_redelivered() {
    let ack_wait = Duration::from_secs(3);
    let bus = shared_bus(|c| c.ack_wait(ack_wait)).await;
    let topic = fresh_topic(&bus, "slowhead").await;
    let dead_letter = bus.dead_letter(&topic).await.unwrap();
    let events: Vec<Envelope> = (0..3).map(|i| event("a-1", format!("event {i}"))).collect();
    let ids: Vec<_> = events.iter().map(Envelope::event_id).collect();
    let publisher = bus.publisher(PublisherConfig::default());
    for e in &events {
        publisher.publish(&topic, e.clone()).await.unwrap().await.unwrap();
    }
    publisher.close().await.unwrap();

    let failures_left = Arc::new(AtomicU32::new(2));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (failures_left, handled, head) = (failures_left.clone(), handled.clone(), ids[0]);
        move |e: Envelope| {
            let (failures_left, handled) = (failures_left.clone(), handled.clone());
            async move {
                let fail = |left: u32| left.checked_sub(1);
                if e.event_id() == head
                    && failures_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, fail).is_ok()
                {
                    return Err(HandlerError::retryable("the head is slow"));
                }
                handled.lock().unwrap().push(e.event_id());
                Ok(())
            }
        }
    };
    let handed_out = Arc::new(Mutex::new(Vec::new()));
    let source = {
        let handed_out = handed_out.clone();
        bus.subscribe(&topic, "worker")
            .await
            .unwrap()
            .inspect(move |d| handed_out.lock().unwrap().push((d.envelope().event_id(), d.delivered())))
    };
    // Each retry wait outlasts ack_wait; two of them hold the queue for three times ack_wait.
    let wait = ack_wait * 3 / 2;
    let config = DispatchConfig::default().backoff(Backoff::default().initial(wait).max(wait).jitter(0.0));
    let consumer: async_nats::jetstream::consumer::PullConsumer = bus
        .jetstream()
        .get_stream(courier_nats::stream_name(&topic))
        .await
        .unwrap()
        .get_consumer("worker")
        .await
        .unwrap();
    let watched = handled.clone();
    let stats = dispatch(source, handler, dead_letter, config, async move {
        let mut consumer = consumer;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let acked = consumer.info().await.unwrap().ack_floor.stream_sequence >= 3;
            if acked && watched.lock().unwrap().len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Time for a redelivery, had one been due, to reach the handler.
        tokio::time::sleep(ack_wait).await;
    })
    .await;

    assert_eq!(stats.retries, 2);
    assert_eq!(*handled.lock().unwrap(), ids, "each event handled once, in order");
    let expected: Vec<_> = ids.iter().map(|&id| (id, 1)).collect();
    assert_eq!(*handed_out.lock().unwrap(), expected, "each event delivered once");
}

/// A user's stream holding both the topic and its dead-letter subject (`orders.>` holds
/// `orders.x` and `orders.x.dlq`) stores both dead-letter copies: the one of a failed event and
/// the one of a foreign message with its own `Nats-Msg-Id`. Each keeps its original's id in a
/// derived form, so JetStream's de-duplication, which spans the whole stream, does not drop it.
#[tokio::test]
async fn dead_letters_are_stored_when_one_stream_holds_the_topic_and_its_dead_letter_subject() {
    let bus = shared_bus(|c| c).await;
    let prefix = format!("shared{}", uuid::Uuid::now_v7().simple());
    let stream_name = format!("ORDERS_{prefix}");
    let mut stream = bus
        .jetstream()
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    let topic = Topic::new(format!("{prefix}.orders")).unwrap();
    let dead_letter = bus.dead_letter(&topic).await.unwrap();
    let dlq = bus.config().dead_letter_topic(&topic).unwrap();

    let poison = event("p-1", "the handler refuses it");
    let publisher = bus.publisher(PublisherConfig::default());
    publisher.publish(&topic, poison.clone()).await.unwrap().await.unwrap();
    publisher.close().await.unwrap();
    let mut foreign = async_nats::HeaderMap::new();
    foreign.insert(async_nats::header::NATS_MESSAGE_ID, "foreign-1");
    bus.jetstream()
        .publish_with_headers(topic.to_string(), foreign, "not an event".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let source = bus.subscribe(&topic, "worker").await.unwrap();
    let handler = |_: Envelope| async { Err(HandlerError::permanent("refused")) };
    let watched = stream.clone();
    let stats = dispatch(source, handler, dead_letter, DispatchConfig::default(), async move {
        let mut watched = watched;
        let deadline = Instant::now() + Duration::from_secs(15);
        while watched.info().await.unwrap().state.messages < 4 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(stream.info().await.unwrap().state.messages, 4, "both dead-letter copies are stored");
    let mut copies = Vec::new();
    for sequence in [3, 4] {
        let message = stream.get_raw_message(sequence).await.unwrap();
        assert_eq!(message.subject.as_str(), dlq.as_str());
        copies.push(message);
    }
    copies.sort_by_key(|m| m.payload.to_vec());
    assert_eq!(copies[0].payload.as_ref(), b"not an event");
    assert_eq!(
        copies[0].headers.get(async_nats::header::NATS_MESSAGE_ID).unwrap().as_str(),
        format!("dlq:{dlq}:foreign-1")
    );
    assert_eq!(copies[1].headers.get("ce-id").unwrap().as_str(), poison.event_id().to_string());
    assert_eq!(copies[1].headers.get(DEAD_LETTER_REASON_HEADER).unwrap().as_str(), "refused");
    bus.jetstream().delete_stream(&stream_name).await.unwrap();
}

/// An event as large as the server takes fails in its handler: its dead-letter copy (the event
/// plus the reason headers) is too large to publish, a permanent error that is not retried.
/// A record of the event (id, stream position, no payload) is dead-lettered instead, the
/// aggregate's later events are handled, and the shared connection stays up.
#[tokio::test]
async fn an_event_too_large_to_dead_letter_leaves_a_record_and_later_events_flow() {
    let bus = shared_bus(|c| c).await;
    let topic = fresh_topic(&bus, "bigdead").await;
    let dead_letter = bus.dead_letter(&topic).await.unwrap();
    let dlq = bus.config().dead_letter_topic(&topic).unwrap();
    // Sized so that the event's NATS message (header block and body) is the server's maximum.
    let probe = event("big-1", "");
    let mut headers: Vec<(String, String)> = Vec::new();
    wire::encode(&probe, WireMode::CloudEvents, HeaderStyle::Nats, &mut headers);
    headers.push(("Nats-Msg-Id".into(), probe.event_id().to_string()));
    let framing =
        "NATS/1.0\r\n\r\n".len() + headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>();
    let max = bus.client().server_info().max_payload;
    let big = probe.into_builder().payload(vec![b'x'; max - framing]).build().unwrap();
    let after = event("big-1", "after");
    let publisher = bus.publisher(PublisherConfig::default());
    publisher.publish(&topic, big.clone()).await.unwrap().await.expect("the event itself fits");
    publisher.publish(&topic, after.clone()).await.unwrap().await.unwrap();

    let handled = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (handled, big_id) = (handled.clone(), big.event_id());
        move |e: Envelope| {
            let handled = handled.clone();
            async move {
                if e.event_id() == big_id {
                    return Err(HandlerError::permanent("too big to handle"));
                }
                handled.lock().unwrap().push(e.event_id());
                Ok(())
            }
        }
    };
    let source = bus.subscribe(&topic, "worker").await.unwrap();
    let watched = handled.clone();
    let run = dispatch(source, handler, dead_letter, DispatchConfig::default(), async move {
        let deadline = Instant::now() + Duration::from_secs(15);
        while watched.lock().unwrap().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let stats = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap_or_else(|_| panic!("dispatch never stopped (handled {:?})", handled.lock().unwrap()));
    assert_eq!(*handled.lock().unwrap(), [after.event_id()], "the aggregate's later event is handled");
    assert_eq!(stats.dead_lettered, 1);

    let dead = bus.jetstream().get_stream(courier_nats::stream_name(&dlq)).await.unwrap();
    let record = dead.get_raw_message(1).await.expect("the dead-letter record");
    assert!(record.payload.is_empty());
    assert_eq!(record.headers.get("ce-id").unwrap().as_str(), big.event_id().to_string());
    let stream = courier_nats::stream_name(&topic);
    assert_eq!(
        record.headers.get(DEAD_LETTER_POSITION_HEADER).unwrap().as_str(),
        format!("stream {stream} sequence 1")
    );
    assert!(record.headers.get(DEAD_LETTER_ERROR_HEADER).unwrap().as_str().contains("max_payload"));
    assert_eq!(record.headers.get(DEAD_LETTER_REASON_HEADER).unwrap().as_str(), "too big to handle");
    bus.health().await.expect("the connection survived");
    publisher.publish(&topic, event("big-2", "later")).await.unwrap().await.expect("publishing still works");
}

/// Publishes a message over a NATS protocol connection of its own, as a client in another
/// language may: `header_block` is the raw `NATS/1.0` block, whose bytes need not be UTF-8
/// (async-nats cannot send such bytes).
fn raw_hpub(subject: &str, header_block: &[u8], body: &[u8]) {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect("127.0.0.1:4222").expect("nats-server on 127.0.0.1:4222");
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("INFO"), "{line}");
    let (header_len, total_len) = (header_block.len(), header_block.len() + body.len());
    let mut frame = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true}}\r\nHPUB {subject} {header_len} {total_len}\r\n"
    )
    .into_bytes();
    frame.extend_from_slice(header_block);
    frame.extend_from_slice(body);
    frame.extend_from_slice(b"\r\nPING\r\n");
    (&stream).write_all(&frame).unwrap();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the server closed the connection");
        assert!(!line.starts_with("-ERR"), "the server refused the message: {line}");
        if line.starts_with("PONG") {
            return;
        }
    }
}

/// A message whose header bytes are not UTF-8 makes async-nats drop the connection it arrives on
/// (its parser fails before Courier sees the message). Subscriptions run on a connection of their
/// own, so publishing on the bus goes on undisturbed: the publishing connection is never dropped.
/// After the reconnect the subscriber finds the message, dead-letters it with its header block
/// escaped, and acknowledges it; the event after it is handed out.
#[tokio::test]
async fn a_message_with_header_bytes_that_are_not_utf8_is_dead_lettered_and_publishing_goes_on() {
    // A short ack_wait: the event received in the same read as the bad message is lost with the
    // connection and comes back after it.
    let bus = shared_bus(|c| c.ack_wait(Duration::from_secs(3))).await;
    let topic = fresh_topic(&bus, "badbytes").await;
    let dlq = bus.config().dead_letter_topic(&topic).unwrap();
    let mut headers = Vec::new();
    let body = wire::encode(&event("p-1", "{}"), WireMode::CloudEvents, HeaderStyle::Nats, &mut headers);
    let mut block = b"NATS/1.0\r\n".to_vec();
    for (name, value) in headers {
        block.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    block.extend_from_slice(b"x-note: caf\xe9\r\n\r\n"); // Latin-1, not UTF-8
    let subject = topic.to_string();
    tokio::task::spawn_blocking(move || raw_hpub(&subject, &block, &body)).await.unwrap();
    let next = event("g-1", "next");
    let publisher = bus.publisher(PublisherConfig::default());
    publisher.publish(&topic, next.clone()).await.unwrap().await.unwrap();
    wait_until("both messages are stored", || async { common::stored_messages(&bus, &topic).await == 2 })
        .await;

    let connects = || bus.client().statistics().connects.load(std::sync::atomic::Ordering::Relaxed);
    let before = connects();
    let mut stream = bus.subscribe(&topic, "reader").await.unwrap();
    let stream_name = courier_nats::stream_name(&topic);
    wait_until("JetStream delivered the message to the subscriber", || async {
        let js_stream = bus.jetstream().get_stream(&stream_name).await.unwrap();
        let consumer: async_nats::jetstream::consumer::PullConsumer =
            js_stream.get_consumer("reader").await.unwrap();
        consumer.get_info().await.unwrap().delivered.stream_sequence >= 1
    })
    .await;
    let after = event("g-2", "after");
    let receipt = publisher.publish(&topic, after.clone()).await.unwrap().await;
    receipt.expect("a publish right after gets its ACK");
    assert_eq!(connects(), before, "the publishing connection was dropped and reconnected");

    // Both events are handed out (`next` after ack_wait if it was lost with the connection);
    // the bad message is not.
    let mut handed_out = Vec::new();
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(60), stream.next()).await.unwrap().unwrap();
        handed_out.push(delivery.envelope().event_id());
        delivery.ack().await.unwrap();
    }
    handed_out.sort();
    assert_eq!(handed_out, [next.event_id(), after.event_id()]);
    wait_until("the bad message is dead-lettered", || async {
        bus.jetstream().get_stream(courier_nats::stream_name(&dlq)).await.is_ok()
            && common::stored_messages(&bus, &dlq).await == 1
    })
    .await;
    let dead = bus.jetstream().get_stream(courier_nats::stream_name(&dlq)).await.unwrap();
    let copy = dead.get_raw_message(1).await.expect("the dead-letter copy is readable");
    assert_eq!(copy.payload.as_ref(), b"{}");
    let header = |name: &str| copy.headers.get(name).map(|v| v.to_string()).unwrap_or_default();
    assert!(
        header(DEAD_LETTER_REASON_HEADER).starts_with("undecodable message: its header block is not UTF-8")
    );
    assert!(header(courier_nats::DEAD_LETTER_HEADERS_HEADER).ends_with(r"x-note: caf\xe9\r\n\r\n"));
    assert_eq!(header(DEAD_LETTER_POSITION_HEADER), format!("stream {stream_name} sequence 1"));
    wait_until("the bad message is acknowledged", || async {
        let js_stream = bus.jetstream().get_stream(&stream_name).await.unwrap();
        let consumer: async_nats::jetstream::consumer::PullConsumer =
            js_stream.get_consumer("reader").await.unwrap();
        consumer.get_info().await.unwrap().ack_floor.stream_sequence >= 3
    })
    .await;
    publisher.close().await.unwrap();
}

/// Polls `condition` until it holds, failing after a generous minute.
async fn wait_until<F, Fut>(what: &str, condition: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 15: while the application takes nothing for three times `ack_wait` (a dispatch engine
/// whose buffer is full), every message the subscription received is kept alive, not only the
/// few handed on ahead of the application: nothing is redelivered, and each event arrives once,
/// in order, when the application goes on.
#[tokio::test]
async fn messages_waiting_for_a_busy_application_are_not_redelivered() {
    let ack_wait = Duration::from_secs(2);
    let bus = shared_bus(|c| c.ack_wait(ack_wait)).await;
    let topic = fresh_topic(&bus, "busyapp").await;
    let total = 200;
    let publisher = bus.publisher(PublisherConfig::default());
    for i in 0..total {
        publisher
            .publish(&topic, event(&format!("a-{}", i % 10), format!("event {i}")))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    publisher.close().await.unwrap();

    let mut stream = bus.subscribe(&topic, "busy").await.unwrap();
    let mut next =
        async || tokio::time::timeout(Duration::from_secs(20), stream.next()).await.unwrap().unwrap();
    let first = next().await;
    tokio::time::sleep(3 * ack_wait).await;
    first.ack().await.unwrap();
    for sequence in 2..=total as u64 {
        let d = next().await;
        assert_eq!((d.stream_sequence(), d.delivered()), (sequence, 1), "each once, in order");
        d.ack().await.unwrap();
    }
    let sentinel = event("a-0", "after");
    let publisher = bus.publisher(PublisherConfig::default());
    publisher.publish(&topic, sentinel.clone()).await.unwrap().await.unwrap();
    publisher.close().await.unwrap();
    let d = next().await;
    assert_eq!(
        d.envelope().event_id(),
        sentinel.event_id(),
        "a redelivery came first: {} (delivered {})",
        d.stream_sequence(),
        d.delivered()
    );
}
