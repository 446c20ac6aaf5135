//! Plan fingerprints: one SHA-256 over every input a plan was made from — the manifest, the item
//! source file, and the schema files the flow uses — plus each input's own hash, so that `run`
//! can refuse a stale plan and say which input changed.

use crate::compile::Flow;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub sha256: String,
    pub inputs: Vec<Input>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    /// `manifest`, `source` or `schema`.
    pub kind: String,
    pub path: String,
    pub sha256: String,
}

impl Fingerprint {
    /// `source_sha` is the CSV file's hash (computed while it was read); inline items are part of
    /// the manifest.
    pub fn of(flow: &Flow, source_sha: Option<&str>) -> Fingerprint {
        let m = &flow.manifest;
        let manifest_bytes = crate::input_file::read_capped(&m.path, crate::manifest::MAX_BYTES)
            .unwrap_or_else(|_| m.text.as_bytes().to_vec());
        let mut inputs = vec![Input {
            kind: "manifest".into(),
            path: m.display.clone(),
            sha256: crate::keys::hex_lower(&Sha256::digest(&manifest_bytes)),
        }];
        if let (crate::manifest::Items::Csv(src), Some(sha)) = (&m.items, source_sha) {
            inputs.push(Input {
                kind: "source".into(),
                path: src.display.clone(),
                sha256: sha.to_string(),
            });
        }
        for (path, sha) in flow.schema_files() {
            inputs.push(Input {
                kind: "schema".into(),
                path,
                sha256: sha,
            });
        }
        Fingerprint::over(inputs)
    }

    pub fn over(inputs: Vec<Input>) -> Fingerprint {
        let mut h = Sha256::new();
        h.update(b"payrun-plan-fingerprint/1\n");
        for i in &inputs {
            // Paths are not hashed: moving a batch folder does not make its plan stale.
            h.update(i.kind.as_bytes());
            h.update([0x1f]);
            h.update(i.sha256.as_bytes());
            h.update([0x1e]);
        }
        Fingerprint {
            sha256: crate::keys::hex_lower(&h.finalize()),
            inputs,
        }
    }

    /// What differs between the plan's inputs (`self`) and the current ones, in words.
    pub fn changes(&self, now: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        for old in &self.inputs {
            match now
                .inputs
                .iter()
                .find(|n| n.kind == old.kind && n.path == old.path)
            {
                Some(n) if n.sha256 != old.sha256 => {
                    out.push(format!("{} {} changed", old.kind, old.path))
                }
                Some(_) => {}
                None => out.push(format!("{} {} is no longer used", old.kind, old.path)),
            }
        }
        for n in &now.inputs {
            if !self
                .inputs
                .iter()
                .any(|o| o.kind == n.kind && o.path == n.path)
            {
                out.push(format!("{} {} is new", n.kind, n.path));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(kind: &str, path: &str, sha: &str) -> Input {
        Input {
            kind: kind.into(),
            path: path.into(),
            sha256: sha.into(),
        }
    }

    #[test]
    fn a_changed_source_changes_the_fingerprint_and_is_named() {
        let a = Fingerprint::over(vec![
            input("manifest", "m.yaml", "aa"),
            input("source", "e.csv", "bb"),
        ]);
        let b = Fingerprint::over(vec![
            input("manifest", "m.yaml", "aa"),
            input("source", "e.csv", "cc"),
        ]);
        assert_ne!(a.sha256, b.sha256);
        assert_eq!(a.changes(&b), vec!["source e.csv changed"]);
        assert!(a.changes(&a).is_empty());
    }

    #[test]
    fn the_same_inputs_give_the_same_fingerprint() {
        let a = Fingerprint::over(vec![input("manifest", "m.yaml", "aa")]);
        let b = Fingerprint::over(vec![input("manifest", "elsewhere/m.yaml", "aa")]);
        assert_eq!(a.sha256, b.sha256);
    }
}
