//! The front half of every command: manifest → provider schemas → item source header →
//! compiled flow. Each stage's failure carries its diagnostics and the exit code it deserves
//! (1: the batch or manifest is invalid; 2: a file could not be read).

use crate::compile::{self, Flow};
use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::manifest::Manifest;
use crate::schema::Registry;
use crate::validate::source::{OpenError, Source};
use std::path::Path;

/// A failure before any row was read.
#[derive(Debug)]
pub struct Failure {
    pub exit_code: i32,
    pub diagnostics: Vec<Diagnostic>,
    /// The manifest text, when there is one, to show offending lines.
    pub manifest: Option<(String, String)>,
}

impl Failure {
    /// A file could not be read or written (exit 2).
    pub fn io(d: Diagnostic) -> Failure {
        Failure {
            exit_code: 2,
            diagnostics: vec![d],
            manifest: None,
        }
    }

    fn invalid(d: Diagnostics, m: Option<&Manifest>) -> Failure {
        Failure {
            exit_code: 1,
            diagnostics: d.0,
            manifest: m.map(|m| (m.display.clone(), m.text.clone())),
        }
    }
}

/// A batch ready to be validated: its flow and its item source, positioned after the header.
pub struct Prepared {
    pub flow: Flow,
    pub source: Source,
}

pub fn prepare(manifest_path: &Path, registry: &Registry) -> Result<Prepared, Failure> {
    let manifest = Manifest::load(manifest_path).map_err(|d| {
        let io =
            d.0.iter()
                .any(|x| crate::manifest::UNREADABLE_RULES.contains(&x.rule.as_str()));
        // Read again only a manifest that was read once (never a FIFO, a device or a huge file).
        let text = (!io)
            .then(|| crate::input_file::read_capped(manifest_path, crate::manifest::MAX_BYTES))
            .and_then(Result::ok)
            .and_then(|b| String::from_utf8(b).ok());
        Failure {
            exit_code: if io { 2 } else { 1 },
            diagnostics: d.0,
            manifest: text.map(|t| (manifest_path.display().to_string(), t)),
        }
    })?;
    let provider = registry.provider(&manifest.provider).map_err(|mut d| {
        // An unknown provider is a mistake in the manifest: point at it.
        for x in &mut d.0 {
            if x.rule == "schema.provider-unknown" {
                x.file = manifest.display.clone();
                let pos = crate::yaml::locate(&manifest.text, &[crate::yaml::key("provider")]);
                x.line = pos.map(|p| p.0);
                x.column = pos.map(|p| p.1);
                x.rule = "manifest.provider".into();
            }
        }
        Failure::invalid(d, Some(&manifest))
    })?;
    let (source, row_fields) = Source::open(&manifest).map_err(|e| match e {
        OpenError::Io(d) => Failure {
            exit_code: 2,
            diagnostics: vec![d],
            manifest: None,
        },
        OpenError::Invalid(d) => Failure::invalid(d, Some(&manifest)),
    })?;
    tracing::debug!(provider = %provider.name, operations = provider.operations.len(), fields = row_fields.len(), "schemas loaded and source opened");
    let flow = compile::compile(&manifest, &provider, &row_fields)
        .map_err(|d| Failure::invalid(d, Some(&manifest)))?;
    Ok(Prepared { flow, source })
}
