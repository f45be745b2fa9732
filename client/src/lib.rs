//! The bbt client: CMA-ES ([`cmaes`]), an HTTP client for bbt-server ([`http`]), and the
//! black-box tuner that joins them ([`tune`]).

pub mod cmaes;
pub mod http;
pub mod tune;
