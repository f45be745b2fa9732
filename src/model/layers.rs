//! Building blocks shared by the decoder architectures: rotary tables, norms, MLP, attention masks.

use candle_core::{DType, Device, Tensor};

use super::kernels::{gated_activation, GateActivation};

use super::config::RopeStyle;

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

    /// Rotates `x` `[b, heads, t, head_dim]` by gathered tables.
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        match self.style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(x, cos, sin),
            RopeStyle::Half => candle_nn::rotary_emb::rope(x, cos, sin),
        }
    }

    /// Number of positions the tables cover.
    pub fn max_position(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }
}

/// `x @ w^T` for `x` of shape `[n, in]` and `w` of shape `[out, in]`.
pub fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.matmul(&w.t()?)
}

/// RMSNorm over the last dimension.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32)
}

/// Gated MLP on packed tokens `[n, hidden]` with fused gate|up weights.
pub fn gated_mlp(
    x: &Tensor,
    w_gate_up: &Tensor,
    w_down: &Tensor,
    act: GateActivation,
) -> candle_core::Result<Tensor> {
    let gu = linear(x, w_gate_up)?;
    linear(&gated_activation(&gu, act)?, w_down)
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
