//! CMA-ES (Hansen & Ostermeier 2001; Hansen 2016) with an ask/tell interface and no I/O:
//! active covariance update, full or separable covariance, box bounds, stopping rules, IPOP
//! restarts ([`Ipop`]), and its whole state serialisable, so a checkpointed run resumes exactly.
//!
//! ```
//! use bbt_client::cmaes::{CmaEs, CmaOptions};
//! let mut es = CmaEs::new(&[1.0; 4], 0.5, CmaOptions { ftarget: Some(1e-10), ..Default::default() }).unwrap();
//! while es.stop_reason().is_none() {
//!     let xs = es.ask().unwrap();
//!     let fs: Vec<f64> = xs.outer_iter().map(|x| x.dot(&x)).collect();
//!     es.tell(&fs).unwrap();
//! }
//! assert!(es.best().unwrap().1 <= 1e-10);
//! ```

mod covariance;
pub mod functions;
mod history;
mod ipop;
mod options;
mod params;

use ndarray::{Array1, Array2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use covariance::Covariance;
use history::History;
pub use ipop::{minimize, Ipop};
pub use options::{CmaOptions, StopReason};
pub use params::StrategyParams;

/// A misuse of the ask/tell protocol or bad options.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CmaError {
    #[error("invalid CMA-ES options: {0}")]
    Options(String),
    #[error("tell() without a preceding ask()")]
    TellWithoutAsk,
    #[error("tell() got {got} fitness values for a population of {expected}")]
    WrongCount { got: usize, expected: usize },
    #[error("the run has stopped ({0:?}); start a new one or restart")]
    Stopped(StopReason),
}

/// The population handed out by the last `ask`, kept until its `tell`.
#[derive(Debug, Serialize, Deserialize)]
struct Asked {
    /// Standard normal vectors (after any repair, recomputed from the evaluated point).
    z: Array2<f64>,
    /// Steps `(x - m) / σ`.
    y: Array2<f64>,
}

/// The best candidate seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub x: Vec<f64>,
    pub fitness: f64,
    /// Evaluations done when it was found.
    pub evals: u64,
}

/// One CMA-ES run (see [`Ipop`] for restarts).
#[derive(Debug, Serialize, Deserialize)]
pub struct CmaEs {
    options: CmaOptions,
    params: StrategyParams,
    mean: Array1<f64>,
    sigma: f64,
    p_sigma: Array1<f64>,
    p_c: Array1<f64>,
    cov: Covariance,
    rng: ChaCha8Rng,
    generation: u64,
    evals: u64,
    asked: Option<Asked>,
    best: Option<Best>,
    history: History,
    stop: Option<StopReason>,
}

impl CmaEs {
    /// Starts at mean `x0` with step size `sigma0`.
    pub fn new(x0: &[f64], sigma0: f64, options: CmaOptions) -> Result<Self, CmaError> {
        let dim = x0.len();
        options.validate(dim).map_err(CmaError::Options)?;
        if !(sigma0 > 0.0 && sigma0.is_finite()) {
            return Err(CmaError::Options(format!(
                "sigma0 must be positive, got {sigma0}"
            )));
        }
        if x0.iter().any(|x| !x.is_finite()) {
            return Err(CmaError::Options("x0 has NaN or infinite entries".into()));
        }
        let popsize = options
            .popsize
            .unwrap_or_else(|| StrategyParams::default_popsize(dim));
        let params = StrategyParams::new(dim, popsize, options.diagonal, options.active);
        let window = options.tolstagnation.unwrap_or_else(|| {
            (100.0 + 100.0 * (dim as f64).powf(1.5) / popsize as f64).ceil() as u64
        });
        let tolfun_window = 10 + (30.0 * dim as f64 / popsize as f64).ceil() as u64;
        Ok(Self {
            mean: Array1::from(x0.to_vec()),
            sigma: sigma0,
            p_sigma: Array1::zeros(dim),
            p_c: Array1::zeros(dim),
            cov: Covariance::identity(dim, options.diagonal),
            rng: ChaCha8Rng::seed_from_u64(options.seed),
            generation: 0,
            evals: 0,
            asked: None,
            best: None,
            history: History::new(window as usize, tolfun_window as usize),
            stop: None,
            params,
            options,
        })
    }

