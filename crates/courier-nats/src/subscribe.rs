//! Subscriptions: a durable pull consumer per (topic, group), read by one puller task per
//! subscription that decodes messages into [`NatsDelivery`]s.
//!
//! Messages that cannot become a delivery are never skipped silently: an undecodable message, or
//! one delivered more than [`NatsConfig::max_deliveries`] times, is published to the topic's
//! dead-letter subject with its original headers and body plus the reason, and acknowledged only
//! once that publish was acknowledged. If the dead-letter publish fails, the message is NAKed with
//! a delay and tried again on redelivery.
//!
//! The `js` context subscriptions get is on the bus's consumers' connection, not the publishing
//! one: a message whose header bytes async-nats cannot parse drops the connection it arrives on
//! (see [`NatsBus`](crate::NatsBus)). After each reconnect a subscription finds such messages
//! and dead-letters them, read from the stream as JSON (`STREAM.MSG.GET`), which async-nats does
//! not parse as headers.

use std::sync::Arc;
use std::time::Duration;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::stream::ConsumerErrorKind;
use async_nats::jetstream::{self, AckKind, Context};
use async_nats::HeaderMap;
use bytes::Bytes;
use courier_core::dispatch::Delivery;
use courier_core::wire;
use courier_core::{
    bounded_header_value, Envelope, Error, ErrorKind, Position, Topic, TopicConfig,
    DEAD_LETTER_ATTEMPTS_HEADER, DEAD_LETTER_ERROR_HEADER, DEAD_LETTER_POSITION_HEADER,
    DEAD_LETTER_REASON_HEADER,
};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::config::NatsConfig;
use crate::in_progress::{self, Held, HeldMessage};
use crate::poison::{self, StoredMessage};
use crate::publish::dead_letter_msg_id;
use crate::streams::{self, admin_error};

/// How long a message whose dead-lettering failed waits before JetStream redelivers it.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(5);
/// Lifetime of each pull request. JetStream (2.9) keeps delivering to a pull request until it
/// expires, even after its subscriber left, so this bounds how long a closed subscription can
/// still absorb messages. Idle consumers renew their request this often.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Idle heartbeat of a pull request, so a lost connection is noticed.
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// How often a subscription checks whether its connection was re-established, which may mean
/// that a message async-nats cannot parse dropped it.
const RECONNECT_CHECK: Duration = Duration::from_millis(500);

/// A JetStream message handed to the dispatch engine. Until it is acknowledged or dropped, its
/// subscription keeps it from being redelivered after `ack_wait` with periodic in-progress acks,
/// however long it waits behind its aggregate's earlier events. Dropping it unacknowledged NAKs
/// it once its subscription stream is dropped, so the group's next subscriber gets it at once
/// instead of after `ack_wait`.
pub struct NatsDelivery {
    envelope: Envelope,
    acker: Option<Acker>,
    stream: Arc<str>,
    stream_sequence: u64,
    delivered: u64,
    unacked: mpsc::UnboundedSender<Acker>,
    _held: Option<HeldMessage>,
}

impl NatsDelivery {
    /// The message's sequence in its stream.
    pub fn stream_sequence(&self) -> u64 {
        self.stream_sequence
    }

    /// How often JetStream has delivered this message, this delivery included.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }
}

impl Delivery for NatsDelivery {
    fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Sends `+ACK` without waiting for the server's confirmation: a lost ACK means a redelivery,
    /// which at-least-once delivery allows, and waiting would cost a round trip per message.
    async fn ack(mut self) -> Result<(), Error> {
        let acker = self.acker.take().expect("a delivery is acknowledged once");
        acker.ack().await.map_err(|err| {
            Error::new(
                ErrorKind::Connection,
                format!("acknowledging stream sequence {}: {err}", self.stream_sequence),
            )
        })
    }

    fn position(&self) -> Option<Position> {
        Some(Position::Stream { stream: self.stream.to_string(), sequence: self.stream_sequence })
    }

    /// Sends `+WPI` (work in progress) at once, restarting the consumer's `ack_wait` timer; the
    /// subscription also sends it periodically for every held delivery.
    async fn keep_alive(&self) {
        if let Some(acker) = &self.acker {
            if let Err(err) = acker.ack_with(AckKind::Progress).await {
                tracing::warn!(%err, sequence = self.stream_sequence, "in-progress ack failed; the message may be redelivered");
            }
        }
    }
}

