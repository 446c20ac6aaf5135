//! payrun: declarative batch payouts. The pipeline reads top to bottom:
//! manifest → schema → compile → validate → plan (→ execute, in a later stage).

pub mod compile;
pub mod diagnostic;
pub mod keys;
pub mod manifest;
pub mod mask;
pub mod money;
pub mod pipeline;
pub mod plan;
pub mod schema;
pub mod template;
pub mod text;
pub mod validate;
pub mod yaml;
