//! [`Bus::read`](courier_core::Bus::read) on JetStream: a durable consumer for a group, else an
//! ephemeral one without acknowledgements, created at the start position and deleted when the
//! reader closes (the server drops it after [`EPHEMERAL_INACTIVE`] if the process dies first).
//! A group reader requests each message only when it is asked for the next, so one that stops
//! leaves nothing handed out and the group's next reader does not wait `ack_wait`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{self, Context};
use courier_core::{
    wire, Error, ErrorKind, Message, Position, ReadOptions, Reader, StartAt, Topic, Undecodable,
};
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::Mutex;

use crate::config::NatsConfig;
use crate::streams::{self, admin_error};
use crate::subscribe::{header_pairs, open_group, pull};

/// How long the server keeps an ephemeral reader's consumer nobody pulls from: a reader that
/// is still open pulls at least every few seconds.
const EPHEMERAL_INACTIVE: Duration = Duration::from_secs(30);
/// How long a group reader's request for a message waits on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Pause after a failed request, so a broker outage does not spin.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The JetStream delivery policy of a start position.
fn deliver_policy(start: StartAt) -> DeliverPolicy {
    match start {
        StartAt::Earliest => DeliverPolicy::All,
        StartAt::Latest => DeliverPolicy::New,
        StartAt::Time(time) => DeliverPolicy::ByStartTime { start_time: time.into() },
    }
}

pub(crate) async fn read(
    js: &Context,
    config: &Arc<NatsConfig>,
    topic: &Topic,
    options: ReadOptions,
) -> Result<Reader, Error> {
    let policy = deliver_policy(options.get_start());
    let Some(group) = options.get_group() else {
        return read_ephemeral(js, config, topic, policy).await;
    };
    let consumer = open_group(js, config, topic, group, policy).await?;
    let stream: Arc<str> = consumer.cached_info().stream_name.as_str().into();
    Ok(Reader::new(one_at_a_time(consumer, topic.clone(), stream)))
}

/// The group's messages, each requested only when the reader asks for the next one. Nothing is
/// pulled ahead, so a reader that stops at its limit leaves nothing handed out to it: a message a
/// pull stream had already requested would reach the reader after it stopped and stay
/// unacknowledged, and the group's next reader would wait `ack_wait` for it. (A reader stopped
/// while it waits for a message can still leave that one request open.)
fn one_at_a_time(consumer: PullConsumer, topic: Topic, stream: Arc<str>) -> BoxStream<'static, Message> {
    futures::stream::unfold(consumer, move |consumer| {
        let (topic, stream) = (topic.clone(), Arc::clone(&stream));
        async move {
            loop {
                let request = consumer.batch().max_messages(1).expires(PULL_EXPIRES).messages().await;
                let mut batch = match request {
                    Ok(batch) => batch,
                    Err(err) => {
                        tracing::warn!(%topic, %err, "requesting a message failed; retrying");
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                };
                // Ends after its one message, or empty when the request expired.
                while let Some(next) = batch.next().await {
                    match next.map(|message| to_message(message, &stream, true)) {
                        Ok(Some(message)) => return Some((message, consumer)),
                        Ok(None) => tracing::error!(%topic, "message without JetStream metadata ignored"),
                        Err(err) => {
                            tracing::warn!(%topic, %err, "requesting a message failed; retrying");
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                    }
                }
            }
        }
    })
    .boxed()
}

async fn read_ephemeral(
    js: &Context,
    config: &NatsConfig,
    topic: &Topic,
    deliver_policy: DeliverPolicy,
) -> Result<Reader, Error> {
    let stream = streams::stream_for(js, topic).await?;
    let consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            filter_subject: topic.to_string(),
            ack_policy: AckPolicy::None,
            deliver_policy,
            inactive_threshold: EPHEMERAL_INACTIVE,
            memory_storage: true,
            description: Some("courier reader".into()),
            ..pull::Config::default()
        })
        .await
        .map_err(|err| admin_error(format!("creating a reader of {topic:?}"), None, err))?;
    let name = consumer.cached_info().name.clone();
    let messages = Arc::new(Mutex::new(pull(&consumer, config.pull_batch, &name, topic).await?));
    let stream_name: Arc<str> = consumer.cached_info().stream_name.as_str().into();
    let topic = topic.clone();
    let reader = Reader::new(messages_of(messages, topic.clone(), stream_name, false));
    Ok(reader.on_close(move || async move {
        if let Err(err) = stream.delete_consumer(&name).await {
            tracing::warn!(%topic, consumer = %name, %err, "deleting the reader's consumer failed; the server drops it when inactive");
        }
    }))
}

/// Turns pulled messages into read messages; `acked` gives them the consumer's acknowledgement.
fn messages_of(
    messages: Arc<Mutex<pull::Stream>>,
    topic: Topic,
    stream: Arc<str>,
    acked: bool,
) -> futures::stream::BoxStream<'static, Message> {
    futures::stream::unfold(messages, move |messages| {
        let (topic, stream) = (topic.clone(), Arc::clone(&stream));
        async move {
            loop {
                let next = messages.lock().await.next().await?;
                match next {
                    Ok(message) => match to_message(message, &stream, acked) {
                        Some(message) => return Some((message, messages)),
                        None => tracing::error!(%topic, "message without JetStream metadata ignored"),
                    },
                    Err(err) if err.kind() == pull::MessagesErrorKind::ConsumerDeleted => {
                        tracing::error!(%topic, "the reader's consumer was deleted; reading ends");
                        return None;
                    }
                    Err(err) => tracing::warn!(%topic, %err, "pull consumer error; retrying"),
                }
            }
        }
    })
    .boxed()
}

/// `None` for a message without JetStream metadata, which no consumer delivers.
fn to_message(message: jetstream::Message, stream: &str, acked: bool) -> Option<Message> {
    let info = message.info().ok()?;
    let position = Position::Stream { stream: stream.to_owned(), sequence: info.stream_sequence };
    let stored_at = Some(SystemTime::from(info.published));
    let headers = header_pairs(message.headers.as_ref());
    let content = wire::decode(&headers, message.payload.clone())
        .map_err(|err| Undecodable::new(err.message(), headers, message.payload.clone()));
    let sequence = info.stream_sequence;
    let (_, acker) = message.split();
    let read = Message::new(position, stored_at, content);
    Some(if acked { read.on_ack(move || ack(acker, sequence)) } else { read })
}

/// Waits for the server's confirmation, so a reader that exits after its last acknowledgement
/// leaves the group's position past it.
async fn ack(acker: Acker, sequence: u64) -> Result<(), Error> {
    acker.double_ack().await.map_err(|err| {
        Error::new(ErrorKind::Connection, format!("acknowledging stream sequence {sequence}: {err}"))
    })
}