impl Drop for NatsDelivery {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            // The NAK task outlives every delivery of its subscription, so this only fails if the
            // runtime is gone, in which case ack_wait redelivers the message.
            let _ = self.unacked.send(acker);
        }
    }
}

/// Consumer names JetStream accepts (no `.`, `*`, `>`, whitespace or path separators).
fn check_group(group: &str) -> Result<(), Error> {
    let valid = !group.is_empty()
        && group.len() <= 200
        && group.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!("invalid group: {group:?} must have 1 to 200 characters from A-Z a-z 0-9 - _"),
        ))
    }
}

/// Opens (creating on first use) the durable consumer `group` on `topic`'s stream and starts its
/// puller. Durable consumers are never deleted by Courier: a later subscribe resumes.
pub(crate) async fn subscribe(
    js: &Context,
    config: &Arc<NatsConfig>,
    topic: &Topic,
    group: &str,
) -> Result<BoxStream<'static, NatsDelivery>, Error> {
    let consumer = open_group(js, config, topic, group, DeliverPolicy::All).await?;
    let messages = pull(&consumer, config.pull_batch, group, topic).await?;

    let (unacked_tx, unacked_rx) = mpsc::unbounded_channel();
    let (released_tx, released_rx) = oneshot::channel();
    tokio::spawn(nak_unacked(unacked_rx, released_rx));
    // Unbounded: the puller takes every message as it arrives and keeps it alive at once (see
    // `Puller::run`); JetStream's `max_ack_pending` bounds how many there can be.
    let (tx, rx) = mpsc::unbounded_channel();
    let puller = Puller {
        stream: consumer.cached_info().stream_name.as_str().into(),
        consumer: consumer.clone(),
        js: js.clone(),
        config: Arc::clone(config),
        topic: topic.clone(),
        group: group.to_owned(),
        unacked: unacked_tx,
        held: in_progress::keep_alive(js.client(), config.ack_wait),
    };
    tokio::spawn(puller.run(messages, tx, released_tx));
    Ok(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|d| (d, rx)) }).boxed())
}

/// Opens (creating on first use, delivering from `deliver_policy`) the durable consumer `group`
/// on `topic`'s stream.
pub(crate) async fn open_group(
    js: &Context,
    config: &NatsConfig,
    topic: &Topic,
    group: &str,
    deliver_policy: DeliverPolicy,
) -> Result<PullConsumer, Error> {
    check_group(group)?;
    let stream = streams::stream_for(js, topic).await?;
    let consumer_config = pull::Config {
        durable_name: Some(group.to_owned()),
        filter_subject: topic.to_string(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        deliver_policy,
        max_deliver: -1,
        max_ack_pending: config.max_ack_pending,
        description: Some("courier consumer group".into()),
        ..pull::Config::default()
    };
    let consumer: PullConsumer =
        stream.get_or_create_consumer(group, consumer_config).await.map_err(|err| {
            let api = match err.kind() {
                ConsumerErrorKind::JetStream(api) => Some(api),
                _ => None,
            };
            admin_error(format!("opening consumer group {group:?} on subject {topic:?}"), api.as_ref(), err)
        })?;
    let filter = &consumer.cached_info().config.filter_subject;
    if filter != topic.as_str() {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "consumer {group:?} of stream {} already exists with filter {filter:?}, not {topic:?}; use another group name",
                consumer.cached_info().stream_name
            ),
        ));
    }
    Ok(consumer)
}

/// The messages of `consumer` (named `name` in errors), pulled `batch` at a time.
pub(crate) async fn pull(
    consumer: &PullConsumer,
    batch: usize,
    name: &str,
    topic: &Topic,
) -> Result<pull::Stream, Error> {
    consumer
        .stream()
        .max_messages_per_batch(batch)
        .heartbeat(PULL_HEARTBEAT)
        .expires(PULL_EXPIRES)
        .messages()
        .await
        .map_err(|err| admin_error(format!("pulling from consumer {name:?} on {topic:?}"), None, err))
}

