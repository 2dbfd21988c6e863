//! The [`Engine`] on NATS JetStream: one events stream (deduplicating on `Nats-Msg-Id` within a
//! configurable window) on `<stream>.events.<partition>`, one durable pull consumer per
//! destination shared by every worker, a dead-letter stream, and the `<stream>_STATE` KV bucket.
//!
//! A destination that keeps order per person has instead one durable consumer per partition,
//! `<destination>_p<N>`, with a priority group under the `PinnedClient` policy (JetStream 2.11):
//! the server hands the partition's messages to one pull subscription at a time (the pinned
//! one) and answers the others' pulls with "pin id mismatch" until the pinned one has sent no
//! pull for the priority timeout. That is the exclusive consumer the order needs, kept by the
//! server itself: no lease of our own to renew, no clock to trust, and a killed worker loses its
//! pin without anyone noticing it died: the server unpins a client that has sent no pull for the
//! priority timeout, set to the ack wait plus the pull's expiry plus the client's own slack (it
//! re-sends an unanswered pull 5 s after its expiry), so a worker busy with a slow request keeps
//! its pin (measured: the partitions of a worker killed with a 2 s ack wait moved after 11 s).
//! JetStream does not promise that what the dead worker was handed and did not ack comes out
//! before the partition's newer messages (in a test it did not always), so the worker taking
//! over checks the consumer's unacked count ([`Engine::partition_unsettled`]) and sends nothing
//! until those are its own (at most the ack wait plus a second); its held messages are kept by
//! stream position, so a person's earlier event goes out first.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, consumer::pull, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::Mutex;

use crate::config::{NatsConfig, WorkerConfig, consumer_name};
use crate::engine::{Appended, Engine, EngineError, Pulled, Versioned};

/// The priority group every worker's partition pulls join.
const GROUP: &str = "relay";
/// How long one partition pull request lasts before the client sends the next: short, so a dead
/// worker's pin ends soon after its last request.
const PARTITION_PULL_EXPIRY: Duration = Duration::from_secs(2);

/// A partition's long-lived pull subscription (it carries the pin).
type PartitionStream = std::sync::Arc<Partition>;

/// A partition's pull subscription, one puller at a time, and its consumer (for its info).
struct Partition(Mutex<pull::Stream>, PullConsumer);

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Partition")
    }
}

