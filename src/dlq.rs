//! `ridehail dlq list|show|redrive|purge`: the dead letters on the configured bus
//! (`ridehail_runtime::dead_letters`; the same as the edge's `/admin/dead-letters`).

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use chrono::{DateTime, Utc};
use ridehail_ports::MessageBus;
use ridehail_runtime::dead_letters::{self, DeadLetterFilter};

/// Which dead letters (every option narrows).
#[derive(Debug, Clone, clap::Args)]
pub struct Selection {
    /// Exactly these (`partition:offset`, as `list` shows them).
    pub ids: Vec<String>,
    #[arg(long)]
    pub source_topic: Option<String>,
    /// A part of the reason (case-insensitive).
    #[arg(long)]
    pub reason: Option<String>,
    /// The record type (`ridehail-type`, e.g. `RequestRide`).
    #[arg(long = "type")]
    pub message_type: Option<String>,
    /// Dead-lettered at or after (RFC 3339).
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before (RFC 3339).
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
}

impl Selection {
    fn filter(&self, include_resolved: bool) -> DeadLetterFilter {
        DeadLetterFilter {
            ids: self.ids.clone(),
            source_topic: self.source_topic.clone(),
            reason: self.reason.clone(),
            message_type: self.message_type.clone(),
            since: self.since,
            until: self.until,
            include_resolved,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// The open dead letters (with `--all-states`, also those redriven or purged), one JSON per line.
    List {
        #[command(flatten)]
        selection: Selection,
        #[arg(long)]
        all_states: bool,
    },
    /// One dead letter with its original headers and payload, as JSON.
    Show { id: String },
    /// Publishes the selected open dead letters again to their source topics, as they were (same ids:
    /// a second redrive is harmless). Nothing selected needs `--all`.
    Redrive {
        #[command(flatten)]
        selection: Selection,
        #[arg(long)]
        all: bool,
    },
    /// Hides the selected open dead letters from listings (the bus's retention removes the bytes).
    /// Asks first on a terminal; `--yes` does not ask.
    Purge {
        #[command(flatten)]
        selection: Selection,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        yes: bool,
    },
}

/// A selection that acts on something: narrowed, or `all` said explicitly.
fn acting(selection: &Selection, all: bool) -> anyhow::Result<DeadLetterFilter> {
    let filter = selection.filter(false);
    anyhow::ensure!(filter.narrows() || all, "select dead letters (ids or a filter), or say --all");
    Ok(filter)
}

pub async fn run(bus: &dyn MessageBus, action: Action) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match action {
        Action::List { selection, all_states } => {
            for letter in dead_letters::list(bus, dead_letters::DEAD_LETTERS, &selection.filter(all_states)).await? {
                writeln!(out, "{}", serde_json::to_string(&letter)?)?;
            }
        }
        Action::Show { id } => {
            let filter =
                DeadLetterFilter { ids: vec![id.clone()], include_resolved: true, ..DeadLetterFilter::default() };
            let letter = dead_letters::list(bus, dead_letters::DEAD_LETTERS, &filter).await?.into_iter().next();
            let letter = letter.ok_or_else(|| anyhow::anyhow!("no dead letter {id}"))?;
            writeln!(out, "{}", serde_json::to_string_pretty(&letter)?)?;
        }
        Action::Redrive { selection, all } => {
            let done = dead_letters::redrive(bus, dead_letters::DEAD_LETTERS, &acting(&selection, all)?).await?;
            let ids: Vec<&str> = done.iter().map(|l| l.id.as_str()).collect();
            writeln!(out, "{}", serde_json::json!({"redriven": done.len(), "ids": ids}))?;
        }
        Action::Purge { selection, all, yes } => {
            let filter = acting(&selection, all)?;
            if !yes {
                let count = dead_letters::list(bus, dead_letters::DEAD_LETTERS, &filter).await?.len();
                anyhow::ensure!(
                    std::io::stdin().is_terminal(),
                    "purging {count} dead letters needs --yes (or answer on a terminal)"
                );
                eprint!("purge {count} dead letters? [y/N] ");
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                anyhow::ensure!(answer.trim().eq_ignore_ascii_case("y"), "not purged");
            }
            let done = dead_letters::purge(bus, dead_letters::DEAD_LETTERS, &filter).await?;
            let ids: Vec<&str> = done.iter().map(|l| l.id.as_str()).collect();
            writeln!(out, "{}", serde_json::json!({"purged": done.len(), "ids": ids}))?;
        }
    }
    Ok(())
}
