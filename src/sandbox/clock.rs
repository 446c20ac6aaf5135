//! Provider time: real time multiplied by the configured `time_scale`, so that the provider's
//! "wait 3 minutes" and "2-3 hours" windows can pass in milliseconds in tests.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Clock {
    start: Instant,
    scale: f64,
    /// Provider time when this clock started (non-zero when a state file continues it).
    offset: Duration,
}

impl Clock {
    pub fn new(scale: f64) -> Clock {
        Clock::resumed(scale, Duration::ZERO)
    }

    /// A clock whose provider time starts at `offset` (a sandbox continuing a state file).
    pub fn resumed(scale: f64, offset: Duration) -> Clock {
        Clock {
            start: Instant::now(),
            scale,
            offset,
        }
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Provider time: elapsed since the sandbox started (plus where a state file left it).
    pub fn now(&self) -> Duration {
        self.offset + self.start.elapsed().mul_f64(self.scale)
    }

    /// How long to really wait for `d` of provider time to pass.
    pub fn real(&self, d: Duration) -> Duration {
        d.div_f64(self.scale)
    }

    /// Wall-clock date of provider time `at`, as RFC 3339 (the sandbox's dates move as fast as
    /// its clock).
    pub fn date(&self, at: Duration) -> String {
        self.datetime(at)
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
    }

    /// Wall-clock time of provider time `at`.
    pub fn datetime(&self, at: Duration) -> chrono::DateTime<chrono::Utc> {
        let base = chrono::Utc::now() - chrono::Duration::from_std(self.now()).unwrap_or_default();
        base + chrono::Duration::from_std(at).unwrap_or_default()
    }
}
