//! Consumer-group rebalance on librdkafka's mock cluster: a revoked partition's unfinished work
//! stays uncommitted, a late acknowledgement from the old owner commits nothing, and the group
//! resumes from the last contiguous acknowledged offset.

use std::time::Duration;

use courier_conformance::events;
use courier_core::dispatch::Delivery;
use courier_core::{Bus, PublisherConfig, Topic, TopicConfig};
use courier_kafka::{KafkaBus, KafkaDelivery};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_work_stays_uncommitted_and_late_acks_commit_nothing() {
    let bus = KafkaBus::mock(3).expect("mock cluster");
    let topic = Topic::new(format!("rebalance-{}", uuid::Uuid::now_v7().simple())).unwrap();
    let config = TopicConfig::new(topic.clone()).partitions(2);
    bus.provision(&config).await.unwrap();
    let publisher = bus.publisher(PublisherConfig::default());
    let total = 60;
    for e in events(total, 30, 16) {
        publisher.publish(&topic, e).await.unwrap().await.unwrap();
    }
    publisher.close().await.unwrap();
    let group = format!("g-{}", uuid::Uuid::now_v7().simple());

    // Member A owns both partitions; it holds the first message of partition 0 unfinished and
    // finishes everything else.
    let mut a = Member::join(&bus, &topic, &group).await;
    let mut held = None;
    for _ in 0..total {
        let d = a.next(Duration::from_secs(20)).await.expect("A receives every event");
        if d.partition() == 0 && held.is_none() {
            held = Some(d);
        } else {
            d.ack().await.unwrap();
        }
    }
    let held = held.expect("partition 0 has events");
    let held_offset = held.offset();

    // Member B joins: the rebalance revokes A's partitions. Whoever owns partition 0 next must
    // receive the held message again, since nothing past it was committed.
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