/// NAKs deliveries dropped without an acknowledgement, for immediate redelivery. One per
/// subscription; ends when the puller and all its deliveries are gone.
///
/// NAKs wait until the puller released its pull subscription, and ask for redelivery only after
/// [`PULL_EXPIRES`]: JetStream hands a NAKed message to the oldest waiting pull request, and if
/// that were still the closed subscription's, the message would sit unacknowledged until
/// `ack_wait`.
async fn nak_unacked(mut rx: mpsc::UnboundedReceiver<Acker>, released: oneshot::Receiver<()>) {
    let mut held = Vec::new();
    let mut released = std::pin::pin!(released);
    loop {
        tokio::select! {
            _ = &mut released => break,
            next = rx.recv() => match next {
                Some(acker) => held.push(acker),
                None => break,
            },
        }
    }
    for acker in held {
        nak(acker).await;
    }
    while let Some(acker) = rx.recv().await {
        nak(acker).await;
    }
}

async fn nak(acker: Acker) {
    let after_our_requests_expired = PULL_EXPIRES + Duration::from_millis(500);
    if let Err(err) = acker.ack_with(AckKind::Nak(Some(after_our_requests_expired))).await {
        tracing::debug!(%err, "NAK of an unacknowledged delivery failed; ack_wait will redeliver it");
    }
}

struct Puller {
    /// The name of the stream the consumer reads.
    stream: Arc<str>,
    consumer: PullConsumer,
    js: Context,
    config: Arc<NatsConfig>,
    topic: Topic,
    group: String,
    unacked: mpsc::UnboundedSender<Acker>,
    /// This subscription's deliveries that are handed out and not yet acknowledged or dropped.
    held: Arc<Held>,
}

