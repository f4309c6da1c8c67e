//! Stream provisioning and lookup: one stream per topic whose only subject is the topic name.

use std::time::Duration;

use async_nats::jetstream::context::{
    CreateStreamErrorKind, GetStreamByNameErrorKind, GetStreamError, GetStreamErrorKind,
};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use courier_core::{Error, ErrorKind, Topic, TopicConfig};

use crate::config::{stream_name, NatsConfig, Retention, Storage};
use crate::publish::api_error_kind;

/// Turns a failed JetStream API call into an error; server refusals of a stream or consumer
/// configuration are configuration errors.
pub(crate) fn admin_error(
    what: String,
    api: Option<&jetstream::Error>,
    err: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    let kind = match api.map(api_error_kind) {
        None => ErrorKind::Connection,
        Some(ErrorKind::Rejected) => ErrorKind::Config,
        Some(kind) => kind,
    };
    Error::with_source(kind, what, err)
}

/// A failed read or delete of one stream (async-nats gives both the same error type).
fn stream_error(what: String, err: GetStreamError) -> Error {
    let api = match err.kind() {
        GetStreamErrorKind::JetStream(api) => Some(api),
        _ => None,
    };
    admin_error(what, api.as_ref(), err)
}

/// The stream config `topic` should have under `config`.
fn desired(config: &NatsConfig, topic: &TopicConfig) -> stream::Config {
    let limit = |value: Option<u64>| value.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
    let max_age = topic.get_max_age().unwrap_or(Duration::ZERO);
    // The server refuses a duplicate window longer than the age limit.
    let window = topic.get_duplicate_window();
    let duplicate_window = if max_age.is_zero() { window } else { window.min(max_age) };
    stream::Config {
        name: stream_name(topic.get_topic()),
        subjects: vec![topic.get_topic().to_string()],
        storage: match config.storage {
            Storage::File => StorageType::File,
            Storage::Memory => StorageType::Memory,
        },
        retention: match config.retention {
            Retention::Limits => RetentionPolicy::Limits,
            Retention::Interest => RetentionPolicy::Interest,
            Retention::WorkQueue => RetentionPolicy::WorkQueue,
        },
        discard: DiscardPolicy::Old,
        max_age,
        max_bytes: limit(topic.get_max_bytes()),
        max_messages: limit(topic.get_max_messages()),
        duplicate_window,
        num_replicas: usize::try_from(topic.get_replicas().max(1)).unwrap_or(1),
        description: Some("provisioned by courier".into()),
        ..stream::Config::default()
    }
}

/// The name of the stream whose subjects include `topic`, if any.
pub(crate) async fn stream_holding(js: &Context, topic: &Topic) -> Result<Option<String>, Error> {
    match js.stream_by_subject(topic.as_str()).await {
        Ok(name) => Ok(Some(name)),
        Err(err) => match err.kind() {
            GetStreamByNameErrorKind::NotFound => Ok(None),
            GetStreamByNameErrorKind::JetStream(api) => {
                let api = api.clone();
                Err(admin_error(format!("looking up the stream of subject {topic:?}"), Some(&api), err))
            }
            _ => Err(admin_error(format!("looking up the stream of subject {topic:?}"), None, err)),
        },
    }
}

/// The stream that holds `topic`, or a NotFound error naming the subject.
pub(crate) async fn stream_for(js: &Context, topic: &Topic) -> Result<jetstream::stream::Stream, Error> {
    let Some(name) = stream_holding(js, topic).await? else {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("no JetStream stream holds subject {topic:?}: provision the topic first"),
        ));
    };
    js.get_stream(&name).await.map_err(|err| stream_error(format!("reading stream {name}"), err))
}

/// Creates `topic`'s stream, updates the limits of the stream Courier made for it earlier, or,
/// with provisioning off, checks that some stream holds the subject.
pub(crate) async fn provision(js: &Context, config: &NatsConfig, topic: &TopicConfig) -> Result<(), Error> {
    let want = desired(config, topic);
    let existing = stream_holding(js, topic.get_topic()).await?;
    if !config.provision {
        return match existing {
            Some(name) => {
                tracing::debug!(stream = %name, topic = %topic.get_topic(), "topic is held by an existing stream");
                Ok(())
            }
            None => Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "no JetStream stream holds subject {:?} and provisioning is off: create a stream for it",
                    topic.get_topic()
                ),
            )),
        };
    }
    match existing {
        None => create(js, want).await,
        Some(name) if name == want.name => update_limits(js, want).await,
        Some(name) => {
            tracing::info!(stream = %name, topic = %topic.get_topic(), "topic is held by a stream Courier does not manage; leaving it as is");
            Ok(())
        }
    }
}

/// Deletes the stream Courier made for `topic`. A stream Courier does not manage may hold other
/// subjects, so it is refused.
pub(crate) async fn delete(js: &Context, topic: &Topic) -> Result<(), Error> {
    let ours = stream_name(topic);
    match stream_holding(js, topic).await? {
        None => Ok(()),
        Some(name) if name == ours => js
            .delete_stream(&name)
            .await
            .map(drop)
            .map_err(|err| stream_error(format!("deleting stream {name}"), err)),
        Some(name) => Err(Error::new(
            ErrorKind::Config,
            format!(
                "topic {topic:?} is held by stream {name}, which Courier did not provision and which may hold other subjects: delete it with the NATS tools"
            ),
        )),
    }
}

async fn create(js: &Context, want: stream::Config) -> Result<(), Error> {
    let name = want.name.clone();
    let subject = want.subjects[0].clone();
    match js.create_stream(want).await {
        Ok(_) => Ok(()),
        Err(err) => {
            let api = match err.kind() {
                CreateStreamErrorKind::JetStream(api) => Some(api),
                _ => None,
            };
            if api.as_ref().is_some_and(|a| a.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST) {
                return Err(Error::with_source(
                    ErrorKind::Config,
                    format!(
                        "stream {name} already exists for other subjects; topic {subject:?} maps to the same \
                         stream name (topics differing only in '.' versus '_' cannot both be provisioned)"
                    ),
                    err,
                ));
            }
            Err(admin_error(format!("creating stream {name} for subject {subject:?}"), api.as_ref(), err))
        }
    }
}

/// Applies changed limits to a stream Courier provisioned; storage and retention cannot change
/// after creation, so a mismatch there is only logged.
async fn update_limits(js: &Context, want: stream::Config) -> Result<(), Error> {
    let name = want.name.clone();
    let mut stream =
        js.get_stream(&name).await.map_err(|err| stream_error(format!("reading stream {name}"), err))?;
    let have = stream.info().await.map_err(|err| admin_error(format!("reading stream {name}"), None, err))?;
    let mut config = have.config.clone();
    if (config.storage, config.retention) != (want.storage, want.retention) {
        tracing::warn!(stream = %name, "stream storage/retention differ from the configuration and cannot be changed");
    }
    let limits =
        |c: &stream::Config| (c.max_age, c.max_bytes, c.max_messages, c.duplicate_window, c.num_replicas);
    if limits(&config) == limits(&want) {
        return Ok(());
    }
    (config.max_age, config.max_bytes, config.max_messages, config.duplicate_window, config.num_replicas) =
        limits(&want);
    js.update_stream(&config)
        .await
        .map(drop)
        .map_err(|err| admin_error(format!("updating the limits of stream {name}"), None, err))
}