    /// Samples the next population: `popsize` rows of `dim` coordinates, inside the bounds.
    pub fn ask(&mut self) -> Result<Array2<f64>, CmaError> {
        if let Some(reason) = self.stop {
            return Err(CmaError::Stopped(reason));
        }
        let gap = self.params.eigen_gap(self.options.lazy_gap);
        self.cov.refresh(self.generation, gap, gap >= 4);
        let (lambda, n) = (self.params.popsize, self.params.dim);
        let mut z =
            Array2::from_shape_simple_fn((lambda, n), || self.rng.sample::<f64, _>(StandardNormal));
        let mut y = self.cov.sample(&z);
        let mut x = &y * self.sigma + self.mean.view().insert_axis(Axis(0));
        if let Some([lo, hi]) = self.options.bounds {
            let cap = (n as f64).sqrt() + 2.0 * n as f64 / (n as f64 + 2.0);
            for i in 0..lambda {
                let mut row = x.row_mut(i);
                if row.iter().all(|v| (lo..=hi).contains(v)) {
                    continue;
                }
                row.mapv_inplace(|v| v.clamp(lo, hi));
                // Learn from the point evaluated, its Mahalanobis length capped (Hansen 2011).
                let step = (&row - &self.mean) / self.sigma;
                let standard = self.cov.to_standard(step.view());
                let norm = standard.dot(&standard).sqrt();
                let scale = if norm > cap { cap / norm } else { 1.0 };
                y.row_mut(i).assign(&(&step * scale));
                z.row_mut(i).assign(&(&standard * scale));
            }
        }
        self.asked = Some(Asked { z, y });
        Ok(x)
    }

    /// Updates the distribution from the fitness of the last asked population (lower is
    /// better; NaN counts as the worst). Returns the stop reason once the run has stopped.
    pub fn tell(&mut self, fitness: &[f64]) -> Result<Option<StopReason>, CmaError> {
        let (lambda, n, mu) = (self.params.popsize, self.params.dim, self.params.mu);
        if fitness.len() != lambda {
            return Err(CmaError::WrongCount {
                got: fitness.len(),
                expected: lambda,
            });
        }
        let Asked { z, y } = self.asked.take().ok_or(CmaError::TellWithoutAsk)?;
        let fitness: Vec<f64> = fitness
            .iter()
            .map(|f| if f.is_nan() { f64::INFINITY } else { *f })
            .collect();
        let mut order: Vec<usize> = (0..lambda).collect();
        order.sort_by(|&a, &b| fitness[a].total_cmp(&fitness[b]));
        self.generation += 1;
        self.evals += lambda as u64;
        self.record_best(&fitness, order[0], &y);
        // Recombination of the selected steps.
        let mut y_w = Array1::zeros(n);
        let mut z_w = Array1::zeros(n);
        for (rank, &i) in order.iter().take(mu).enumerate() {
            y_w.scaled_add(self.params.weights[rank], &y.row(i));
            z_w.scaled_add(self.params.weights[rank], &z.row(i));
        }
        self.mean.scaled_add(self.sigma, &y_w);
        let (ps_norm, h_sigma) = self.update_paths(&z_w, &y_w);
        self.update_covariance(&order, &z, &y, h_sigma);
        // Step size.
        let (cs, d_sigma, chi_n) = (self.params.c_sigma, self.params.d_sigma, self.params.chi_n);
        self.sigma *= ((cs / d_sigma) * (ps_norm / chi_n - 1.0)).min(1.0).exp();

        let mut sorted = order.iter().map(|&i| fitness[i]);
        let best = sorted.next().unwrap_or(f64::INFINITY);
        let median = fitness[order[lambda / 2]];
        let worst = fitness[order[lambda - 1]];
        self.history.push(best, median);
        self.stop = self.check_stop(best, worst);
        Ok(self.stop)
    }

    /// Keeps the sample `best_now` of this generation (its `x = mean + sigma * y`) if it beats
    /// the best so far.
    fn record_best(&mut self, fitness: &[f64], best_now: usize, y: &Array2<f64>) {
        if self
            .best
            .as_ref()
            .is_none_or(|b| fitness[best_now] < b.fitness)
        {
            let x = &self.mean + &(&y.row(best_now) * self.sigma);
            self.best = Some(Best {
                x: x.to_vec(),
                fitness: fitness[best_now],
                evals: self.evals,
            });
        }
    }