impl Puller {
    /// Takes every message as soon as it arrives, keeps it alive (`+WPI`) from then on, and
    /// hands it to the stream, never waiting for the application: a message left in the pull
    /// buffer while the application is busy would get no in-progress signal, and JetStream would
    /// redeliver it after `ack_wait`, to be handled twice and out of order.
    async fn run(
        self,
        mut messages: pull::Stream,
        tx: mpsc::UnboundedSender<NatsDelivery>,
        released: oneshot::Sender<()>,
    ) {
        let mut reconnect_check = tokio::time::interval(RECONNECT_CHECK);
        let mut connects = self.connects();
        loop {
            let next = tokio::select! {
                _ = tx.closed() => break,
                _ = reconnect_check.tick() => {
                    if self.connects() != connects {
                        connects = self.connects();
                        self.dead_letter_unreadable().await;
                    }
                    continue;
                }
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(err)) if err.kind() == MessagesErrorKind::ConsumerDeleted => {
                    tracing::error!(topic = %self.topic, group = %self.group, "consumer was deleted; subscription ends");
                    break;
                }
                Some(Err(err)) => {
                    tracing::warn!(topic = %self.topic, group = %self.group, %err, "pull consumer error; retrying");
                    continue;
                }
                None => break,
            };
            if let Some(delivery) = self.prepare(message).await {
                // A refused delivery is dropped here, which NAKs it.
                if tx.send(delivery).is_err() {
                    break;
                }
            }
        }
        // Messages already received but never handed out go back at once.
        while let Some(Some(Ok(message))) = messages.next().now_or_never() {
            let (_, acker) = message.split();
            let _ = self.unacked.send(acker);
        }
        drop(messages);
        let _ = released.send(());
    }

    /// How often the subscriptions' connection was established.
    fn connects(&self) -> u64 {
        self.js.client().statistics().connects.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Dead-letters the messages delivered to this consumer and not yet acknowledged that
    /// async-nats cannot parse, then acknowledges them. One that fails to be dead-lettered stays:
    /// it is redelivered after `ack_wait`, drops the connection again, and is tried again after
    /// the reconnect.
    async fn dead_letter_unreadable(&self) {
        let info = match self.consumer.get_info().await {
            Ok(info) => info,
            Err(err) => {
                tracing::warn!(topic = %self.topic, group = %self.group, %err, "no consumer info to look for unreadable messages");
                return;
            }
        };
        for sequence in info.ack_floor.stream_sequence + 1..=info.delivered.stream_sequence {
            let request = serde_json::json!({ "seq": sequence });
            let response = self
                .js
                .request::<_, _, serde_json::Value>(format!("STREAM.MSG.GET.{}", self.stream), &request)
                .await;
            let stored = match response.map_err(|err| err.to_string()).and_then(|r| poison::parse_stored(&r))
            {
                Ok(Some(stored)) if stored.subject == self.topic.as_str() => stored,
                Ok(_) => continue,
                Err(err) => {
                    tracing::warn!(topic = %self.topic, sequence, %err, "cannot read a message to check its headers");
                    return;
                }
            };
            let Some(problem) = stored.headers.as_deref().and_then(poison::unreadable_headers) else {
                continue;
            };
            let reason = format!("undecodable message: {problem}");
            match self.publish_unreadable(&stored, &reason, sequence).await {
                Ok(dlq) => {
                    tracing::error!(topic = %self.topic, %dlq, sequence, %reason, "message dead-lettered by the subscriber");
                    // The subject JetStream delivers the message with; the server acknowledges
                    // by stream sequence, whatever the delivery count and consumer sequence.
                    let ack = format!("$JS.ACK.{}.{}.1.{sequence}.0.0.0", self.stream, self.group);
                    let client = self.js.client();
                    if let Err(err) = client.publish(ack, "+ACK".into()).await {
                        tracing::warn!(%err, sequence, "ack after dead-lettering failed; it may be dead-lettered twice");
                    }
                }
                Err(err) => {
                    tracing::error!(topic = %self.topic, sequence, %reason, %err, "dead-lettering failed; tried again after its next redelivery");
                }
            }
        }
    }

    /// Publishes a message async-nats cannot parse to the dead-letter topic: its body, its header
    /// block as text with bytes outside printable ASCII escaped (`courier-dead-letter-headers`),
    /// the reason and its position. Too large, it goes without body and header block.
    async fn publish_unreadable(
        &self,
        stored: &StoredMessage,
        reason: &str,
        sequence: u64,
    ) -> Result<Topic, Error> {
        let dlq = self.config.dead_letter_topic(&self.topic)?;
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, dead_letter_msg_id(&dlq, &format!("{}:{sequence}", self.topic)));
        headers.insert(DEAD_LETTER_REASON_HEADER, bounded_header_value(reason));
        headers.insert(DEAD_LETTER_POSITION_HEADER, format!("stream {} sequence {sequence}", self.stream));
        let mut with_original = headers.clone();
        let original = stored.headers.as_deref().unwrap_or_default().escape_ascii().to_string();
        with_original.insert(crate::DEAD_LETTER_HEADERS_HEADER, original);
        let max_payload = self.js.client().server_info().max_payload;
        let size = wire_size(&with_original, &stored.body);
        if size <= max_payload {
            self.store_dead_letter(&dlq, with_original, stored.body.clone()).await?;
        } else {
            let refused =
                format!("the copy is {size} bytes, above the server's max_payload of {max_payload} bytes");
            headers.insert(DEAD_LETTER_ERROR_HEADER, refused);
            self.store_dead_letter(&dlq, headers, Default::default()).await?;
        }
        Ok(dlq)
    }

    /// Decodes `message`, or dead-letters it when it cannot or must not be handed out.
    async fn prepare(&self, message: jetstream::Message) -> Option<NatsDelivery> {
        let (stream_sequence, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, u64::try_from(info.delivered).unwrap_or(0)),
            Err(err) => {
                tracing::error!(%err, topic = %self.topic, "message without JetStream metadata ignored");
                return None;
            }
        };
        let headers = header_pairs(message.headers.as_ref());
        let envelope = match wire::decode(&headers, message.payload.clone()) {
            Ok(envelope) => envelope,
            Err(err) => {
                self.dead_letter(message, format!("undecodable message: {}", err.message()), delivered).await;
                return None;
            }
        };
        if let Some(max) = self.config.max_deliveries.filter(|&max| delivered > u64::from(max)) {
            let reason = format!("delivered {delivered} times (limit {max}) without being acknowledged");
            self.dead_letter(message, reason, delivered).await;
            return None;
        }
        // `info` parsed the reply subject, so it is there.
        let held = message.reply.clone().map(|reply| self.held.hold(reply));
        let (_, acker) = message.split();
        Some(NatsDelivery {
            envelope,
            acker: Some(acker),
            stream: Arc::clone(&self.stream),
            stream_sequence,
            delivered,
            unacked: self.unacked.clone(),
            _held: held,
        })
    }

    async fn dead_letter(&self, message: jetstream::Message, reason: String, delivered: u64) {
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or_default();
        match self.publish_dead_letter(&message, &reason, delivered, sequence).await {
            Ok(dlq) => {
                tracing::error!(topic = %self.topic, %dlq, sequence, %reason, "message dead-lettered by the subscriber");
                if let Err(err) = message.ack().await {
                    tracing::warn!(%err, sequence, "ack after dead-lettering failed; it may be dead-lettered twice");
                }
            }
            Err(err) => {
                tracing::error!(topic = %self.topic, sequence, %reason, %err, "dead-lettering failed; the message will be redelivered");
                if let Err(err) = message.ack_with(AckKind::Nak(Some(DEAD_LETTER_RETRY))).await {
                    tracing::warn!(%err, sequence, "NAK failed; ack_wait will redelivers the message");
                }
            }
        }
    }

    /// Publishes the raw message plus the reason to the dead-letter topic, provisioning its stream
    /// on first use when provisioning is on. Returns the dead-letter topic.
    ///
    /// A copy larger than the server's `max_payload` is never sent (the server would close the
    /// connection every publisher shares): a record naming the message's id and position goes
    /// instead, without body or original headers.
    async fn publish_dead_letter(
        &self,
        message: &jetstream::Message,
        reason: &str,
        delivered: u64,
        sequence: u64,
    ) -> Result<Topic, Error> {
        let dlq = self.config.dead_letter_topic(&self.topic)?;
        // The standard name, not the text: received headers are parsed into it, and a custom
        // `Nats-Msg-Id` would be a second header beside the original's, not its replacement.
        let original_id = match message.headers.as_ref().and_then(|h| h.get(NATS_MESSAGE_ID)) {
            Some(id) => id.to_string(),
            None => format!("{}:{sequence}", self.topic),
        };
        let mut headers = message.headers.clone().unwrap_or_default();
        let mut body = message.payload.clone();
        let mark = |headers: &mut HeaderMap| {
            headers.insert(NATS_MESSAGE_ID, dead_letter_msg_id(&dlq, &original_id));
            headers.insert(DEAD_LETTER_REASON_HEADER, bounded_header_value(reason));
            headers.insert(DEAD_LETTER_ATTEMPTS_HEADER, delivered.to_string());
        };
        mark(&mut headers);
        let max_payload = self.js.client().server_info().max_payload;
        let size = wire_size(&headers, &body);
        if size > max_payload {
            tracing::error!(topic = %self.topic, sequence, size, max_payload, "dead-letter copy too large; storing a record of the message without its body");
            headers = HeaderMap::new();
            mark(&mut headers);
            headers
                .insert(DEAD_LETTER_POSITION_HEADER, format!("stream {} sequence {sequence}", self.stream));
            let refused =
                format!("the copy is {size} bytes, above the server's max_payload of {max_payload} bytes");
            headers.insert(DEAD_LETTER_ERROR_HEADER, refused);
            body = Default::default();
        }
        self.store_dead_letter(&dlq, headers, body).await?;
        Ok(dlq)
    }

    /// Publishes to the dead-letter topic `dlq` and waits for the PubAck, provisioning its stream
    /// on first use when provisioning is on.
    async fn store_dead_letter(&self, dlq: &Topic, headers: HeaderMap, body: Bytes) -> Result<(), Error> {
        let mut provisioned = false;
        loop {
            let ack = self.js.publish_with_headers(dlq.to_string(), headers.clone(), body.clone()).await;
            let result = match ack {
                Ok(ack) => ack.await,
                Err(err) => Err(err),
            };
            match result {
                Ok(_) => return Ok(()),
                Err(err)
                    if err.kind() == jetstream::context::PublishErrorKind::StreamNotFound
                        && self.config.provision
                        && !provisioned =>
                {
                    streams::provision(&self.js, &self.config, &TopicConfig::new(dlq.clone())).await?;
                    provisioned = true;
                }
                Err(err) => {
                    return Err(Error::with_source(
                        ErrorKind::Unavailable,
                        format!("publishing to dead-letter subject {dlq:?}"),
                        err,
                    ))
                }
            }
        }
    }
}

/// What the server counts against `max_payload`: the header block (`NATS/1.0`, one
/// `name: value` line per value, a blank line) plus the body.
fn wire_size(headers: &HeaderMap, body: &[u8]) -> usize {
    let lines: usize = headers
        .iter()
        .flat_map(|(name, values)| {
            values.iter().map(move |v| AsRef::<str>::as_ref(name).len() + v.as_str().len() + 4)
        })
        .sum();
    b"NATS/1.0\r\n\r\n".len() + lines + body.len()
}

pub(crate) fn header_pairs(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(headers) = headers else { return Vec::new() };
    headers
        .iter()
        .flat_map(|(name, values)| values.iter().map(move |v| (name.to_string(), v.to_string())))
        .collect()
}
