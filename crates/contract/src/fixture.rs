//! What a contract case runs against: a fresh adapter, the server capabilities it lacks, and what
//! must outlive the case or run after it.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

/// A server feature some cases rest on and not every server has. A case that needs one the fixture
/// lacks prints a visible `SKIPPED` line naming the case and the reason; every other case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// A second write of the same (stream, sequence) is refused (a unique index), so racing appends
    /// conflict.
    UniqueIndex,
    /// Offsets are looked up faithfully: a partition's high watermark, and by timestamp.
    OffsetLookup,
}

/// A fresh adapter of port `P` for one contract case.
pub struct Fixture<P: ?Sized> {
    port: Arc<P>,
    topic: String,
    dead_letters: String,
    group: String,
    lacking: Vec<(Capability, String)>,
    keep: Vec<Box<dyn Any + Send + Sync>>,
    after: Vec<BoxFuture<'static, ()>>,
}

impl<P: ?Sized> std::fmt::Debug for Fixture<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture").field("topic", &self.topic).field("lacking", &self.lacking).finish_non_exhaustive()
    }
}

impl<P: ?Sized> Fixture<P> {
    pub fn new(port: Arc<P>) -> Self {
        Self {
            port,
            topic: String::new(),
            dead_letters: String::new(),
            group: crate::unique_name("group"),
            lacking: Vec::new(),
            keep: Vec::new(),
            after: Vec::new(),
        }
    }

    /// Bus fixtures: a topic with two partitions or more and a dead-letter topic, both unused by
    /// other cases.
    pub fn with_topics(mut self, topic: impl Into<String>, dead_letters: impl Into<String>) -> Self {
        self.topic = topic.into();
        self.dead_letters = dead_letters.into();
        self
    }

    /// Keeps `value` (a temporary directory, a server guard) alive until the case is over.
    pub fn keeping(mut self, value: impl Any + Send + Sync) -> Self {
        self.keep.push(Box::new(value));
        self
    }

    /// The server behind this adapter lacks `capability`, for the reason given.
    pub fn lacking(mut self, capability: Capability, why: impl Into<String>) -> Self {
        self.lacking.push((capability, why.into()));
        self
    }

    /// Runs `then` after the case passed: clean-up (drop a test database) or checks of the adapter's
    /// own (a cache that must not have fallen back).
    pub fn then(mut self, then: impl Future<Output = ()> + Send + 'static) -> Self {
        self.after.push(Box::pin(then));
        self
    }

    pub fn port(&self) -> &P {
        &self.port
    }

    pub fn shared(&self) -> Arc<P> {
        self.port.clone()
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn dead_letters(&self) -> &str {
        &self.dead_letters
    }

    /// A consumer group no other case uses.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Whether `case` must be skipped: it needs a capability this fixture lacks (printed).
    #[doc(hidden)]
    pub fn skips(&self, case: &str, needs: &[Capability]) -> bool {
        match self.lacking.iter().find(|(c, _)| needs.contains(c)) {
            Some((_, why)) => {
                eprintln!("SKIPPED ({case}: {why})");
                true
            }
            None => false,
        }
    }

    #[doc(hidden)]
    pub async fn finish(self) {
        for then in self.after {
            then.await;
        }
    }
}
