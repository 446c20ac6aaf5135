//! Retry delays: the manifest's policy per error class turned into the n-th delay, computed by
//! `backon`'s exponential builder without jitter, so that a schedule is a pure function of the
//! attempt number (the state machine stores due times, and a resumed run computes the same).

use crate::manifest::{Backoff, RetryPolicy};
use backon::BackoffBuilder;
use std::time::Duration;

pub use crate::wire::ErrorClass;

impl RetryPolicy {
    pub fn for_class(&self, class: ErrorClass) -> &Backoff {
        match class {
            ErrorClass::RateLimited => &self.rate_limited,
            ErrorClass::ServerError => &self.server_error,
            ErrorClass::Network => &self.network,
        }
    }
}

/// The delay before attempt `attempt + 1` after `attempt` failed (attempts count from 1), or
/// `None` when the policy allows no more attempts. A provider's Retry-After is a floor.
pub fn delay(b: &Backoff, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
    if attempt >= b.max_attempts {
        return None;
    }
    let mut it = backon::ExponentialBuilder::default()
        .with_min_delay(b.initial_interval)
        .with_factor(b.factor as f32)
        .with_max_delay(b.max_interval)
        .with_max_times(b.max_attempts as usize)
        .build();
    let d = it.nth(attempt as usize - 1)?;
    Some(retry_after.map_or(d, |r| r.max(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Backoff {
        Backoff {
            initial_interval: Duration::from_secs(1),
            factor: 2.0,
            max_interval: Duration::from_secs(10),
            max_attempts: 6,
        }
    }

    #[test]
    fn delays_grow_by_the_factor_up_to_the_cap() {
        let d: Vec<u64> = (1..6)
            .map(|a| delay(&policy(), a, None).unwrap().as_secs())
            .collect();
        assert_eq!(d, [1, 2, 4, 8, 10]);
    }

    #[test]
    fn no_delay_after_the_last_attempt() {
        assert_eq!(delay(&policy(), 6, None), None);
        assert_eq!(
            delay(
                &Backoff {
                    max_attempts: 1,
                    ..policy()
                },
                1,
                None
            ),
            None
        );
    }

    #[test]
    fn retry_after_is_a_floor() {
        assert_eq!(
            delay(&policy(), 1, Some(Duration::from_secs(30))),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            delay(&policy(), 4, Some(Duration::from_millis(10))),
            Some(Duration::from_secs(8))
        );
    }
}
