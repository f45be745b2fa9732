//! The commands of `bbt`: `tune`, `eval` and `quickstart`, which talk to a bbt-server, and
//! `fetch`, which downloads models and datasets.

pub mod eval;
pub mod fetch;
#[cfg(feature = "local")]
pub mod quickstart;
pub mod tune;
