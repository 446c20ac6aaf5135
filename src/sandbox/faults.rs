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
