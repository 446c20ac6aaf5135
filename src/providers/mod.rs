//! Client adapters, one per provider: payrun's compiled items to the provider's requests, and
//! the provider's answers to provider-neutral verdicts (`execute::machine::Verdict`). Provider
//! types never leave their module. (In progress with issue 4: Paysend first.)

pub mod paysend;