/// A connection to JetStream with the relay's streams.
#[derive(Debug)]
pub struct JetStream {
    client: async_nats::Client,
    context: jetstream::Context,
    nats: NatsConfig,
    worker: WorkerConfig,
    consumers: Mutex<HashMap<String, PullConsumer>>,
    partitions: Mutex<HashMap<String, PartitionStream>>,
    kv: Mutex<Option<jetstream::kv::Store>>,
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
        Ok(JetStream {
            client,
            context,
            nats: nats.clone(),
            worker: worker.clone(),
            consumers: Mutex::default(),
            partitions: Mutex::default(),
            kv: Mutex::default(),
        })
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
            // The bare subject too: events a relay from before partitions stored there.
            subjects: vec![self.nats.events_subject(), format!("{}.>", self.nats.events_subject())],
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
        self.state_store().await?;
        Ok(())
    }

    /// The shared state bucket (created on first use: one value per key, no history).
    async fn state_store(&self) -> Result<jetstream::kv::Store, EngineError> {
        let mut kv = self.kv.lock().await;
        if let Some(store) = &*kv {
            return Ok(store.clone());
        }
        let bucket = self.nats.state_bucket();
        let store = match self.context.get_key_value(&bucket).await {
            Ok(store) => store,
            Err(_) => self
                .context
                .create_key_value(jetstream::kv::Config {
                    bucket: bucket.clone(),
                    history: 1,
                    num_replicas: self.nats.replicas.max(1),
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| err(&format!("creating KV bucket {bucket}"), e))?,
        };
        *kv = Some(store.clone());
        Ok(store)
    }

    /// The pull subscription of partition `partition` of `destination` (its consumer created or
    /// updated on first use).
    async fn partition_stream(&self, destination: &str, partition: u32) -> Result<PartitionStream, EngineError> {
        let name = partition_consumer_name(destination, partition);
        let mut streams = self.partitions.lock().await;
        if let Some(s) = streams.get(&name) {
            return Ok(s.clone());
        }
        let stream = self.context.get_stream(&self.nats.stream).await.map_err(|e| err("events stream", e))?;
        let ack_wait = Duration::from_secs(self.worker.ack_wait_secs.max(1));
        let mut filters = vec![self.nats.partition_subject(partition)];
        if partition == 0 {
            // Events stored before partitions: partition 0 delivers them.
            filters.push(self.nats.events_subject());
        }
        let config = pull::Config {
            durable_name: Some(name.clone()),
            filter_subjects: filters,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait,
            max_ack_pending: self.worker.max_ack_pending.max(1),
            max_deliver: -1,
            priority_policy: jetstream::consumer::PriorityPolicy::PinnedClient,
            priority_groups: vec![GROUP.to_owned()],
            // The client re-sends an unanswered pull 5 s after its expiry: a worker in a long
            // request still sends one within this.
            priority_timeout: ack_wait + PARTITION_PULL_EXPIRY + Duration::from_secs(7),
            ..Default::default()
        };
        let consumer: PullConsumer =
            stream.create_consumer(config).await.map_err(|e| err(&format!("consumer {name}"), e))?;
        let messages = consumer
            .stream()
            .group(GROUP)
            .max_messages_per_batch(self.worker.batch.max(1))
            .expires(PARTITION_PULL_EXPIRY)
            .heartbeat(Duration::from_millis(500))
            .messages()
            .await
            .map_err(|e| err(&format!("pulling {name}"), e))?;
        let messages = std::sync::Arc::new(Partition(Mutex::new(messages), consumer));
        streams.insert(name, messages.clone());
        Ok(messages)
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
            filter_subjects: vec![self.nats.events_subject(), format!("{}.>", self.nats.events_subject())],
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(self.worker.ack_wait_secs.max(1)),
            max_ack_pending: self.worker.max_ack_pending.max(1),
            // Retries are paced by naks with a delay; an event is never dropped by the server.
            max_deliver: -1,
            ..Default::default()
        };
        // Created, or updated (a consumer from before partitions filtered the bare subject).
        let consumer: PullConsumer =
            stream.create_consumer(config).await.map_err(|e| err(&format!("consumer {name}"), e))?;
        consumers.insert(name, consumer.clone());
        Ok(consumer)
    }

    /// `destination`'s consumer lag: messages not yet handed out, and handed out but not acked.
    ///
    /// # Errors
    /// JetStream unreachable, or no such consumer yet.
    pub async fn consumer_lag(&self, destination: &str) -> Result<(u64, usize), EngineError> {
        let stream = self.context.get_stream(&self.nats.stream).await.map_err(|e| err("events stream", e))?;
        if let Ok(mut consumer) = stream.get_consumer::<pull::Config>(&consumer_name(destination)).await {
            let info = consumer.info().await.map_err(|e| err("consumer info", e))?;
            return Ok((info.num_pending, info.num_ack_pending));
        }
        // An ordered destination: the sum over its partitions.
        let mut lag = (0, 0);
        let mut found = false;
        for p in 0..self.nats.partition_count() {
            if let Ok(mut consumer) =
                stream.get_consumer::<pull::Config>(&partition_consumer_name(destination, p)).await
            {
                let info = consumer.info().await.map_err(|e| err("consumer info", e))?;
                lag.0 += info.num_pending;
                lag.1 += info.num_ack_pending;
                found = true;
            }
        }
        if found { Ok(lag) } else { Err(EngineError(format!("no consumer for {destination} yet"))) }
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

    async fn in_progress(&self) -> Result<(), EngineError> {
        self.0.ack_with(AckKind::Progress).await.map_err(|e| err("in progress", e))
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

    async fn pull_partition(
        &self,
        destination: &str,
        partition: u32,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<JetStreamMessage>, EngineError> {
        let stream = self.partition_stream(destination, partition).await?;
        let mut messages = stream.0.lock().await;
        let mut out = Vec::new();
        let first = match tokio::time::timeout(wait, messages.next()).await {
            Err(_) => return Ok(out),
            Ok(first) => first,
        };
        let mut next = first;
        loop {
            match next {
                Some(Ok(m)) => out.push(JetStreamMessage(m)),
                Some(Err(e)) if out.is_empty() => return Err(err("partition pull", e)),
                Some(Err(_)) => break,
                None => {
                    // The subscription ended (its consumer deleted): made again on the next pull.
                    drop(messages);
                    self.partitions.lock().await.remove(&partition_consumer_name(destination, partition));
                    break;
                }
            }
            if out.len() >= max {
                break;
            }
            // What has already arrived, without waiting for more.
            match futures_util::FutureExt::now_or_never(messages.next()) {
                Some(n) => next = n,
                None => break,
            }
        }
        Ok(out)
    }

    async fn partition_unsettled(&self, destination: &str, partition: u32) -> Result<usize, EngineError> {
        let mut consumer = self.partition_stream(destination, partition).await?.1.clone();
        let info = consumer.info().await.map_err(|e| err("consumer info", e))?;
        Ok(info.num_ack_pending)
    }

    async fn state_get(&self, key: &str) -> Result<Option<Versioned>, EngineError> {
        let store = self.state_store().await?;
        let entry = store.entry(key).await.map_err(|e| err("reading state", e))?;
        Ok(entry
            .filter(|e| e.operation == jetstream::kv::Operation::Put)
            .map(|e| Versioned { value: e.value.to_vec(), revision: e.revision }))
    }

    async fn state_update(&self, key: &str, value: Vec<u8>, revision: Option<u64>) -> Result<Option<u64>, EngineError> {
        let store = self.state_store().await?;
        let result = match revision {
            Some(r) => store.update(key, value.into(), r).await.map_err(|e| {
                if e.kind() == jetstream::kv::UpdateErrorKind::WrongLastRevision {
                    None
                } else {
                    Some(err("writing state", e))
                }
            }),
            None => store.create(key, value.into()).await.map_err(|e| {
                if e.kind() == jetstream::kv::CreateErrorKind::AlreadyExists {
                    None
                } else {
                    Some(err("writing state", e))
                }
            }),
        };
        match result {
            Ok(rev) => Ok(Some(rev)),
            Err(None) => Ok(None),
            Err(Some(e)) => Err(e),
        }
    }

    fn ready(&self) -> bool {
        self.is_connected()
    }

    async fn lag(&self, destination: &str) -> Result<(u64, usize), EngineError> {
        self.consumer_lag(destination).await
    }
}

/// The consumer of partition `partition` of `destination`.
pub fn partition_consumer_name(destination: &str, partition: u32) -> String {
    format!("{}_p{partition}", consumer_name(destination))
}
