//! Every option of [`super::CmaEs`] in one place, with its default and why (as pycma documents
//! its `CMAOptions`).

use serde::{Deserialize, Serialize};

/// Options of a CMA-ES run. `Default` gives Hansen's defaults; every field is optional in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CmaOptions {
    /// Population size λ. Default `4 + floor(3 ln d)` (Hansen 2016); BBT uses 20.
    pub popsize: Option<usize>,
    /// Seed of the sampler: the same seed, options and fitness values give the same run.
    pub seed: u64,
    /// Separable (diagonal covariance) CMA-ES (Ros & Hansen 2008): O(d) per sample instead of
    /// O(d²), with learning rates scaled by `(d + 2) / 3`. For large d on near-separable problems.
    pub diagonal: bool,
    /// Box bounds `[lower, upper]`, each a scalar for every coordinate (use `f64::INFINITY` for
    /// none). Candidates are clipped into the box; CMA-ES learns from the clipped point it
    /// evaluated, with the step's Mahalanobis length capped (Hansen 2011, "injecting solutions").
    pub bounds: Option<[f64; 2]>,
    /// Stop after this many function evaluations (over all restarts).
    pub max_evals: Option<u64>,
    /// Stop after this many generations (of one run).
    pub max_iters: Option<u64>,
    /// Stop when a candidate's fitness is at most this.
    pub ftarget: Option<f64>,
    /// Stop when the best fitness of the last `10 + ceil(30 d / λ)` generations and all of this
    /// generation's values lie within this range. pycma: 1e-11.
    pub tolfun: f64,
    /// Stop when every coordinate's standard deviation `σ·sqrt(C_ii)` and `σ·|p_c|` are below
    /// this. pycma: 1e-11.
    pub tolx: f64,
    /// Stop when, over the latest window of this many generations, the medians of the best and
    /// of the median fitness over its last 20% are no better than over its first 20%. Default
    /// `100 + 100 d^1.5 / λ` (pycma `tolstagnation`).
    pub tolstagnation: Option<u64>,
    /// Stop when the covariance's condition number exceeds this (pycma `tolconditioncov`).
    pub tolconditioncov: f64,
    /// IPOP: restart this many times after a stop other than the budget or target, each time
    /// from `x0` with the population multiplied by `incpopsize` (Auger & Hansen 2005).
    pub restarts: u32,
    /// Population growth factor between IPOP restarts.
    pub incpopsize: f64,
    /// The eigendecomposition of C is refreshed every `lazy_gap / (d (c1 + cμ))` generations
    /// (at least every generation). pycma's factor is 0.5; 1.0 needs the same evaluations on the
    /// `cma-bench` functions (within 7% of pycma) and keeps the O(d³) work for d = 500 off the
    /// critical path. When the gap is 4 or more generations, it runs on a second thread and is
    /// installed one gap later, at a fixed generation, so runs stay deterministic.
    pub lazy_gap: f64,
    /// Active CMA (negative recombination weights for the worst half, Jastrebski & Arnold 2006),
    /// pycma's default since 3.0.
    pub active: bool,
}

impl Default for CmaOptions {
    fn default() -> Self {
        Self {
            popsize: None,
            seed: 1,
            diagonal: false,
            bounds: None,
            max_evals: None,
            max_iters: None,
            ftarget: None,
            tolfun: 1e-11,
            tolx: 1e-11,
            tolstagnation: None,
            tolconditioncov: 1e14,
            restarts: 0,
            incpopsize: 2.0,
            lazy_gap: 1.0,
            active: true,
        }
    }
}

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    MaxEvals,
    MaxIters,
    Ftarget,
    Tolfun,
    Tolx,
    Stagnation,
    ConditionCov,
}

impl StopReason {
    /// Whether an IPOP restart may follow (not for a spent budget or a reached target).
    pub fn allows_restart(self) -> bool {
        !matches!(self, Self::MaxEvals | Self::Ftarget)
    }
}

impl CmaOptions {
    /// Checks the options against the dimension; a clear message for each mistake.
    pub fn validate(&self, dim: usize) -> Result<(), String> {
        if dim == 0 {
            return Err("the dimension must be at least 1".into());
        }
        if let Some(p) = self.popsize {
            if p < 2 {
                return Err(format!("popsize must be at least 2, got {p}"));
            }
        }
        if let Some([lo, hi]) = self.bounds {
            if lo.is_nan() || hi.is_nan() || lo >= hi {
                return Err(format!(
                    "bounds must satisfy lower < upper, got [{lo}, {hi}]"
                ));
            }
        }
        if self.incpopsize < 1.0 || !self.incpopsize.is_finite() {
            return Err(format!(
                "incpopsize must be at least 1, got {}",
                self.incpopsize
            ));
        }
        if self.lazy_gap < 0.0 || !self.lazy_gap.is_finite() {
            return Err(format!("lazy_gap must be >= 0, got {}", self.lazy_gap));
        }
        Ok(())
    }
}
