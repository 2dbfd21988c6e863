//! The [`Engine`] on NATS JetStream: one events stream (deduplicating on `Nats-Msg-Id` within a
//! configurable window), one durable pull consumer per destination shared by every worker, and
//! a dead-letter stream.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, consumer::pull, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::Mutex;

use crate::config::{NatsConfig, WorkerConfig, consumer_name};
use crate::engine::{Appended, Engine, EngineError, Pulled};

/// A connection to JetStream with the relay's streams.
#[derive(Debug)]
pub struct JetStream {
    client: async_nats::Client,
    context: jetstream::Context,
    nats: NatsConfig,
    worker: WorkerConfig,
    consumers: Mutex<HashMap<String, PullConsumer>>,
}

fn err(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError(format!("{what}: {e}"))
}

impl JetStream {
    /// Connects to `nats.url`. The connection is made in the background and kept up (retrying),
    /// so a relay started before its NATS server answers 503 until the server is there.
    ///
    /// # Errors
    /// A URL that does not parse.
    pub async fn connect(nats: &NatsConfig, worker: &WorkerConfig) -> Result<Self, EngineError> {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            // Several servers (a cluster), comma-separated: the client fails over between them.
            .connect(nats.url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect::<Vec<_>>())
            .await
            .map_err(|e| err("connecting to NATS", e))?;
        let mut context = jetstream::new(client.clone());
        context.set_timeout(Duration::from_secs(nats.publish_timeout_secs.max(1)));
        Ok(JetStream { client, context, nats: nats.clone(), worker: worker.clone(), consumers: Mutex::default() })
    }

    /// Whether the connection to NATS is up now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The NATS settings.
    pub fn nats(&self) -> &NatsConfig {
        &self.nats
    }

    /// Creates the events and dead-letter streams, or updates the duplicate window and replicas
    /// of existing ones.
    ///
    /// # Errors
    /// JetStream unreachable or refusing the configuration.
    pub async fn ensure_streams(&self) -> Result<(), EngineError> {
        let events = stream::Config {
            name: self.nats.stream.clone(),
            subjects: vec![self.nats.events_subject()],
            duplicate_window: self.nats.duplicate_window(),
            num_replicas: self.nats.replicas.max(1),
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let dead = stream::Config {
            name: self.nats.dead_stream(),
            subjects: vec![format!("{}.dead.>", self.nats.stream)],
            num_replicas: self.nats.replicas.max(1),
            storage: stream::StorageType::File,
            ..Default::default()
        };
        for config in [events, dead] {
            let name = config.name.clone();
            match self.context.get_stream(&name).await {
                Ok(_) => {
                    self.context.update_stream(config).await.map_err(|e| err(&format!("updating stream {name}"), e))?;
                }
                Err(_) => {
                    self.context.create_stream(config).await.map_err(|e| err(&format!("creating stream {name}"), e))?;
                }
            }
        }
        Ok(())
    }

    /// The durable pull consumer of `destination` (created on first use; every worker process
    /// binds to the same one, so they share its messages).
    async fn consumer(&self, destination: &str) -> Result<PullConsumer, EngineError> {
        let name = consumer_name(destination);
        let mut consumers = self.consumers.lock().await;
        if let Some(c) = consumers.get(&name) {
            return Ok(c.clone());
        }
        let stream = self.context.get_stream(&self.nats.stream).await.map_err(|e| err("events stream", e))?;
        let config = pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: self.nats.events_subject(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(self.worker.ack_wait_secs.max(1)),
            max_ack_pending: self.worker.max_ack_pending.max(1),
            // Retries are paced by naks with a delay; an event is never dropped by the server.
            max_deliver: -1,
            ..Default::default()
        };
        let consumer =
            stream.get_or_create_consumer(&name, config).await.map_err(|e| err(&format!("consumer {name}"), e))?;
        consumers.insert(name, consumer.clone());
        Ok(consumer)
    }

    /// `destination`'s consumer lag: messages not yet handed out, and handed out but not acked.
    ///
    /// # Errors
    /// JetStream unreachable, or no such consumer yet.
    pub async fn consumer_lag(&self, destination: &str) -> Result<(u64, usize), EngineError> {
        let stream = self.context.get_stream(&self.nats.stream).await.map_err(|e| err("events stream", e))?;
        let mut consumer: PullConsumer =
            stream.get_consumer(&consumer_name(destination)).await.map_err(|e| err("consumer", e))?;
        let info = consumer.info().await.map_err(|e| err("consumer info", e))?;
        Ok((info.num_pending, info.num_ack_pending))
    }

    /// The dead-letter stream.
    ///
    /// # Errors
    /// JetStream unreachable, or the stream missing.
    pub async fn dead_stream(&self) -> Result<stream::Stream, EngineError> {
        self.context.get_stream(self.nats.dead_stream()).await.map_err(|e| err("dead-letter stream", e))
    }

    /// Appends to any subject (dead letters).
    pub(crate) async fn publish(
        &self,
        subject: String,
        headers: async_nats::HeaderMap,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck, EngineError> {
        self.context
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| err("append", e))?
            .await
            .map_err(|e| err("append not acknowledged", e))
    }
}

/// A message pulled from JetStream.
#[derive(Debug)]
pub struct JetStreamMessage(jetstream::Message);

impl Pulled for JetStreamMessage {
    fn payload(&self) -> &[u8] {
        &self.0.payload
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.0.headers.as_ref()?.get(name).map(|v| v.as_str())
    }

    fn sequence(&self) -> u64 {
        self.0.info().map(|i| i.stream_sequence).unwrap_or(0)
    }

    fn attempt(&self) -> u32 {
        self.0.info().map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX)).unwrap_or(1).max(1)
    }

    async fn ack(self) -> Result<(), EngineError> {
        // A double ack: returns once the server recorded it, so a worker that is killed right
        // after cannot leave a delivered message to be handed out again for lack of an ack.
        self.0.double_ack().await.map_err(|e| err("ack", e))
    }

    async fn nak(self, delay: Duration) -> Result<(), EngineError> {
        self.0.ack_with(AckKind::Nak(Some(delay))).await.map_err(|e| err("nak", e))
    }
}

impl Engine for JetStream {
    type Message = JetStreamMessage;

    async fn append(
        &self,
        msg_id: &str,
        subject: &str,
        headers: &[(&str, &str)],
        payload: Bytes,
    ) -> Result<Appended, EngineError> {
        let mut map = async_nats::HeaderMap::new();
        map.insert("Nats-Msg-Id", msg_id);
        for (k, v) in headers {
            map.insert(*k, *v);
        }
        let ack = self.publish(subject.to_owned(), map, payload).await?;
        Ok(Appended { sequence: ack.sequence, duplicate: ack.duplicate })
    }

    async fn pull(&self, destination: &str, max: usize, wait: Duration) -> Result<Vec<JetStreamMessage>, EngineError> {
        let consumer = self.consumer(destination).await?;
        let mut batch =
            consumer.batch().max_messages(max.max(1)).expires(wait).messages().await.map_err(|e| err("pull", e))?;
        let mut out = Vec::new();
        while let Some(next) = batch.next().await {
            match next {
                Ok(m) => out.push(JetStreamMessage(m)),
                // A message already pulled is kept; the rest of the pull ends on an error.
                Err(e) if out.is_empty() => return Err(err("pull", e)),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    fn ready(&self) -> bool {
        self.is_connected()
    }

    async fn lag(&self, destination: &str) -> Result<(u64, usize), EngineError> {
        self.consumer_lag(destination).await
    }
}
