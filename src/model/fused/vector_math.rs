//! Elementwise f32 math eight lanes at a time, for the fused CPU kernels: the exponential is the
//! `wide` crate's vectorised polynomial instead of one libm call per element, which is what
//! the MLP's activation and attention's softmax spend their time on.

use wide::{f32x8, CmpGe, CmpLt};

const LANES: usize = 8;

/// Writes `f(a, b)` lane-wise into `out`; `a`, `b` and `out` have the same length (a tail
/// shorter than eight lanes is computed on zero-padded lanes and only its real lanes kept).
#[inline]
pub fn zip_map(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32x8, f32x8) -> f32x8) {
    debug_assert!(out.len() == a.len() && a.len() == b.len());
    let mut out_chunks = out.chunks_exact_mut(LANES);
    let mut a_chunks = a.chunks_exact(LANES);
    let mut b_chunks = b.chunks_exact(LANES);
    for ((o, a), b) in (&mut out_chunks).zip(&mut a_chunks).zip(&mut b_chunks) {
        let r = f(lanes(a), lanes(b));
        o.copy_from_slice(r.as_array_ref());
    }
    let tail = out_chunks.into_remainder();
    if !tail.is_empty() {
        let r = f(padded(a_chunks.remainder()), padded(b_chunks.remainder()));
        tail.copy_from_slice(&r.as_array_ref()[..tail.len()]);
    }
}

/// Replaces every `x` by `exp(x - shift)` and returns their sum (the softmax's numerators and
/// denominator) for a `shift` no smaller than any `x` (the row's maximum); `-inf` entries
/// become 0.
#[inline]
pub fn exp_shifted_sum(x: &mut [f32], shift: f32) -> f32 {
    let shift = f32x8::splat(shift);
    let mut sum = f32x8::ZERO;
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        let e = (lanes(c) - shift).exp();
        sum += e;
        c.copy_from_slice(e.as_array_ref());
    }
    let tail = chunks.into_remainder();
    let mut total = sum.reduce_add();
    if !tail.is_empty() {
        let e = (padded(tail) - shift).exp();
        let e = &e.as_array_ref()[..tail.len()];
        total += e.iter().sum::<f32>();
        tail.copy_from_slice(e);
    }
    total
}

/// The logistic function `1 / (1 + exp(-x))`, from `exp(-|x|)` so that it never overflows.
#[inline]
pub fn sigmoid(x: f32x8) -> f32x8 {
    let e = (-x.abs()).exp();
    let r = f32x8::ONE / (f32x8::ONE + e);
    x.cmp_ge(f32x8::ZERO).blend(r, e * r)
}

/// `tanh(x)`, from `exp(-2|x|)` so that it never overflows.
#[inline]
pub fn tanh(x: f32x8) -> f32x8 {
    let e = (x.abs() * f32x8::splat(-2.0)).exp();
    let t = (f32x8::ONE - e) / (f32x8::ONE + e);
    x.cmp_lt(f32x8::ZERO).blend(-t, t)
}

fn lanes(chunk: &[f32]) -> f32x8 {
    let array: [f32; LANES] = chunk.try_into().expect("a full chunk");
    f32x8::from(array)
}

fn padded(tail: &[f32]) -> f32x8 {
    let mut array = [0f32; LANES];
    array[..tail.len()].copy_from_slice(tail);
    f32x8::from(array)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs over the range the kernels meet, including both tails of the exponential.
    fn inputs() -> Vec<f32> {
        (0..2003).map(|i| (i as f32 - 1001.0) * 0.1).collect()
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 2e-6 * b.abs().max(1e-30) + 1e-30
    }

    #[test]
    fn sigmoid_and_tanh_match_libm_everywhere() {
        let x = inputs();
        let mut s = vec![0f32; x.len()];
        let mut t = vec![0f32; x.len()];
        zip_map(&mut s, &x, &x, |a, _| sigmoid(a));
        zip_map(&mut t, &x, &x, |a, _| tanh(a));
        for ((&x, &s), &t) in x.iter().zip(&s).zip(&t) {
            assert!(close(s, 1.0 / (1.0 + (-x).exp())), "sigmoid({x}) = {s}");
            assert!(close(t, x.tanh()), "tanh({x}) = {t}");
        }
        // No overflow at the extremes: the limits, not NaN.
        let mut ext = [0f32; 3];
        zip_map(&mut ext, &[-1e30, 1e30, -200.0], &[0.0; 3], |a, _| {
            sigmoid(a)
        });
        assert_eq!(ext, [0.0, 1.0, 0.0]);
    }

    #[test]
    fn shifted_exponentials_and_their_sum_match_libm() {
        let mut x = inputs();
        x[5] = f32::NEG_INFINITY;
        let shift = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let expected: Vec<f32> = x.iter().map(|&v| (v - shift).exp()).collect();
        let sum = exp_shifted_sum(&mut x, shift);
        for (got, want) in x.iter().zip(&expected) {
            assert!(close(*got, *want), "{got} vs {want}");
        }
        assert_eq!(x[5], 0.0);
        let want: f64 = expected.iter().map(|&v| v as f64).sum();
        assert!((sum as f64 - want).abs() <= 1e-5 * want);
    }
}
