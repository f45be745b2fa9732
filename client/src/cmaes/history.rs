//! The fitness history the stopping rules look at: each generation's best and median.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// The latest generations' best and median fitness, as long as the longest rule needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct History {
    best: VecDeque<f64>,
    median: VecDeque<f64>,
    /// Generations the stagnation rule compares (first vs last 20%).
    stagnation_window: usize,
    /// Generations the tolfun rule looks back.
    tolfun_window: usize,
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl History {
    /// An empty history for the two windows (in generations).
    pub fn new(stagnation_window: usize, tolfun_window: usize) -> Self {
        Self {
            best: VecDeque::new(),
            median: VecDeque::new(),
            stagnation_window: stagnation_window.max(5),
            tolfun_window: tolfun_window.max(1),
        }
    }

    /// Records one generation.
    pub fn push(&mut self, best: f64, median: f64) {
        let keep = self.stagnation_window.max(self.tolfun_window);
        self.best.push_back(best);
        self.median.push_back(median);
        while self.best.len() > keep {
            self.best.pop_front();
            self.median.pop_front();
        }
    }

    /// Whether the best values of the last `tolfun_window` generations span less than `tol`.
    pub fn flat_within(&self, tol: f64) -> bool {
        if self.best.len() < self.tolfun_window {
            return false;
        }
        let recent = self.best.iter().rev().take(self.tolfun_window);
        let (lo, hi) = recent.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
        hi - lo < tol
    }

    /// Whether over the stagnation window neither the best nor the median fitness improved
    /// (median of its last 20% no better than of its first 20%).
    pub fn stagnating(&self) -> bool {
        let w = self.stagnation_window;
        if self.best.len() < w {
            return false;
        }
        let part = w.div_ceil(5);
        let start = self.best.len() - w;
        let no_better = |series: &VecDeque<f64>| {
            let first = median(series.range(start..start + part).copied());
            let last = median(series.range(series.len() - part..).copied());
            last >= first
        };
        no_better(&self.best) && no_better(&self.median)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_needs_a_full_window() {
        let mut h = History::new(100, 3);
        h.push(1.0, 1.0);
        h.push(1.0, 1.0);
        assert!(!h.flat_within(1e-9));
        h.push(1.0, 1.0);
        assert!(h.flat_within(1e-9));
        h.push(0.5, 1.0);
        assert!(!h.flat_within(1e-9));
    }

    #[test]
    fn stagnation_only_without_progress() {
        let mut improving = History::new(10, 1);
        let mut flat = History::new(10, 1);
        for g in 0..10 {
            improving.push(10.0 - g as f64, 20.0 - g as f64);
            flat.push(1.0 + (g % 2) as f64 * 1e-3, 2.0);
        }
        assert!(!improving.stagnating());
        assert!(flat.stagnating());
    }
}
