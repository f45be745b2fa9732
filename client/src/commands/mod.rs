//! The commands that talk to a bbt-server: `tune`, `eval` and `quickstart`.

pub mod eval;
#[cfg(feature = "local")]
pub mod quickstart;
pub mod tune;
