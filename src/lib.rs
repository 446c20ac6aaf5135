//! payrun: declarative batch payouts. The pipeline reads top to bottom:
//! manifest → schema → compile → validate → plan (→ execute, in a later stage).

pub mod diagnostic;
pub mod keys;
pub mod manifest;
pub mod mask;
pub mod money;
pub mod schema;
pub mod text;
pub mod yaml;
