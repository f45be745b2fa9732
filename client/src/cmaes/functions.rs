//! Standard test functions (as pycma's `cma.ff`), for the tests and `cma-bench`.

use ndarray::ArrayView1;

/// A named test function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestFunction {
    /// `Σ xᵢ²`.
    Sphere,
    /// `Σ 10^(6 i/(n-1)) xᵢ²`: condition number 1e6.
    Ellipsoid,
    /// `Σ 100 (xᵢ² - xᵢ₊₁)² + (1 - xᵢ)²`.
    Rosenbrock,
}

impl TestFunction {
    /// All of them, in the order `cma-bench` reports them.
    pub const ALL: [TestFunction; 3] = [Self::Sphere, Self::Ellipsoid, Self::Rosenbrock];

    /// Lower-case name as in the bench output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sphere => "sphere",
            Self::Ellipsoid => "ellipsoid",
            Self::Rosenbrock => "rosenbrock",
        }
    }

    /// The function's value at `x`.
    pub fn eval(self, x: ArrayView1<f64>) -> f64 {
        let n = x.len();
        match self {
            Self::Sphere => x.dot(&x),
            Self::Ellipsoid => x
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let exponent = if n > 1 {
                        6.0 * i as f64 / (n - 1) as f64
                    } else {
                        0.0
                    };
                    10f64.powf(exponent) * v * v
                })
                .sum(),
            Self::Rosenbrock => x
                .windows(2)
                .into_iter()
                .map(|w| 100.0 * (w[0] * w[0] - w[1]).powi(2) + (1.0 - w[0]).powi(2))
                .sum(),
        }
    }
}
