//! [`NatsBus`]: the connection, and the [`Bus`] implementation tying publishing, provisioning and
//! subscribing together.

use std::sync::Arc;

use async_nats::jetstream::{self, Context};
use async_nats::{Client, Event};
use courier_core::{
    Bus, DeadLetterTopic, Error, ErrorKind, Publisher, PublisherConfig, ReadOptions, Reader, Topic,
    TopicConfig,
};
use futures::stream::BoxStream;

use crate::config::NatsConfig;
use crate::publish::{NatsTransport, ServerLimit};
use crate::security;
use crate::streams;
use crate::subscribe::{self, NatsDelivery};

/// A NATS JetStream bus. Cheap to clone; clones share its two connections: one for publishing
/// and management, one for subscriptions.
///
/// Subscriptions have a connection of their own because async-nats drops the connection a
/// message arrives on when that message's header block is not UTF-8 or has an invalid header
/// name (its protocol parser fails before the application sees the message), which any other
/// client can publish. Courier cannot fix that from its side; on a shared connection it would
/// also cut off every publish in flight, and do so again at each redelivery. Subscriptions find
/// such a message after the reconnect and dead-letter it (see [`subscribe`](crate::subscribe)).
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// For stream and consumer management.
    admin: Context,
    /// On the subscriptions' own connection: their pull consumers and dead-lettering.
    consumers: Context,
    config: Arc<NatsConfig>,
    limit: Arc<ServerLimit>,
}

impl NatsBus {
    /// Connects to `config.url` and checks that JetStream is enabled there. Refused credentials
    /// and TLS failures (an untrusted certificate) are [`ErrorKind::Config`] errors that say so;
    /// an unreachable server is a retryable [`ErrorKind::Connection`] error. The client
    /// reconnects forever after a lost connection; publishes made meanwhile wait in the client's
    /// queue and their PubAcks time out after the ack timeout (retryable) if the server is back
    /// too late.
    pub async fn connect(config: NatsConfig) -> Result<Self, Error> {
        let limit = Arc::new(ServerLimit::default());
        let client = open(&config, &config.connection_name, Some(Arc::clone(&limit))).await?;
        let admin = jetstream::ContextBuilder::new().timeout(config.ack_timeout).build(client.clone());
        if !client.server_info().jetstream {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "JetStream is not enabled on the NATS server at {} (start it with -js)",
                    config.shown_url()
                ),
            ));
        }
        let consumer_client = open(&config, &format!("{} consumers", config.connection_name), None).await?;
        let consumers = jetstream::ContextBuilder::new().timeout(config.ack_timeout).build(consumer_client);
        Ok(Self { inner: Arc::new(Inner { client, admin, consumers, config: Arc::new(config), limit }) })
    }

    /// The settings the bus was connected with, e.g. to name a topic's dead-letter topic.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// The client of the publishing connection, e.g. to inspect server info or to run a
    /// bare-client comparison. Subscriptions use a connection of their own.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// A JetStream context on the bus's connection, for management beyond what Courier does.
    pub fn jetstream(&self) -> &Context {
        &self.inner.admin
    }

    /// The dead-letter destination for subscribers of `topic`: its dead-letter topic (see
    /// [`NatsConfig::dead_letter_suffix`]), provisioned (or validated) here so dead-lettered
    /// events always have a stream to land in.
    pub async fn dead_letter(&self, topic: &Topic) -> Result<DeadLetterTopic<NatsTransport>, Error> {
        let dlq = self.inner.config.dead_letter_topic(topic)?;
        self.provision(&TopicConfig::new(dlq.clone())).await?;
        Ok(DeadLetterTopic::new(self.publisher(PublisherConfig::default()), dlq))
    }
}

