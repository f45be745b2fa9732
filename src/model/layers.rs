//! Building blocks shared by the decoder architectures: rotary tables, norms, MLP, attention masks.

use candle_core::{DType, Device, Tensor, D};

use super::config::RopeStyle;
use super::fused::{gated_activation, GateActivation, RmsNorm, Rope};
use super::linear::Linear;

/// Precomputed rotary cos/sin tables `[max_position, head_dim / 2]` for one rotary base.
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
}

impl Rotary {
    /// Builds tables for positions `0..max_position`.
    pub fn new(
        theta: f64,
        head_dim: usize,
        max_position: usize,
        style: RopeStyle,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<Self> {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| (1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)) as f32)
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let pos = Tensor::arange(0u32, max_position as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_position, 1))?;
        let freqs = pos.broadcast_mul(&inv_freq)?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
            style,
        })
    }

    /// Gathers the `(cos, sin)` rows of `positions` (`[b * t]`, u32) as `[b, t, head_dim / 2]`.
    pub fn gather(
        &self,
        positions: &Tensor,
        b: usize,
        t: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.cos.dim(1)?;
        let cos = self.cos.index_select(positions, 0)?.reshape((b, t, half))?;
        let sin = self.sin.index_select(positions, 0)?.reshape((b, t, half))?;
        Ok((cos, sin))
    }

    /// Rotates `x` `[b, heads, t, head_dim]` by gathered tables: candle's fused kernels, or,
    /// when `x` carries a gradient, the same rotation built from differentiable ops.
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        if x.track_op() {
            if x.device().is_cpu() && x.dtype() == DType::F32 {
                return x.contiguous()?.apply_op1(Rope {
                    cos: cos.clone(),
                    sin: sin.clone(),
                    style: self.style,
                    inverse: false,
                });
            }
            return self.apply_composed(x, cos, sin);
        }
        match self.style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(x, cos, sin),
            RopeStyle::Half => candle_nn::rotary_emb::rope(x, cos, sin),
        }
    }

    /// The rotation composed of basic (differentiable) candle ops, for any device and dtype.
    pub(crate) fn apply_composed(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (b, h, t, d) = x.dims4()?;
        let half = d / 2;
        match self.style {
            RopeStyle::Half => {
                // [x1, x2] -> [x1 cos - x2 sin, x1 sin + x2 cos]
                let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
                let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
                let x1 = x.narrow(D::Minus1, 0, half)?;
                let x2 = x.narrow(D::Minus1, half, half)?;
                let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
                x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
            }
            RopeStyle::Interleaved => {
                // pairs (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos)
                let cos = cos.reshape((b, 1, t, half, 1))?;
                let sin = sin.reshape((b, 1, t, half, 1))?;
                let pairs = x.reshape((b, h, t, half, 2))?;
                let x0 = pairs.narrow(D::Minus1, 0, 1)?;
                let x1 = pairs.narrow(D::Minus1, 1, 1)?;
                let r0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
                let r1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
                Tensor::cat(&[&r0, &r1], D::Minus1)?.reshape((b, h, t, d))
            }
        }
    }

    /// Number of positions the tables cover.
    pub fn max_position(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }
}

/// RMSNorm over the last dimension: candle's fused kernel; when the input or the weight carries
/// a gradient, a fused differentiable kernel on f32 CPU tensors and candle's composition of
/// basic ops elsewhere (and for f64, which the fused kernels lack).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let tracking = x.track_op() || weight.track_op();
    let cpu_f32 = x.device().is_cpu() && x.dtype() == DType::F32;
    match (tracking, cpu_f32) {
        (true, true) => x
            .contiguous()?
            .apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 }),
        (false, _) if x.dtype() != DType::F64 => {
            candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32)
        }
        _ => candle_nn::ops::rms_norm_slow(x, weight, eps as f32),
    }
}

/// Gated MLP on packed tokens `[n, hidden]` with fused gate|up weights.
pub fn gated_mlp(
    x: &Tensor,
    gate_up: &Linear,
    down: &Linear,
    act: GateActivation,
) -> candle_core::Result<Tensor> {
    let gu = gate_up.forward(x)?;
    down.forward(&gated_activation(&gu, act)?)
}

/// What each query row may attend to, used to build additive attention masks.
pub struct MaskSpec<'a> {
    /// Real (unpadded) query length of each row.
    pub lengths: &'a [usize],
    /// Padded query length.
    pub t: usize,
    /// Valid past keys per row (0 without a past).
    pub past_lengths: &'a [usize],
    /// Padded past length.
    pub p: usize,
    /// Absolute position of each row's first query token.
    pub start_positions: &'a [usize],
}

impl MaskSpec<'_> {
    /// Additive mask `[b, 1, 1, t, p + t]`: 0 where allowed, -inf elsewhere. With `window`, a
    /// query at position i sees only keys at positions > i - window (sliding-window attention).
    pub fn build(
        &self,
        window: Option<usize>,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<Tensor> {
        let b = self.lengths.len();
        let s = self.p + self.t;
        let mut mask = vec![f32::NEG_INFINITY; b * self.t * s];
        for row in 0..b {
            let start = self.start_positions[row];
            for qi in 0..self.t {
                let q_pos = start + qi;
                let allowed = |k_pos: usize| window.is_none_or(|w| q_pos < k_pos + w);
                let base = (row * self.t + qi) * s;
                for j in 0..self.past_lengths[row] {
                    // Past keys sit at positions 0..past_len of the same sequence.
                    if allowed(j) {
                        mask[base + j] = 0.0;
                    }
                }
                // Causal over the row's own tokens; padded query rows see themselves so no
                // softmax row is empty (their outputs are discarded).
                for kj in 0..=qi {
                    if allowed(start + kj) {
                        mask[base + self.p + kj] = 0.0;
                    }
                }
            }
        }
        Tensor::from_vec(mask, (b, 1, 1, self.t, s), device)?.to_dtype(dtype)
    }
}
