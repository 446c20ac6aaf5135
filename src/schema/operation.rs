//! `Operation`: the compiled field schema of one provider operation.

use super::field::Field;
use super::raw::{Completion, Role};
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct Operation {
    pub provider: String,
    pub name: String,
    pub summary: String,
    pub doc: String,
    pub role: Role,
    pub completion: Completion,
    /// Payout operations: the amount and currency paths.
    pub money: Option<(String, String)>,
    /// The payload path that must carry the item's idempotency key.
    pub idempotency: Option<String>,
    /// Groups of paths of which at least one must be present.
    pub any_of: Vec<Vec<String>>,
    pub fields: Vec<Field>,
    /// Where the request goes (providers with one URL per operation).
    pub request: Option<super::raw::RawRequest>,
    /// The field payrun fills with its notification URL.
    pub notification_url: Option<String>,
    /// The operation that settles a request of this one whose answer was lost.
    pub lookup: Option<String>,
    /// How an in-doubt request of this operation is settled (schema `settle:`, or its default).
    pub settle: super::raw::Settle,
    by_path: HashMap<String, usize>,
    /// The schema file this came from and its SHA-256, for plan fingerprints.
    pub file: String,
    pub sha256: String,
}

impl Operation {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        provider: String,
        name: String,
        summary: String,
        doc: String,
        role: Role,
        completion: Completion,
        money: Option<(String, String)>,
        idempotency: Option<String>,
        any_of: Vec<Vec<String>>,
        fields: Vec<Field>,
        file: String,
        sha256: String,
    ) -> Operation {
        let by_path = fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.path.clone(), i))
            .collect();
        Operation {
            provider,
            name,
            summary,
            doc,
            role,
            completion,
            money,
            idempotency,
            any_of,
            fields,
            request: None,
            notification_url: None,
            lookup: None,
            settle: if role == Role::Payout {
                super::raw::Settle::Lookup
            } else {
                super::raw::Settle::Resend
            },
            by_path,
            file,
            sha256,
        }
    }

    pub fn field(&self, path: &str) -> Option<&Field> {
        self.by_path.get(path).map(|&i| &self.fields[i])
    }

    pub fn field_index(&self, path: &str) -> Option<usize> {
        self.by_path.get(path).copied()
    }

    /// True when `path` is an object that contains schema fields (e.g. `to` for `to.amount`).
    pub fn is_object_path(&self, path: &str) -> bool {
        let prefix = format!("{path}.");
        self.fields.iter().any(|f| f.path.starts_with(&prefix))
    }

    /// The known path closest to `path`, for "did you mean" hints.
    pub fn closest_path(&self, path: &str) -> Option<&str> {
        self.fields
            .iter()
            .map(|f| {
                (
                    crate::text::edit_distance(&f.path.to_lowercase(), &path.to_lowercase()),
                    f.path.as_str(),
                )
            })
            .filter(|(d, p)| *d <= 3.max(p.len() / 4))
            .min_by_key(|(d, _)| *d)
            .map(|(_, p)| p)
    }
}
