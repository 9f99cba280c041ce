//! Progress of long operator tasks (rebuild, replay): a bar with events/s and ETA on a terminal,
//! one JSON line every two seconds otherwise (for logs and scripts), and a final summary.

use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use ridehail_ports::projections::{Projection, RebuildState, RebuildSummary};
use ridehail_runtime::rebuild::Progress;

/// How often a progress line is written when stderr is not a terminal.
const LINE_INTERVAL: Duration = Duration::from_secs(2);

/// Counts positions of the event store towards its head.
pub struct Meter {
    task: String,
    bar: Option<ProgressBar>,
    started: Instant,
    /// Position when this run started (a resumed rebuild starts mid-way), and the last line written.
    first: Mutex<Option<u64>>,
    last_line: Mutex<Option<Instant>>,
}

impl Meter {
    pub fn new(task: impl Into<String>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {human_pos}/{human_len} events  {per_sec}  ETA {eta}  ({elapsed})",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        });
        let task = task.into();
        if let Some(bar) = &bar {
            bar.set_message(task.clone());
        }
        Self { task, bar, started: Instant::now(), first: Mutex::new(None), last_line: Mutex::new(None) }
    }

    /// At `position` of `head`.
    pub fn set(&self, position: u64, head: u64) {
        let first = *self.first.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(position);
        if let Some(bar) = &self.bar {
            bar.set_length(head);
            bar.set_position(position);
            return;
        }
        // The first line at once, then one per interval, and the last one.
        let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < LINE_INTERVAL) && position < head {
            return;
        }
        *last = Some(Instant::now());
        let seconds = self.started.elapsed().as_secs_f64();
        let rate = if seconds > 0.0 { (position - first) as f64 / seconds } else { 0.0 };
        let eta = (rate > 0.0).then(|| (head.saturating_sub(position) as f64 / rate).ceil() as u64);
        let line = serde_json::json!({
            "progress": self.task, "position": position, "head": head,
            "events_per_second": rate.round() as u64, "eta_seconds": eta,
        });
        eprintln!("{line}");
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Progress for Meter {
    fn started(&self, _: Projection, state: &RebuildState) {
        self.set(state.position, state.head_at_start.max(state.position));
    }

    fn advanced(&self, state: &RebuildState, head: u64) {
        self.set(state.position, head);
    }

    fn finished(&self, _: &RebuildSummary) {
        self.finish();
    }
}
