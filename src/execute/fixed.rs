//! A batch's items are fixed when it starts. The first commit of a batch's store holds, for
//! every item in source order, 32 bytes: a hash of its id, a digest of its content and its line;
//! and a digest of what the manifest makes of every item (flow, defaults, preflight). A later
//! `run` or `resume` compares the *whole* source with them before anything is sent: a row that
//! changed, appeared, disappeared or moved since the batch started is named with its file and
//! line and the run is refused. Comparing only the items already touched once let a resume pay
//! an unsent row whose amount had been edited, and a row added after the start.
//!
//! 32 bytes per item is the memory this costs (a million items: 32 MB), never a copy of the
//! source.

use super::runner::PlannedItem;
use sha2::{Digest, Sha256};

/// Bytes per item.
pub const ENTRY: usize = 32;

/// An item's fixed entry: SHA-256 of its id (16 bytes), its content digest (first 12 bytes of
/// `plan::content_digest`), its line (u32, little-endian).
pub fn entry(id: &str, digest: &crate::wire::Id128, line: u64) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[..16].copy_from_slice(&Sha256::digest(id.as_bytes())[..16]);
    let digest = Sha256::digest(digest.text().as_bytes());
    e[16..28].copy_from_slice(&digest[..12]);
    e[28..].copy_from_slice(&(line.min(u32::MAX as u64) as u32).to_le_bytes());
    e
}

/// The fixed entries of `items`, in their order.
pub fn entries(items: &[PlannedItem]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.len() * ENTRY);
    for it in items {
        out.extend_from_slice(&entry(&it.id, &it.digest, it.line));
    }
    out
}

/// How the source differs from what the batch started with.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// (id, line now): same id, other content.
    pub changed: Vec<(String, u64)>,
    /// (id, line now): not in the batch when it started.
    pub added: Vec<(String, u64)>,
    /// Line it had when the batch started (the id is not in the source any more, and the store
    /// keeps only a hash of it).
    pub removed: Vec<u64>,
    /// (id, line then, line now): same content at another place in the batch.
    pub moved: Vec<(String, u64, u64)>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
            && self.added.is_empty()
            && self.removed.is_empty()
            && self.moved.is_empty()
    }
}

fn line_of(e: &[u8]) -> u64 {
    u32::from_le_bytes([e[28], e[29], e[30], e[31]]) as u64
}

/// Compares the source as it is now with the entries fixed when the batch started.
pub fn compare(fixed: &[u8], items: &[PlannedItem]) -> Drift {
    let now_len = items.len();
    // The common case costs no memory: every entry equal at its place.
    let same_place = |i: usize| -> bool {
        let e = entry(&items[i].id, &items[i].digest, items[i].line);
        fixed.get(i * ENTRY..(i + 1) * ENTRY) == Some(&e[..])
    };
    if fixed.len() == now_len * ENTRY && (0..now_len).all(same_place) {
        return Drift::default();
    }
    // Otherwise match by id hash: (id hash, index) sorted on each side.
    let then: Vec<&[u8]> = fixed.chunks_exact(ENTRY).collect();
    let now: Vec<[u8; ENTRY]> = items
        .iter()
        .map(|it| entry(&it.id, &it.digest, it.line))
        .collect();
    let mut a: Vec<usize> = (0..then.len()).collect();
    a.sort_unstable_by(|&x, &y| then[x][..16].cmp(&then[y][..16]));
    let mut b: Vec<usize> = (0..now.len()).collect();
    b.sort_unstable_by(|&x, &y| now[x][..16].cmp(&now[y][..16]));
    let mut d = Drift::default();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let ord = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) => then[x][..16].cmp(&now[y][..16]),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                d.removed.push(line_of(then[a[i]]));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let it = &items[b[j]];
                d.added.push((it.id.clone(), it.line));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (a[i], b[j]);
                let it = &items[y];
                if then[x][16..28] != now[y][16..28] {
                    d.changed.push((it.id.clone(), it.line));
                } else if x != y {
                    d.moved.push((it.id.clone(), line_of(then[x]), it.line));
                }
                i += 1;
                j += 1;
            }
        }
    }
    d.changed.sort_by_key(|c| c.1);
    d.added.sort_by_key(|c| c.1);
    d.removed.sort_unstable();
    d.moved.sort_by_key(|c| c.2);
    d
}

/// A digest of what the manifest makes of every item: provider, flow (operations, payloads,
/// delays, branches), defaults and preflight. Limits, retries and notifications may change
/// between runs of a batch; these may not, or unsent items would be sent otherwise than the
/// batch started with.
pub fn flow_digest(m: &crate::manifest::Manifest) -> String {
    fn node(h: &mut Sha256, n: &crate::manifest::Node) {
        h.update(n.tree_path.as_bytes());
        h.update([0x1f]);
        h.update(n.op.as_bytes());
        h.update([0x1f]);
        h.update(n.delay.map_or(0, |d| d.as_millis()).to_le_bytes());
        h.update(serde_json::to_vec(&n.payload).unwrap_or_default());
        h.update([0x1e]);
        for c in n.success.iter().chain(&n.fail).chain(&n.always) {
            node(h, c);
        }
    }
    let mut h = Sha256::new();
    h.update(b"payrun/flow/v1\x1f");
    h.update(m.provider.as_bytes());
    h.update([0x1e]);
    for n in &m.flow {
        node(&mut h, n);
    }
    h.update(b"defaults\x1e");
    h.update(serde_json::to_vec(&m.defaults).unwrap_or_default());
    h.update(b"preflight\x1e");
    for n in &m.preflight {
        node(&mut h, n);
    }
    crate::keys::hex_lower(&h.finalize()[..16])
}

