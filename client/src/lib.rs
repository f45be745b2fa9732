//! The bbt client: CMA-ES ([`cmaes`]), an HTTP client for bbt-server ([`http`]), the
//! black-box tuner that joins them ([`tune`]), the gradient-free baselines ([`baselines`]) and
//! the summary every run's `result.json` shares ([`summary`]), and the download of the paper's
//! datasets ([`datasets`]).

pub mod baselines;
pub mod cmaes;
pub mod datasets;
pub mod http;
pub mod summary;
pub mod tune;