    /// Moves the evolution paths by the recombined step (`z_w` in the standard normal's
    /// coordinates, `y_w` in the search's); returns the step-size path's length and whether the
    /// covariance path was updated (`h_sigma`).
    fn update_paths(&mut self, z_w: &Array1<f64>, y_w: &Array1<f64>) -> (f64, bool) {
        let p = &self.params;
        let n = p.dim;
        let cs = p.c_sigma;
        let whitened = self.cov.whiten_from_standard(z_w.view());
        self.p_sigma *= 1.0 - cs;
        self.p_sigma
            .scaled_add((cs * (2.0 - cs) * p.mueff).sqrt(), &whitened);
        let ps_norm = self.p_sigma.dot(&self.p_sigma).sqrt();
        let correction = (1.0 - (1.0 - cs).powi(2 * self.generation as i32)).sqrt();
        let h_sigma = ps_norm / correction / p.chi_n < 1.4 + 2.0 / (n as f64 + 1.0);
        let cc = p.c_c;
        self.p_c *= 1.0 - cc;
        if h_sigma {
            self.p_c.scaled_add((cc * (2.0 - cc) * p.mueff).sqrt(), y_w);
        }
        (ps_norm, h_sigma)
    }

    /// The covariance update: rank one + rank μ over the generation's steps in fitness
    /// `order`, negative weights rescaled by their Mahalanobis length.
    fn update_covariance(
        &mut self,
        order: &[usize],
        z: &Array2<f64>,
        y: &Array2<f64>,
        h_sigma: bool,
    ) {
        let p = &self.params;
        let (lambda, n) = (p.popsize, p.dim);
        let mut steps = Array2::zeros((lambda, n));
        let mut weights = Vec::with_capacity(lambda);
        for (rank, &i) in order.iter().enumerate() {
            let w = p.weights[rank];
            let w = if w < 0.0 {
                let zz = z.row(i).dot(&z.row(i));
                w * n as f64 / zz.max(1e-12)
            } else {
                w
            };
            steps.row_mut(rank).assign(&y.row(i));
            weights.push(w);
        }
        let weight_sum: f64 = p.weights.iter().sum();
        let cc = p.c_c;
        let lost = if h_sigma { 0.0 } else { cc * (2.0 - cc) };
        let decay = 1.0 + p.c_1 * lost - p.c_1 - p.c_mu * weight_sum;
        self.cov
            .update(decay, p.c_1, &self.p_c, p.c_mu, &steps, &weights);
    }

    /// The first stopping rule that holds now.
    fn check_stop(&self, best: f64, worst: f64) -> Option<StopReason> {
        let o = &self.options;
        if o.ftarget.is_some_and(|t| best <= t) {
            return Some(StopReason::Ftarget);
        }
        if o.max_evals.is_some_and(|m| self.evals >= m) {
            return Some(StopReason::MaxEvals);
        }
        if o.max_iters.is_some_and(|m| self.generation >= m) {
            return Some(StopReason::MaxIters);
        }
        if self.history.flat_within(o.tolfun) && worst - best < o.tolfun {
            return Some(StopReason::Tolfun);
        }
        let tolx = o.tolx / self.sigma;
        if self.cov.std_devs().iter().all(|s| *s < tolx) && self.p_c.iter().all(|p| p.abs() < tolx)
        {
            return Some(StopReason::Tolx);
        }
        if self.cov.condition() > o.tolconditioncov {
            return Some(StopReason::ConditionCov);
        }
        if self.history.stagnating() {
            return Some(StopReason::Stagnation);
        }
        None
    }

    /// The distribution's mean (the current estimate of the optimum).
    pub fn mean(&self) -> &Array1<f64> {
        &self.mean
    }

    /// The step size σ.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// The covariance matrix C (the sampling covariance is σ² C).
    pub fn covariance(&self) -> Array2<f64> {
        self.cov.matrix()
    }

    /// Completed generations.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Evaluations told so far.
    pub fn evals(&self) -> u64 {
        self.evals
    }

    /// The best candidate told so far and its fitness.
    pub fn best(&self) -> Option<(&[f64], f64)> {
        self.best.as_ref().map(|b| (b.x.as_slice(), b.fitness))
    }

    /// Why the run stopped, once it has.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// The strategy parameters in use.
    pub fn params(&self) -> &StrategyParams {
        &self.params
    }

    /// The options the run was started with.
    pub fn options(&self) -> &CmaOptions {
        &self.options
    }
}

#[cfg(test)]
mod tests;
