//! Strategy parameters: recombination weights and learning rates, as in Hansen's tutorial
//! ("The CMA Evolution Strategy: A Tutorial", 2016, Table 1) with pycma's rank-μ offset.

use serde::{Deserialize, Serialize};

/// The constants of one run, fixed by the dimension and population size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyParams {
    pub dim: usize,
    /// λ.
    pub popsize: usize,
    /// μ: the number of positively weighted (selected) candidates.
    pub mu: usize,
    /// Recombination weights, best first: the first μ positive and summing to 1, the rest
    /// negative (active CMA) or zero.
    pub weights: Vec<f64>,
    /// Variance-effective selection mass of the positive weights.
    pub mueff: f64,
    pub c_sigma: f64,
    pub d_sigma: f64,
    pub c_c: f64,
    pub c_1: f64,
    pub c_mu: f64,
    /// E||N(0, I)||.
    pub chi_n: f64,
}

impl StrategyParams {
    /// Hansen's defaults for dimension `dim` and population `popsize`; `diagonal` scales the
    /// covariance learning rates by `(dim + 2) / 3` (separable CMA-ES).
    pub fn new(dim: usize, popsize: usize, diagonal: bool, active: bool) -> Self {
        let n = dim as f64;
        let lambda = popsize;
        let mu = lambda / 2;
        let raw: Vec<f64> = (1..=lambda)
            .map(|i| ((lambda as f64 + 1.0) / 2.0).ln() - (i as f64).ln())
            .collect();
        let mass = |w: &[f64]| {
            let s: f64 = w.iter().sum();
            let s2: f64 = w.iter().map(|x| x * x).sum();
            s * s / s2
        };
        let mueff = mass(&raw[..mu]);
        let c_sigma = (mueff + 2.0) / (n + mueff + 5.0);
        let d_sigma = 1.0 + 2.0 * (((mueff - 1.0) / (n + 1.0)).sqrt() - 1.0).max(0.0) + c_sigma;
        let c_c = (4.0 + mueff / n) / (n + 4.0 + 2.0 * mueff / n);
        let alpha_cov = 2.0;
        let mut c_1 = alpha_cov / ((n + 1.3).powi(2) + mueff);
        let mut c_mu = (alpha_cov * (0.25 + mueff + 1.0 / mueff - 2.0)
            / ((n + 2.0).powi(2) + alpha_cov * mueff / 2.0))
            .min(1.0 - c_1);
        if diagonal {
            let scale = (n + 2.0) / 3.0;
            c_1 = (c_1 * scale).min(0.5);
            c_mu = (c_mu * scale).min(1.0 - c_1);
        }
        let positive_sum: f64 = raw[..mu].iter().sum();
        let negative = &raw[mu..];
        let negative_sum: f64 = negative.iter().map(|w| w.abs()).sum();
        let mueff_neg = if negative.iter().any(|w| *w != 0.0) {
            mass(negative)
        } else {
            0.0
        };
        let alpha_mu = 1.0 + c_1 / c_mu;
        let alpha_mueff = 1.0 + 2.0 * mueff_neg / (mueff + 2.0);
        let alpha_posdef = (1.0 - c_1 - c_mu) / (n * c_mu);
        let negative_scale = alpha_mu.min(alpha_mueff).min(alpha_posdef);
        let weights = raw
            .iter()
            .map(|&w| {
                if w >= 0.0 {
                    w / positive_sum
                } else if active && negative_sum > 0.0 {
                    negative_scale * w / negative_sum
                } else {
                    0.0
                }
            })
            .collect();
        Self {
            dim,
            popsize: lambda,
            mu,
            weights,
            mueff,
            c_sigma,
            d_sigma,
            c_c,
            c_1,
            c_mu,
            chi_n: n.sqrt() * (1.0 - 1.0 / (4.0 * n) + 1.0 / (21.0 * n * n)),
        }
    }

    /// The default population size, `4 + floor(3 ln d)`.
    pub fn default_popsize(dim: usize) -> usize {
        4 + (3.0 * (dim as f64).ln()).floor() as usize
    }

    /// Generations between eigendecompositions for a lazy-gap factor (pycma's rule).
    pub fn eigen_gap(&self, lazy_gap: f64) -> u64 {
        let gens = lazy_gap / (self.dim as f64 * (self.c_1 + self.c_mu));
        (gens.floor() as u64).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_follow_the_tutorial() {
        let p = StrategyParams::new(10, 10, false, true);
        assert_eq!(p.mu, 5);
        let positive: f64 = p.weights[..5].iter().sum();
        assert!((positive - 1.0).abs() < 1e-12);
        assert!(
            p.weights.windows(2).all(|w| w[0] > w[1]),
            "weights must decrease"
        );
        assert!(p.weights[5..].iter().all(|w| *w < 0.0));
        // mueff for λ = 10 is about 3.17 (Hansen's tutorial).
        assert!((p.mueff - 3.17).abs() < 0.01, "mueff {}", p.mueff);
        assert!(p.c_1 + p.c_mu <= 1.0);
        let passive = StrategyParams::new(10, 10, false, false);
        assert!(passive.weights[5..].iter().all(|w| *w == 0.0));
    }

    #[test]
    fn default_popsize_matches_hansen() {
        assert_eq!(StrategyParams::default_popsize(10), 10);
        assert_eq!(StrategyParams::default_popsize(40), 15);
        assert_eq!(StrategyParams::default_popsize(500), 22);
    }

    #[test]
    fn separable_learns_faster_per_coordinate() {
        let full = StrategyParams::new(100, 20, false, true);
        let sep = StrategyParams::new(100, 20, true, true);
        assert!(sep.c_mu > 10.0 * full.c_mu);
    }
}
