//! Reproducible fault decisions. A decision is drawn from a generator seeded with the sandbox
//! seed, the request's own identity (e.g. Paysend's header.request.id) and how many times that
//! identity was seen, so the same run of a client meets the same faults whatever the timing of
//! concurrent requests.

use rand::{Rng, SeedableRng, rngs::StdRng};
use sha2::{Digest, Sha256};

/// A generator for one request.
pub fn rng(seed: u64, identity: &str, attempt: u64, purpose: &str) -> StdRng {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(identity.as_bytes());
    h.update([0x1f]);
    h.update(attempt.to_le_bytes());
    h.update(purpose.as_bytes());
    let d = h.finalize();
    let mut s = [0u8; 32];
    s.copy_from_slice(&d);
    StdRng::from_seed(s)
}

/// True with probability `rate`.
pub fn happens(rng: &mut StdRng, rate: f64) -> bool {
    rate > 0.0 && rng.random::<f64>() < rate
}

/// How one notification is delivered: each send is (real delay after the previous send, or
/// after now for the first; signed wrongly?).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delivery {
    /// None (dropped), one, or two (duplicated).
    pub sends: Vec<(std::time::Duration, bool)>,
    pub dropped: bool,
    pub delayed: bool,
    pub reordered: bool,
    pub duplicated: bool,
}

/// When to deliver one notification due after `due`, and whether to sign it wrongly: not at all
/// (dropped), once, or twice (duplicated); late by ten `step`s (delayed) or by half a step to
/// three (reordered: later notifications overtake it, but it never precedes its event).
pub fn delivery(
    rng: &mut StdRng,
    f: &crate::sandbox::Faults,
    due: std::time::Duration,
    step: std::time::Duration,
) -> Delivery {
    let mut d = Delivery::default();
    if happens(rng, f.webhook_drop_rate) {
        d.dropped = true;
        return d;
    }
    let mut at = due;
    if happens(rng, f.webhook_delay_rate) {
        d.delayed = true;
        at += step * 10;
    }
    if happens(rng, f.webhook_reorder_rate) {
        d.reordered = true;
        at += step.mul_f64(rng.random_range(0.5..3.0));
    }
    let bad = happens(rng, f.webhook_bad_signature_rate);
    d.sends.push((at, bad));
    if happens(rng, f.webhook_duplicate_rate) {
        d.duplicated = true;
        d.sends.push((step / 2, bad));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_identity_and_attempt_always_get_the_same_faults() {
        let a: Vec<bool> = (0..50)
            .map(|i| happens(&mut rng(7, &format!("req-{i}"), 0, "5xx"), 0.3))
            .collect();
        let b: Vec<bool> = (0..50)
            .map(|i| happens(&mut rng(7, &format!("req-{i}"), 0, "5xx"), 0.3))
            .collect();
        assert_eq!(a, b);
        let c: Vec<bool> = (0..50)
            .map(|i| happens(&mut rng(8, &format!("req-{i}"), 0, "5xx"), 0.3))
            .collect();
        assert_ne!(a, c, "another seed, other faults");
    }

    #[test]
    fn rates_are_observed_roughly() {
        let n = 2000;
        let hits = (0..n)
            .filter(|i| happens(&mut rng(1, &i.to_string(), 0, "x"), 0.2))
            .count();
        assert!((300..500).contains(&hits), "{hits} of {n} at 20%");
        assert_eq!(
            (0..n)
                .filter(|i| happens(&mut rng(1, &i.to_string(), 0, "x"), 0.0))
                .count(),
            0
        );
    }
}
