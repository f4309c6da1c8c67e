//! Dispatch engine behaviour beyond the conformance suite, on the memory bus.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_core::dispatch::{dispatch, DispatchConfig};
use courier_core::{Bus, DeadLetterTopic, Envelope, HandlerError, MemoryBus, PublisherConfig, Topic};
use tokio::sync::{oneshot, Semaphore};

async fn publish(bus: &MemoryBus, topic: &Topic, aggregate: &str, n: usize) {
    let publisher = bus.publisher(PublisherConfig::default());
    for i in 0..n {
        let e = Envelope::builder("t", aggregate, "E").payload(i.to_string()).build().unwrap();
        publisher.publish(topic, e).await.unwrap().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_aggregate_does_not_block_the_others() {
    let bus = MemoryBus::default();
    let topic = Topic::new("stuck").unwrap();
    publish(&bus, &topic, "slow", 3).await;
    for a in 0..50 {
        publish(&bus, &topic, &format!("fast-{a}"), 5).await;
    }
    let gate = Arc::new(Semaphore::new(0));
    let fast_done = Arc::new(AtomicUsize::new(0));
    let (all_fast_tx, all_fast_rx) = oneshot::channel();
    let all_fast_tx = Arc::new(Mutex::new(Some(all_fast_tx)));
    let handler = {
        let (gate, fast_done) = (gate.clone(), fast_done.clone());
        move |e: Envelope| {
            let (gate, fast_done, all_fast_tx) = (gate.clone(), fast_done.clone(), all_fast_tx.clone());
            async move {
                if e.aggregate_id() == "slow" {
                    gate.acquire().await.unwrap().forget();
                } else if fast_done.fetch_add(1, Ordering::SeqCst) + 1 == 250 {
                    all_fast_tx.lock().unwrap().take().map(|tx| tx.send(()));
                }
                Ok::<(), HandlerError>(())
            }
        }
    };
    let config = DispatchConfig::default().max_concurrency(4).max_buffered(64);
    let dlq =
        DeadLetterTopic::new(bus.publisher(PublisherConfig::default()), Topic::new("stuck-dlq").unwrap());
    let source = bus.subscribe(&topic, "g").await.unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let run = tokio::spawn(dispatch(source, handler, dlq, config, async {
        let _ = stop_rx.await;
    }));
    // Every fast event is handled while the slow aggregate's first event is still stuck, even
    // though the buffer (64) is far smaller than the backlog (253).
    tokio::time::timeout(Duration::from_secs(10), all_fast_rx)
        .await
        .expect("fast aggregates flowed")
        .unwrap();
    gate.add_permits(3);
    let _ = stop_tx.send(());
    let stats = run.await.unwrap();
    assert!(stats.handled >= 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_dead_lettered_without_retries() {
    let bus = MemoryBus::default();
    let topic = Topic::new("permanent").unwrap();
    let dlq_topic = Topic::new("permanent-dlq").unwrap();
    publish(&bus, &topic, "a", 1).await;
    let handler = |_: Envelope| async { Err(HandlerError::permanent("malformed payload")) };
    let dlq = DeadLetterTopic::new(bus.publisher(PublisherConfig::default()), dlq_topic.clone());
    let source = bus.subscribe(&topic, "g").await.unwrap();
    let watcher = bus.clone();
    let watched = dlq_topic.clone();
    let stats = dispatch(source, handler, dlq, DispatchConfig::default(), async move {
        while watcher.events(&watched).is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!((stats.retries, stats.dead_lettered), (0, 1));
    let dead = bus.events(&dlq_topic);
    assert_eq!(dead[0].headers()["courier-dead-letter-reason"], "malformed payload");
}
