//! Consumer-group rebalance on librdkafka's mock cluster: a revoke waits for the handlers of
//! the revoked partitions, work unfinished past that wait stays uncommitted, a late
//! acknowledgement from the old owner commits nothing, the group resumes from the last
//! contiguous acknowledged offset, and a member whose application stops taking messages stays
//! in its group.

use std::time::Duration;

use courier_conformance::events;
use courier_core::dispatch::Delivery;
use courier_core::{Bus, Envelope, PublisherConfig, Topic, TopicConfig};
use courier_kafka::{KafkaBus, KafkaConfig, KafkaDelivery};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A group member whose stream is polled in the background (polling drives rebalances), handing
/// deliveries to the test.
struct Member {
    deliveries: mpsc::UnboundedReceiver<KafkaDelivery>,
    task: JoinHandle<()>,
}

impl Member {
    async fn join(bus: &KafkaBus, topic: &Topic, group: &str) -> Self {
        let mut stream = bus.subscribe(topic, group).await.expect("subscribe");
        let (tx, deliveries) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(d) = stream.next().await {
                if tx.send(d).is_err() {
                    return;
                }
            }
        });
        Self { deliveries, task }
    }

    async fn next(&mut self, within: Duration) -> Option<KafkaDelivery> {
        tokio::time::timeout(within, self.deliveries.recv()).await.ok().flatten()
    }

    /// Leaves the group: dropping the stream commits what is committable and closes the consumer.
    async fn leave(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A mock cluster bus whose revokes wait at most `revoke_timeout` for handlers, with a fresh
/// topic of `partitions` holding `events`, and a fresh group name.
async fn setup(
    revoke_timeout: Duration,
    partitions: u32,
    events: Vec<Envelope>,
    consumer: &[(&str, &str)],
) -> (KafkaBus, Topic, String) {
    let config = consumer
        .iter()
        .fold(KafkaConfig::mock(3).revoke_timeout(revoke_timeout), |c, (k, v)| c.consumer_set(*k, *v));
    let bus = KafkaBus::connect(config).expect("mock cluster");
    let topic = Topic::new(format!("rebalance-{}", uuid::Uuid::now_v7().simple())).unwrap();
    bus.provision(&TopicConfig::new(topic.clone()).partitions(partitions)).await.unwrap();
    publish(&bus, &topic, events).await;
    (bus, topic, format!("g-{}", uuid::Uuid::now_v7().simple()))
}

async fn publish(bus: &KafkaBus, topic: &Topic, events: Vec<Envelope>) {
    let publisher = bus.publisher(PublisherConfig::default());
    let mut verdicts = Vec::new();
    for e in events {
        verdicts.push(publisher.publish(topic, e).await.unwrap());
    }
    for verdict in verdicts {
        verdict.await.unwrap();
    }
    publisher.close().await.unwrap();
}

/// Member A joins and takes every one of `total` events, acknowledging all but the first of
/// partition 0, which it returns unfinished.
async fn join_holding_one(
    bus: &KafkaBus,
    topic: &Topic,
    group: &str,
    total: usize,
) -> (Member, KafkaDelivery) {
    let mut a = Member::join(bus, topic, group).await;
    let mut held = None;
    for _ in 0..total {
        let d = a.next(Duration::from_secs(20)).await.expect("A receives every event");
        if d.partition() == 0 && held.is_none() {
            held = Some(d);
        } else {
            d.ack().await.unwrap();
        }
    }
    (a, held.expect("partition 0 has events"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_waits_for_the_handler_still_working_on_a_revoked_partition() {
    let total = 60;
    // Frequent heartbeats: members learn of the rebalance within half a second.
    let settings = [("heartbeat.interval.ms", "500")];
    let (bus, topic, group) = setup(Duration::from_secs(120), 2, events(total, 30, 16), &settings).await;
    let (mut a, held) = join_holding_one(&bus, &topic, &group, total).await;
    let held_offset = held.offset();

    // B joins, which revokes A's partitions. While A's handler still works on `held`, nobody
    // may receive partition 0's messages from `held` on (without the wait, the rebalance is
    // over within a second or two and the new owner starts at `held`).
    let mut b = Member::join(&bus, &topic, &group).await;
    let handling = tokio::time::sleep(Duration::from_secs(6));
    tokio::pin!(handling);
    loop {
        tokio::select! {
            () = &mut handling => break,
            Some(d) = a.deliveries.recv() => assert!(d.partition() != 0, "A got partition 0 at {} again", d.offset()),
            Some(d) = b.deliveries.recv() => assert!(
                d.partition() != 0 || d.offset() > held_offset,
                "B received offset {} of partition 0 while A's handler still worked on offset {held_offset}",
                d.offset()
            ),
        }
    }

    // The handler finishes, and the rebalance goes on: partition 0 is handled further. (A real
    // broker accepts the commit the revoke makes now; the mock cluster refuses commits while
    // its group is joining, so there the next owner may receive `held` again, one at a time.)
    let next = Envelope::builder(held.envelope().aggregate_type(), held.envelope().aggregate_id(), "After")
        .build()
        .unwrap();
    let next_id = next.event_id();
    held.ack().await.unwrap();
    publish(&bus, &topic, vec![next]).await;
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let d = tokio::select! {
                Some(d) = a.deliveries.recv() => d,
                Some(d) = b.deliveries.recv() => d,
            };
            if d.envelope().event_id() == next_id {
                return;
            }
            d.ack().await.unwrap();
        }
    })
    .await
    .expect("partition 0 goes on after the rebalance");
    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_application_stops_taking_messages_stays_in_its_group() {
    // librdkafka throws a member out that does not poll within max.poll.interval.ms; its
    // partitions then go back to the last commit and are handled again.
    // Timeouts long enough that heartbeats keep the session alive on a loaded machine.
    let interval = Duration::from_secs(6);
    // More than the subscription holds ahead of the application (about 16,600), so its
    // partition is paused.
    let total = 20_000;
    let settings =
        [("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "1000"), ("max.poll.interval.ms", "6000")];
    let (bus, topic, group) = setup(Duration::from_secs(30), 1, events(total, 100, 16), &settings).await;
    let mut stream = bus.subscribe(&topic, &group).await.unwrap();
    let first = next(&mut stream).await;
    assert_eq!(first.offset(), 0);

    // The application is busy (as a dispatcher with a full buffer): nobody polls the stream for
    // two poll intervals, with more messages waiting than the subscription holds.
    tokio::time::sleep(2 * interval).await;
    first.ack().await.unwrap();
    for offset in 1..total as i64 {
        let d = next(&mut stream).await;
        assert_eq!(d.offset(), offset, "in order, once each: the member kept its partition");
        d.ack().await.unwrap();
    }
    let sentinel = events(1, 1, 16);
    let sentinel_id = sentinel[0].event_id();
    publish(&bus, &topic, sentinel).await;
    let d = next(&mut stream).await;
    assert_eq!((d.offset(), d.envelope().event_id()), (total as i64, sentinel_id), "nothing delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_work_unfinished_past_the_revoke_timeout_stays_uncommitted_and_late_acks_commit_nothing() {
    let total = 60;
    let (bus, topic, group) = setup(Duration::from_secs(1), 2, events(total, 30, 16), &[]).await;
    let (mut a, held) = join_holding_one(&bus, &topic, &group, total).await;
    let held_offset = held.offset();

    // Member B joins: the rebalance revokes A's partitions, and gives up waiting for `held`.
    // Whoever owns partition 0 next must receive the held message again, since nothing past it
    // was committed.
    let mut b = Member::join(&bus, &topic, &group).await;
    let redelivered = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            tokio::select! {
                Some(d) = a.deliveries.recv() => if d.partition() == 0 { return d },
                Some(d) = b.deliveries.recv() => if d.partition() == 0 { return d },
            }
        }
    })
    .await
    .expect("partition 0's unfinished work is delivered again after the rebalance");
    assert_eq!(redelivered.offset(), held_offset, "resumed at the held message, not past it");
    assert_eq!(redelivered.envelope().event_id(), held.envelope().event_id());

    // The old owner finishes the held message only now: that must not commit partition 0.
    held.ack().await.unwrap();
    drop(redelivered);
    a.leave().await;
    b.leave().await;

    let mut c = Member::join(&bus, &topic, &group).await;
    let first_of_partition_0 = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let d = c.deliveries.recv().await.expect("stream open");
            if d.partition() == 0 {
                return d;
            }
        }
    })
    .await
    .expect("partition 0 delivered after restart");
    assert_eq!(first_of_partition_0.offset(), held_offset, "a late ack from a revoked owner committed");
    c.leave().await;
}

async fn next(stream: &mut futures::stream::BoxStream<'static, KafkaDelivery>) -> KafkaDelivery {
    let next = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
    next.expect("a delivery in time").expect("the stream goes on")
}
