//! Helpers of the fused ops' tests: each op is checked against its composition of basic candle
//! ops, in value and in gradient.

use candle_core::{Device, Tensor, Var};

/// Largest absolute difference between two f32 tensors (shared by the kernel tests).
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// A tensor of the given shape with values uniform in [-2, 2), reproducible from `seed`.
pub fn randn(dims: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 4.0 - 2.0).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// Runs `fused` and `composed` on the same variables, checks equal outputs and equal
/// gradients of a random linear function of the output for every variable.
pub fn check(
    vars: &[Var],
    fused: impl Fn(&[Tensor]) -> Tensor,
    composed: impl Fn(&[Tensor]) -> Tensor,
) {
    let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (a, b) = (fused(&xs), composed(&xs));
    assert!(
        max_diff(&a, &b) < 1e-5,
        "outputs differ by {}",
        max_diff(&a, &b)
    );
    let c = randn(a.dims(), 99);
    let ga = (&a * &c).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (&b * &c).unwrap().sum_all().unwrap().backward().unwrap();
    for v in vars {
        let (x, y) = (
            ga.get(v.as_tensor()).unwrap(),
            gb.get(v.as_tensor()).unwrap(),
        );
        let scale = y
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1.0);
        assert!(
            max_diff(x, y) < 1e-4 * scale,
            "gradients differ by {}",
            max_diff(x, y)
        );
    }
}
