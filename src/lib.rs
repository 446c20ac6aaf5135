// Diagnostics are large by design (file, line, column, field, value, hint) and travel only on
// error paths, so returning them by value is fine.
#![allow(clippy::result_large_err)]

//! payrun: declarative batch payouts. The pipeline reads top to bottom:
//! manifest → schema → compile → validate → plan (→ execute, in a later stage).

#[macro_use]
pub mod out;

pub mod compile;
pub mod diagnostic;
pub mod execute;
pub mod input_file;
pub mod keys;
pub mod manifest;
pub mod mask;
pub mod money;
pub mod pipeline;
pub mod plan;
pub mod private;
pub mod providers;
pub mod sandbox;
pub mod schema;
pub mod template;
pub mod text;
pub mod validate;
pub mod wire;
pub mod yaml;
