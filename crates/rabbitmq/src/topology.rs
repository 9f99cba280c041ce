//! Topology as code: `ridehail topics apply` declares each topic's exchange and partition streams,
//! binds them, and writes the partition count to the topic's meta stream (`{topic}.partitions`);
//! running it again changes nothing. Consumer groups declare their own lease queues when
//! they subscribe (see the crate documentation).

use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ExchangeKind};
use ridehail_ports::{TopicReport, TopicState};

use crate::{RabbitMqSettings, count_partitions, long_string, meta_name, stream_name, unavailable};

/// How long a stream keeps its records (RabbitMQ deletes whole segments older than this): a week,
/// as Kafka's default retention.
const RETENTION: &str = "7D";

/// Declares every topic in `topics` (logical names) that is missing; reports each one's state.
pub async fn apply_topics(settings: &RabbitMqSettings, topics: &[&str]) -> anyhow::Result<Vec<TopicReport>> {
    settings.validate()?;
    let connection = crate::connect(settings, "ridehail-topics-apply").await?;
    let mut reports = Vec::with_capacity(topics.len());
    for topic in topics {
        reports.push(apply_topic(&connection, settings, topic).await?);
    }
    let _ = connection.close(200, "applied".into()).await;
    Ok(reports)
}

async fn apply_topic(connection: &Connection, settings: &RabbitMqSettings, topic: &str) -> anyhow::Result<TopicReport> {
    let partitions = settings.partitions_of(topic);
    let exchange = settings.physical(topic);
    let existing = count_partitions(connection, settings, topic).await?;
    let report = |state| TopicReport { topic: exchange.clone(), partitions, state };
    if existing != 0 && existing != partitions {
        return Ok(report(TopicState::PartitionMismatch { actual: existing }));
    }
    let channel = connection.create_channel().await.map_err(unavailable("opening a channel"))?;
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    channel
        .exchange_declare(exchange.as_str().into(), ExchangeKind::Direct, durable, FieldTable::default())
        .await
        .map_err(unavailable("declaring the topic's exchange"))?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long_string("stream"));
    arguments.insert("x-max-age".into(), long_string(RETENTION));
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    // Declaring a stream again with the same arguments is a no-op, and binding again too (that also
    // mends a binding deleted by hand).
    for partition in 0..partitions {
        let stream = stream_name(settings, topic, partition);
        channel
            .queue_declare(stream.as_str().into(), durable, arguments.clone())
            .await
            .map_err(unavailable("declaring a partition stream"))?;
        channel
            .queue_bind(
                stream.as_str().into(),
                exchange.as_str().into(),
                partition.to_string().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable("binding a partition stream"))?;
    }
    if existing == 0 {
        // Last: the count makes the topic visible to producers and consumers once it is all there.
        let meta = meta_name(settings, topic);
        let mut meta_arguments = FieldTable::default();
        meta_arguments.insert("x-queue-type".into(), long_string("stream"));
        channel
            .queue_declare(meta.as_str().into(), durable, meta_arguments)
            .await
            .map_err(unavailable("declaring a topic's meta stream"))?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(unavailable("enabling confirms"))?;
        crate::put_in_queue(&channel, &meta, partitions.to_string().as_bytes(), "a topic's partition count").await?;
    }
    let _ = channel.close(200, "declared".into()).await;
    Ok(report(if existing == 0 { TopicState::Created } else { TopicState::Unchanged }))
}