/// One connection to `config.url` named `name`. `limit`, on the publishing connection, learns
/// of each (re)connect: the server's `max_payload` may have changed.
async fn open(config: &NatsConfig, name: &str, limit: Option<Arc<ServerLimit>>) -> Result<Client, Error> {
    let name_shown = name.to_owned();
    let (options, servers) = security::connect_options(config).await?;
    options
        .name(name)
        .event_callback(move |event| {
            let (limit, name) = (limit.clone(), name_shown.clone());
            async move {
                match event {
                    Event::Connected => {
                        if let Some(limit) = limit {
                            limit.mark_stale();
                        }
                        tracing::info!(connection = %name, "connected to NATS");
                    }
                    Event::Disconnected => {
                        tracing::warn!(connection = %name, "disconnected from NATS; reconnecting")
                    }
                    Event::ServerError(err) => tracing::error!(connection = %name, %err, "NATS server error"),
                    Event::Closed => tracing::debug!(connection = %name, "NATS connection closed"),
                    other => tracing::warn!(connection = %name, event = %other, "NATS connection event"),
                }
            }
        })
        .connect(servers.as_str())
        .await
        .map_err(|err| security::connect_error(config, err))
}

impl Bus for NatsBus {
    type Transport = NatsTransport;
    type Delivery = NatsDelivery;

    fn name(&self) -> &'static str {
        "nats"
    }

    async fn health(&self) -> Result<(), Error> {
        match self.inner.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(Error::new(
                ErrorKind::Connection,
                format!("not connected to NATS at {} (connection {state:?})", self.inner.config.shown_url()),
            )),
        }
    }

    fn publisher(&self, config: PublisherConfig) -> Publisher<NatsTransport> {
        let inner = &*self.inner;
        let transport = NatsTransport::new(
            inner.client.clone(),
            inner.config.wire_mode,
            Arc::clone(&inner.limit),
            inner.config.ack_timeout,
            config.get_window(),
        );
        Publisher::new(transport, config)
    }

    async fn provision(&self, config: &TopicConfig) -> Result<(), Error> {
        streams::provision(&self.inner.admin, &self.inner.config, config).await
    }

    async fn delete_topic(&self, topic: &Topic) -> Result<(), Error> {
        streams::delete(&self.inner.admin, topic).await
    }

    async fn subscribe(&self, topic: &Topic, group: &str) -> Result<BoxStream<'static, NatsDelivery>, Error> {
        subscribe::subscribe(&self.inner.consumers, &self.inner.config, topic, group).await
    }

    /// Without a group, reads through an ephemeral consumer that [`Reader::close`] deletes; with
    /// one, through the group's durable consumer, created at the start position when new.
    async fn read(&self, topic: &Topic, options: ReadOptions) -> Result<Reader, Error> {
        crate::read::read(&self.inner.admin, &self.inner.config, topic, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing listens on port 1: the connection is refused, and the error shows the URL without
    /// its password.
    #[tokio::test]
    async fn a_refused_connection_names_the_server_without_the_password() {
        let error = NatsBus::connect(NatsConfig::new("nats://courier:pw-not-shown@127.0.0.1:1"))
            .await
            .err()
            .expect("nothing listens on port 1");
        let text = error.to_string();
        assert!(text.contains("connecting to NATS at nats://courier:***@127.0.0.1:1"), "{text}");
        assert_eq!(error.kind(), ErrorKind::Connection);
        assert!(
            !text.contains("pw-not-shown") && !format!("{error:?}").contains("pw-not-shown"),
            "{error:?}"
        );
    }

    #[test]
    fn a_logged_config_does_not_show_the_password() {
        let shown = format!("{:?}", NatsConfig::new("nats://courier:pw-not-shown@127.0.0.1:4222"));
        assert!(shown.contains(r#"url: "nats://courier:***@127.0.0.1:4222""#), "{shown}");
        assert!(!shown.contains("pw-not-shown"), "{shown}");
        let shown =
            format!("{:?}", NatsConfig::new("nats://tok-not-shown@127.0.0.1:4222").nkey_seed("SUnot-shown"));
        assert!(shown.contains(r#"url: "nats://***@127.0.0.1:4222""#), "{shown}");
        assert!(!shown.contains("not-shown"), "{shown}");
    }
}
