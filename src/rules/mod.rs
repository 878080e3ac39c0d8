//! Access Monitoring Rules: what the Teleport resource says about routing a request.

pub mod condition;
mod set;

pub use set::RuleSet;