/// The error `run` prints for a drifted source (at most `shown` lines of each kind).
pub fn describe(d: &Drift, file: &str, batch: &str, shown: usize) -> Vec<String> {
    let mut out = vec![format!(
        "error[run.changed-items]: the items of batch {batch} differ from when it started ({} changed, {} added, {} removed, {} moved); nothing was sent",
        d.changed.len(),
        d.added.len(),
        d.removed.len(),
        d.moved.len()
    )];
    let more = |n: usize| (n > shown).then(|| format!("  … and {} more", n - shown));
    for (id, line) in d.changed.iter().take(shown) {
        out.push(format!(
            "  {file}:{line}: item {id} changed since the batch started"
        ));
    }
    out.extend(more(d.changed.len()));
    for (id, line) in d.added.iter().take(shown) {
        out.push(format!(
            "  {file}:{line}: item {id} was not in the batch when it started"
        ));
    }
    out.extend(more(d.added.len()));
    for line in d.removed.iter().take(shown) {
        out.push(format!(
            "  {file}:{line}: the item on this line when the batch started is gone"
        ));
    }
    out.extend(more(d.removed.len()));
    for (id, then, now) in d.moved.iter().take(shown) {
        out.push(format!(
            "  {file}:{now}: item {id} moved here from line {then}"
        ));
    }
    out.extend(more(d.moved.len()));
    out.push(format!(
        "  hint: a started batch runs the items it started with. Restore {file} as it was to continue; put new or corrected rows in a new batch (a new `batch:` id) — a correction of a row already paid is a new payment, not an edit"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, digest: &str, line: u64) -> PlannedItem {
        PlannedItem {
            id: id.into(),
            key: format!("k-{id}").into(),
            digest: digest.into(),
            line,
            index: 0,
            offset: 0,
            money: Default::default(),
        }
    }

    fn batch() -> Vec<PlannedItem> {
        (0..5)
            .map(|i| item(&format!("E{i}"), &format!("d{i}"), i + 2))
            .collect()
    }

    #[test]
    fn the_same_source_has_not_drifted() {
        let items = batch();
        assert!(compare(&entries(&items), &items).is_empty());
        assert_eq!(entries(&items).len(), 5 * ENTRY);
    }

    #[test]
    fn an_unsent_row_with_another_amount_is_changed() {
        let fixed = entries(&batch());
        let mut items = batch();
        items[3].digest = "other".into();
        let d = compare(&fixed, &items);
        assert_eq!(d.changed, vec![("E3".to_string(), 5)]);
        assert!(d.added.is_empty() && d.removed.is_empty() && d.moved.is_empty());
    }

    #[test]
    fn a_row_added_at_the_end_or_in_the_middle_is_added_and_nothing_else_is_blamed() {
        let fixed = entries(&batch());
        let mut items = batch();
        items.push(item("NEW", "dn", 7));
        let d = compare(&fixed, &items);
        assert_eq!(d.added, vec![("NEW".to_string(), 7)]);
        assert!(d.changed.is_empty() && d.removed.is_empty() && d.moved.is_empty());
        // In the middle: the rows after it moved down a line, and are said to have moved.
        let mut items = batch();
        items.insert(1, item("NEW", "dn", 3));
        let d = compare(&fixed, &items);
        assert_eq!(d.added, vec![("NEW".to_string(), 3)]);
        assert_eq!(d.moved.len(), 4);
    }

    #[test]
    fn a_removed_row_is_named_by_its_line_when_the_batch_started() {
        let fixed = entries(&batch());
        let mut items = batch();
        items.remove(4);
        let d = compare(&fixed, &items);
        assert_eq!(d.removed, vec![6]);
        assert!(d.changed.is_empty() && d.added.is_empty() && d.moved.is_empty());
    }

    #[test]
    fn swapped_rows_are_moved() {
        let fixed = entries(&batch());
        let mut items = batch();
        items.swap(0, 1);
        let d = compare(&fixed, &items);
        assert_eq!(d.moved.len(), 2);
        assert!(!d.is_empty());
    }

    #[test]
    fn the_error_names_file_and_line_and_says_how_to_go_on() {
        let d = Drift {
            changed: vec![("E3".into(), 5)],
            added: vec![("NEW".into(), 2002)],
            removed: vec![9],
            moved: vec![],
        };
        let text = describe(&d, "employees.csv", "b1", 20).join("\n");
        assert!(text.contains("employees.csv:5: item E3 changed"), "{text}");
        assert!(text.contains("employees.csv:2002: item NEW was not in the batch"));
        assert!(text.contains("employees.csv:9: the item on this line"));
        assert!(text.contains("new batch"));
    }
}
