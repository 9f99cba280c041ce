//! Topics as code: `ridehail topics apply` creates Ridehail's topics with the configured partition
//! counts; running it again changes nothing. (Services check their topics at start-up with
//! `ridehail_ports::Backend::require_topics`.)

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;

use ridehail_ports::{TopicReport, TopicState};

use crate::KafkaSettings;

pub(crate) fn partition_count(metadata: &Metadata, physical: &str) -> Option<u32> {
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == physical && t.error().is_none())
        .map(|t| t.partitions().len() as u32)
        .filter(|n| *n > 0)
}

/// Creates every topic in `topics` (logical names) that is missing; reports each one's state.
pub async fn apply_topics(settings: &KafkaSettings, topics: &[&str]) -> anyhow::Result<Vec<TopicReport>> {
    settings.validate()?;
    let admin: AdminClient<DefaultClientContext> =
        crate::client_config(settings, &format!("{}-admin", settings.client_id), &[], &[])
            .create()
            .context("Kafka admin client")?;
    let wanted: Vec<(String, u32)> = topics.iter().map(|t| (settings.physical(t), settings.partitions_of(t))).collect();
    let new_topics: Vec<NewTopic<'_>> = wanted
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions as i32, TopicReplication::Fixed(settings.replication_factor))
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new_topics, &options).await.context("creating topics")?;
    let mut created = std::collections::HashSet::new();
    for result in results {
        match result {
            Ok(name) => {
                created.insert(name);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    let metadata = tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, Duration::from_secs(10)))
        .await?
        .context("reading topic metadata")?;
    let mut reports = Vec::new();
    for (name, partitions) in wanted {
        let state = if created.contains(&name) {
            TopicState::Created
        } else {
            match partition_count(&metadata, &name) {
                Some(actual) if actual == partitions => TopicState::Unchanged,
                Some(actual) => TopicState::PartitionMismatch { actual },
                None => anyhow::bail!("topic {name} neither created nor found"),
            }
        };
        reports.push(TopicReport { topic: name, partitions, state });
    }
    Ok(reports)
}
