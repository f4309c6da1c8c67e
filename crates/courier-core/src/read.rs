//! Reading a topic from a chosen position ([`Bus::read`](crate::Bus::read)), as a consumer group
//! or as an ephemeral reader that moves no group's position: what an inspection tool such as
//! `courier tail` needs, beside the handler-driven [`Bus::subscribe`](crate::Bus::subscribe).
//!
//! A reader shows what the topic holds: a message that is not a Courier event comes out as
//! [`Undecodable`] with the reason, its position and its raw bytes, where a subscription would
//! dead-letter it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, Stream};

use crate::{Envelope, Error, Position};

/// Where a reader starts in a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest message the topic still holds.
    Earliest,
    /// Only messages stored after the reader started.
    Latest,
    /// The first message the broker stored at or after this time (JetStream's stored time,
    /// the Kafka record timestamp, the memory bus's append time); the end when there is none.
    Time(SystemTime),
}

/// What [`Bus::read`](crate::Bus::read) reads: a start position and, optionally, a consumer
/// group.
///
/// ```
/// use courier_core::{ReadOptions, StartAt};
///
/// let ephemeral = ReadOptions::new(StartAt::Latest);
/// let grouped = ReadOptions::new(StartAt::Earliest).group("audit");
/// assert_eq!((ephemeral.get_group(), grouped.get_group()), (None, Some("audit")));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOptions {
    start: StartAt,
    group: Option<String>,
}

impl ReadOptions {
    /// An ephemeral reader starting at `start`.
    pub fn new(start: StartAt) -> Self {
        Self { start, group: None }
    }

    /// Reads as member of consumer group `group`: [`Message::ack`] advances the group's position,
    /// and the start applies only when the group has no position yet, so a second reader of the
    /// group resumes after the first one's acknowledged messages.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// See [`new`](Self::new).
    pub fn get_start(&self) -> StartAt {
        self.start
    }

    /// See [`group`](Self::group).
    pub fn get_group(&self) -> Option<&str> {
        self.group.as_deref()
    }
}

/// Acknowledges one message in its group.
type AckFn = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), Error>> + Send>;

/// One message read from a topic: a Courier event, or the raw message and why it is none.
pub struct Message {
    position: Position,
    stored_at: Option<SystemTime>,
    content: Result<Envelope, Undecodable>,
    ack: Option<AckFn>,
}

impl Message {
    /// A message of an ephemeral reader, whose [`ack`](Self::ack) does nothing.
    pub fn new(
        position: Position,
        stored_at: Option<SystemTime>,
        content: Result<Envelope, Undecodable>,
    ) -> Self {
        Self { position, stored_at, content, ack: None }
    }

    /// Sets what [`ack`](Self::ack) does, for a message read in a consumer group.
    pub fn on_ack<F>(mut self, ack: impl FnOnce() -> F + Send + 'static) -> Self
    where
        F: std::future::Future<Output = Result<(), Error>> + Send + 'static,
    {
        self.ack = Some(Box::new(move || Box::pin(ack())));
        self
    }

    /// Where the broker stores the message.
    pub fn position(&self) -> &Position {
        &self.position
    }

    /// When the broker stored it, if the broker says.
    pub fn stored_at(&self) -> Option<SystemTime> {
        self.stored_at
    }

    /// The event, or why the message is not one.
    pub fn content(&self) -> Result<&Envelope, &Undecodable> {
        self.content.as_ref()
    }

    /// Marks the message done in the reader's group; nothing for an ephemeral reader. Acknowledge
    /// in the order read: on Kafka an acknowledgement marks every earlier message of the
    /// partition done too.
    pub async fn ack(self) -> Result<(), Error> {
        match self.ack {
            Some(ack) => ack().await,
            None => Ok(()),
        }
    }
}

/// A message that is not a Courier event, as the broker holds it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Undecodable {
    /// Why it does not decode.
    pub reason: String,
    /// Its headers, names and values as text (bytes that are not UTF-8 replaced by `�`).
    pub headers: Vec<(String, String)>,
    /// Its body (Kafka: the record value), unchanged.
    pub payload: Bytes,
}

impl Undecodable {
    /// A message with these headers and body that does not decode for `reason`.
    pub fn new(reason: impl Into<String>, headers: Vec<(String, String)>, payload: Bytes) -> Self {
        Self { reason: reason.into(), headers, payload }
    }
}

/// Releases what a reader holds on the broker.
type CloseFn = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// The messages of a [`Bus::read`](crate::Bus::read), in order per partition (per topic on
/// NATS and memory). [`close`](Self::close) releases what the reader holds on the broker (the
/// ephemeral JetStream consumer); dropping it does so in a background task, which a runtime
/// shutting down may cut short.
pub struct Reader {
    messages: Option<BoxStream<'static, Message>>,
    close: Option<CloseFn>,
}

impl Reader {
    /// A reader of `messages` that holds nothing to release.
    pub fn new(messages: BoxStream<'static, Message>) -> Self {
        Self { messages: Some(messages), close: None }
    }

    /// Sets what [`close`](Self::close) runs after the messages stream is dropped.
    pub fn on_close<F>(mut self, close: impl FnOnce() -> F + Send + 'static) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.close = Some(Box::new(move || Box::pin(close())));
        self
    }

    /// Stops reading and releases what the reader holds on the broker.
    pub async fn close(mut self) {
        self.messages = None;
        if let Some(close) = self.close.take() {
            close().await;
        }
    }
}

impl Stream for Reader {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        match self.messages.as_mut() {
            Some(messages) => messages.as_mut().poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.messages = None;
        if let (Some(close), Ok(runtime)) = (self.close.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(close());
        }
    }
}
