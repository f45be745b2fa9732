//! The bbt client: CMA-ES ([`cmaes`]), and the black-box tuner that drives a bbt-server over
//! HTTP.

pub mod cmaes;
