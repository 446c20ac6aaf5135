//! Deterministic idempotency keys.
//!
//! An item's key is derived from the batch id and the item id only, so re-planning or resuming
//! the same batch always produces the same keys, and a provider that already saw a key (Paysend's
//! `invoiceId`, `header.request.id`) recognises the retry. Keys are SHA-256 based and shaped as
//! RFC 9562 version-8 (custom) UUIDs because every provider accepts a UUID where it takes an id.
//! Task keys add the task's place in the tree, so the tasks of one item never share a key.

use sha2::{Digest, Sha256};

const DOMAIN: &[u8] = b"payrun/idempotency/v1";

/// The key of one item of a batch.
pub fn item_key(batch: &str, item_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update([0x1f]);
    h.update(batch.as_bytes());
    h.update([0x1f]);
    h.update(item_id.as_bytes());
    uuid_v8(&h.finalize())
}

/// The key of one task of an item's tree; `node` is the task's stable path in the flow
/// template (e.g. `0.success.1`).
pub fn task_key(item_key: &str, node: &str) -> String {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update([0x1e]);
    h.update(item_key.as_bytes());
    h.update([0x1f]);
    h.update(node.as_bytes());
    uuid_v8(&h.finalize())
}

/// The key of an item's attempt `n` (`run --retry-failed`): attempt 1 is the item key itself,
/// every later attempt a key of its own derived from it, so the provider sees a new payment.
pub fn attempt_key(item_key: &str, n: u32) -> String {
    if n <= 1 {
        item_key.to_string()
    } else {
        task_key(item_key, &format!("attempt/{n}"))
    }
}

/// A key as the provider takes it: the UUID itself, or its 32 hex digits.
pub fn on_wire(key: &str, format: crate::schema::KeyFormat) -> String {
    match format {
        crate::schema::KeyFormat::Uuid => key.to_string(),
        crate::schema::KeyFormat::Hex | crate::schema::KeyFormat::Keyed => key.replace('-', ""),
    }
}

/// Where an item's idempotency key stands in a request of a provider with `keys: keyed`: the
/// value is only known to the run (it needs the batch's secret), so plans show this and the
/// adapter fills it in when it sends.
pub const KEYED: &str = "${keyed_idempotency_key}";

/// An item's idempotency key as a request carries it (`${idempotency_key}`): see `on_wire`;
/// for `keys: keyed`, the `KEYED` placeholder.
pub fn idempotency_on_wire(key: &str, format: crate::schema::KeyFormat) -> String {
    match format {
        crate::schema::KeyFormat::Keyed => KEYED.to_string(),
        other => on_wire(key, other),
    }
}

/// The key a provider without signatures or idempotency sees (Payonic's `note`): HMAC-SHA256
/// of the item key under the batch's secret, as 32 hex digits. Knowing the batch and the item
/// ids is not enough to compute it; the same secret gives the same value on every resume.
pub fn keyed(secret: &[u8], key: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&k, key.as_bytes());
    hex_lower(&tag.as_ref()[..16])
}

/// Lower-case hex, table driven (the `hex` crate's iterator is slow on hot paths).
pub fn hex_lower(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0x0f)]);
    }
    String::from_utf8(out).expect("hex is ASCII")
}

fn uuid_v8(digest: &[u8]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 9562 variant
    // Hand-rolled hex: keys are made a few million times per plan of a large batch.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut o = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        out[o] = HEX[usize::from(byte >> 4)];
        out[o + 1] = HEX[usize::from(byte & 0x0f)];
        o += 2;
    }
    String::from_utf8(out.to_vec()).expect("hex is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_batch_and_item_always_give_the_same_key() {
        assert_eq!(
            item_key("payroll-2026-11", "E001"),
            item_key("payroll-2026-11", "E001")
        );
        assert_eq!(
            item_key("payroll-2026-11", "E001"),
            "a6036f00-58d4-8bdc-b97b-b5afb1e46f7b",
            "keys must never change: resumed batches depend on them"
        );
    }

    #[test]
    fn keys_differ_across_batches_items_and_tasks() {
        let k = item_key("b", "1");
        assert_ne!(k, item_key("b", "2"));
        assert_ne!(k, item_key("c", "1"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(item_key("ab", "c"), item_key("a", "bc"));
        assert_ne!(task_key(&k, "0"), task_key(&k, "0.success.0"));
    }

    #[test]
    fn keys_are_version_8_uuids() {
        let k = item_key("b", "1");
        assert_eq!(k.len(), 36);
        assert_eq!(&k[14..15], "8");
        assert!(matches!(&k[19..20], "8" | "9" | "a" | "b"));
    }
}
