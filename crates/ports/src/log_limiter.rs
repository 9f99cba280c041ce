use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets through at most one log line per interval for a condition that may repeat on every request
/// (Redis down), and counts the ones held back so the next line can say how many there were.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(interval: Duration) -> Self {
        Self { interval, state: Mutex::default() }
    }

    /// Records an occurrence at `now`. `Some(n)` = log it, mentioning the `n` occurrences held back since
    /// the last line; `None` = stay quiet.
    pub fn occurred(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = state.last_logged.is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if due {
            state.last_logged = Some(now);
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_occurrence_then_once_per_interval_with_the_count_held_back() {
        let limiter = LogLimiter::new(Duration::from_secs(30));
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(limiter.occurred(at(0)), Some(0));
        assert_eq!(limiter.occurred(at(1)), None);
        assert_eq!(limiter.occurred(at(29)), None);
        assert_eq!(limiter.occurred(at(30)), Some(2));
        assert_eq!(limiter.occurred(at(31)), None);
        assert_eq!(limiter.occurred(at(59)), None);
        assert_eq!(limiter.occurred(at(60)), Some(2));
        // A quiet spell: the next occurrence is logged at once, with nothing held back.
        assert_eq!(limiter.occurred(at(500)), Some(0));
    }

    #[test]
    fn an_occurrence_seen_out_of_order_is_not_logged_twice() {
        let limiter = LogLimiter::new(Duration::from_secs(30));
        let start = Instant::now() + Duration::from_secs(100);
        assert_eq!(limiter.occurred(start), Some(0));
        // A racing caller read its clock a moment before the one that logged.
        assert_eq!(limiter.occurred(start - Duration::from_millis(5)), None);
    }
}
