//! The spread of hidden states, robust to the few huge outlier activations that the residual
//! stream of pre-norm models carries.

/// Standard deviation of `values` after `rounds` rounds of clipping them to mean ± 3 std (each
/// round recomputes both on the clipped values), as the BBTv2 reference code measures hidden
/// states.
pub(super) fn clipped_std(values: &[f32], rounds: usize) -> f64 {
    let n = values.len().max(1) as f64;
    let stats = |lo: f64, hi: f64| {
        let clip = |x: f32| (x as f64).clamp(lo, hi);
        let mean = values.iter().map(|&x| clip(x)).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&x| (clip(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    };
    let (mut mean, mut std) = stats(f64::NEG_INFINITY, f64::INFINITY);
    for _ in 0..rounds {
        (mean, std) = stats(mean - 3.0 * std, mean + 3.0 * std);
    }
    std
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_removes_outliers_from_the_spread() {
        let mut values: Vec<f32> = (0..1000).map(|i| ((i % 20) as f32 - 9.5) / 10.0).collect();
        let plain = clipped_std(&values, 0);
        values[0] = 1e4;
        assert!(clipped_std(&values, 0) > 100.0 * plain);
        let clipped = clipped_std(&values, 5);
        assert!(
            (clipped - plain).abs() < 0.05 * plain,
            "{clipped} vs {plain}"
        );
    }
}
