//! Linear layers: a frozen `[out, in]` weight plus the optional trainable pieces that the
//! parameter-efficient methods attach to it (LoRA factors on slices of the output, a bias).
//!
//! Gradients through a frozen weight: candle's matmul backward computes the gradient of *both*
//! operands, so `x @ W^T` with a trainable `x` would also compute (and keep) a weight-sized
//! gradient for every frozen matrix of the model. [`matmul_t`] routes that case through
//! [`FrozenWeightLinear`], an op whose only input is `x`: the forward is the same matmul, the
//! backward returns `grad @ W` — no work and no memory for gradients nobody asked for.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor, D};

use super::packed_linear::{round_to_bf16, trainable_matmul_t, CpuWeight};
use crate::blas::{Blas, Precision};

/// `x @ w^T` for `x` `[n, in]` and `w` `[out, in]`, differentiable in whichever operands track
/// gradients, computing no gradient for a frozen `w`.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if x.track_op() && !w.track_op() && x.rank() == 2 && w.rank() == 2 {
        return x.apply_op1(FrozenWeightLinear { weight: w.clone() });
    }
    x.matmul(&w.t()?)
}

/// `x @ W^T` with `W` held by the op (not a graph input): see the module docs.
struct FrozenWeightLinear {
    weight: Tensor,
}

impl FrozenWeightLinear {
    /// The matmul's dimensions `(batch, m, n, k)` and the transposed weight's layout.
    fn dims(&self, x: &Layout) -> candle_core::Result<((usize, usize, usize, usize), Layout)> {
        let (n, k) = x.shape().dims2()?;
        let (out, k_w) = self.weight.dims2()?;
        if k != k_w {
            candle_core::bail!("linear: input has {k} features, the weight {k_w}");
        }
        let wt = self.weight.layout().transpose(0, 1)?;
        Ok(((1, n, out, k), wt))
    }
}

impl CustomOp1 for FrozenWeightLinear {
    fn name(&self) -> &'static str {
        "frozen-weight-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (bmnk, wt) = self.dims(lx)?;
        let (w, _) = self.weight.storage_and_layout();
        let Storage::Cpu(w) = &*w else {
            candle_core::bail!("linear: weight and input on different devices");
        };
        let y = x.matmul(w, bmnk, lx, &wt)?;
        Ok((y, Shape::from((bmnk.1, bmnk.2))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (bmnk, wt) = self.dims(lx)?;
        let (w, _) = self.weight.storage_and_layout();
        let Storage::Cuda(w) = &*w else {
            candle_core::bail!("linear: weight and input on different devices");
        };
        let y = x.matmul(w, bmnk, lx, &wt)?;
        Ok((y, Shape::from((bmnk.1, bmnk.2))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// LoRA factors on the output slice `offset .. offset + b.dim(0)` of a linear layer:
/// `delta = scale * dropout(x) @ a^T @ b^T` (Hu et al. 2021), with `scale = alpha / r`.
#[derive(Clone)]
pub struct LoraFactors {
    pub offset: usize,
    /// `[r, in]`.
    pub a: Tensor,
    /// `[len, r]` (zero-initialised, so training starts at the base model).
    pub b: Tensor,
    pub scale: f64,
    /// Dropout on the factors' input; 0 at inference.
    pub dropout: f32,
}

/// A linear layer `y = x @ W^T (+ LoRA deltas) (+ bias)`.
#[derive(Clone)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`, when a method adds one (BitFit): the Llama and Gemma blocks have none.
    pub bias: Option<Tensor>,
    /// Factors on disjoint output slices (for a fused q|k|v weight: q and v, say).
    pub lora: Vec<LoraFactors>,
    /// The weight prepared for the CPU's BLAS ([`Linear::prepare_cpu`]), while it is the
    /// weight in use.
    prepared: Option<CpuWeight>,
    /// A bf16 model on the CPU: inputs are rounded to bf16 before the matmul (the weight was
    /// rounded when prepared), and everything else stays f32.
    bf16_inputs: bool,
    /// The CPU's BLAS for a weight being trained (a variable when prepared; its detached copy
    /// for evaluation): its matmuls and their gradients go through the library's plain sgemm.
    trainable_blas: Option<&'static Blas>,
}

impl Linear {
    /// A bare layer over `weight` `[out, in]`.
    pub fn new(weight: Tensor) -> Self {
        Self {
            weight,
            bias: None,
            lora: Vec::new(),
            prepared: None,
            bf16_inputs: false,
            trainable_blas: None,
        }
    }

    /// Prepares the frozen weight for the CPU kernels, once at load: in bf16 `precision` the
    /// weight is rounded to bf16 (kept in f32 storage) and inputs will be too; with `blas` the
    /// matmul goes through that library (oneMKL prepacks the weight). A weight already prepared
    /// for the same library is kept. A no-op for weights off the CPU or not in f32.
    pub fn prepare_cpu(
        &mut self,
        blas: Option<&'static Blas>,
        precision: Precision,
    ) -> candle_core::Result<()> {
        if !self.weight.device().is_cpu() || self.weight.dtype() != DType::F32 {
            return Ok(());
        }
        if precision == Precision::Bf16 && !self.bf16_inputs {
            self.weight = round_to_bf16(&self.weight)?;
            self.bf16_inputs = true;
        }
        self.prepared = match blas {
            Some(blas) if self.uses_blas_library(blas) => self.prepared.take(),
            Some(blas) if !self.weight.is_variable() => {
                Some(CpuWeight::prepare(blas, &self.weight, precision)?)
            }
            _ => None,
        };
        self.trainable_blas = blas.filter(|_| self.weight.is_variable());
        Ok(())
    }

    fn uses_blas_library(&self, blas: &Blas) -> bool {
        self.uses_blas() && self.prepared.as_ref().is_some_and(|p| p.is_for(blas))
    }

    /// Whether the next forward multiplies through the CPU's BLAS.
    pub fn uses_blas(&self) -> bool {
        self.prepared
            .as_ref()
            .is_some_and(|p| p.prepares(&self.weight))
    }

    /// Whether the weight is being trained and its matmuls (and their gradients) go through the
    /// CPU's BLAS.
    pub fn trains_through_blas(&self) -> bool {
        self.trainable_blas.is_some() && self.weight.is_variable()
    }

    /// Bytes of the packed copy of the weight, if any.
    pub fn packed_bytes(&self) -> usize {
        self.prepared.as_ref().map_or(0, CpuWeight::bytes)
    }

    /// `x @ W^T`: through the BLAS when the prepared weight is current (or the weight is being
    /// trained and the layer was prepared with a BLAS) and `x` is f32 rows on the CPU, else
    /// candle's matmul; on bf16-rounded inputs for a bf16 model either way.
    fn weight_matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let f32_rows = x.rank() == 2 && x.dtype() == DType::F32;
        if let Some(p) = &self.prepared {
            if p.prepares(&self.weight) && f32_rows {
                return p.matmul_t(x, &self.weight);
            }
        }
        let rounded;
        let x = if self.bf16_inputs && x.dtype() == DType::F32 {
            rounded = round_to_bf16(x)?;
            &rounded
        } else {
            x
        };
        match self.trainable_blas {
            Some(blas)
                if f32_rows
                    && self.weight.dtype() == DType::F32
                    && self.weight.device().is_cpu() =>
            {
                trainable_matmul_t(blas, x, &self.weight)
            }
            _ => matmul_t(x, &self.weight),
        }
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.dim(0).unwrap_or(0)
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.dim(1).unwrap_or(0)
    }

    /// Applies the layer to packed rows `[n, in]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut y = self.weight_matmul(x)?;
        if !self.lora.is_empty() {
            y = (y + self.lora_delta(x)?)?;
        }
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(bias)?;
        }
        Ok(y)
    }

    /// The LoRA deltas laid out over the whole output, zeros between the slices.
    fn lora_delta(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        let mut pieces: Vec<&LoraFactors> = self.lora.iter().collect();
        pieces.sort_by_key(|f| f.offset);
        let mut parts = Vec::new();
        let mut at = 0;
        for f in pieces {
            if f.offset > at {
                parts.push(Tensor::zeros((n, f.offset - at), x.dtype(), x.device())?);
            }
            let input = if f.dropout > 0.0 {
                candle_nn::ops::dropout(x, f.dropout)?
            } else {
                x.clone()
            };
            let delta = matmul_t(&matmul_t(&input, &f.a)?, &f.b)?;
            at = f.offset + delta.dim(D::Minus1)?;
            parts.push((delta * f.scale)?);
        }
        let out = self.out_features();
        if at > out {
            candle_core::bail!("LoRA slices end at {at}, past the layer's {out} outputs");
        }
        if at < out {
            parts.push(Tensor::zeros((n, out - at), x.dtype(), x.device())?);
        }
        Tensor::cat(&parts, D::Minus1)
    }

    /// The same layer with every tensor cut off from the gradient graph and dropout off: what
    /// evaluation runs, so no graph is kept alive while scoring many examples.
    pub fn for_inference(&self) -> Self {
        Self {
            weight: self.weight.detach(),
            bias: self.bias.as_ref().map(Tensor::detach),
            lora: self
                .lora
                .iter()
                .map(|f| LoraFactors {
                    a: f.a.detach(),
                    b: f.b.detach(),
                    dropout: 0.0,
                    ..f.clone()
                })
                .collect(),
            prepared: self.prepared.clone(),
            bf16_inputs: self.bf16_inputs,
            trainable_blas: self.trainable_blas,
        }
    }
}

/// A bottleneck adapter `scale * up(relu(down(x)))` (Houlsby et al. 2019; He et al. 2022).
#[derive(Clone)]
pub struct Adapter {
    /// `[bottleneck, hidden]` and its bias `[bottleneck]`.
    pub down: Tensor,
    pub down_bias: Tensor,
    /// `[hidden, bottleneck]` (zero-initialised: the adapter starts as the identity residual)
    /// and its bias `[hidden]`.
    pub up: Tensor,
    pub up_bias: Tensor,
    pub scale: f64,
}

impl Adapter {
    /// The adapter's output for packed rows `[n, hidden]` (to be added to a residual).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = matmul_t(x, &self.down)?
            .broadcast_add(&self.down_bias)?
            .relu()?;
        let y = matmul_t(&h, &self.up)?.broadcast_add(&self.up_bias)?;
        if self.scale == 1.0 {
            Ok(y)
        } else {
            y * self.scale
        }
    }

    /// The adapter cut off from the gradient graph.
    pub fn for_inference(&self) -> Self {
        Self {
            down: self.down.detach(),
            down_bias: self.down_bias.detach(),
            up: self.up.detach(),
            up_bias: self.up_bias.detach(),
            scale: self.scale,
        }
    }
}

/// Adapters attached to one decoder block, at its named hook points.
#[derive(Clone, Default)]
pub struct BlockAdapters {
    /// Sequential, on the attention output before its residual add (Houlsby).
    pub after_attention: Option<Adapter>,
    /// Sequential, on the feed-forward output before its residual add (Houlsby).
    pub after_ffn: Option<Adapter>,
    /// Parallel to the feed-forward sublayer, reading its (normalised) input (He et al.).
    pub beside_ffn: Option<Adapter>,
}

impl BlockAdapters {
    /// Whether nothing is attached.
    pub fn is_empty(&self) -> bool {
        self.after_attention.is_none() && self.after_ffn.is_none() && self.beside_ffn.is_none()
    }

    /// Every adapter cut off from the gradient graph.
    pub fn for_inference(&self) -> Self {
        Self {
            after_attention: self.after_attention.as_ref().map(Adapter::for_inference),
            after_ffn: self.after_ffn.as_ref().map(Adapter::for_inference),
            beside_ffn: self.beside_ffn.as_ref().map(Adapter::for_inference),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn frozen_weight_gradient_matches_plain_matmul_and_skips_the_weight() {
        let dev = Device::Cpu;
        let x = Var::randn(0f64, 1.0, (5, 4), &dev).unwrap();
        let w = Tensor::randn(0f64, 1.0, (3, 4), &dev).unwrap();
        let y = matmul_t(x.as_tensor(), &w).unwrap();
        let plain = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        let diff = (&y - &plain).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f64>().unwrap(), 0.0);
        let c = Tensor::randn(0f64, 1.0, (5, 3), &dev).unwrap();
        let grads = (y * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = grads.get(x.as_tensor()).unwrap();
        let want = c.matmul(&w).unwrap();
        let diff = (gx - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
        // Only x and the nodes between x and the loss hold gradients: nothing weight-shaped.
        assert!(grads
            .get_ids()
            .filter_map(|id| grads.get_id(*id))
            .all(|g| g.dims() != [3, 4] && g.dims() != [4, 3]));
    }

    #[test]
    fn lora_slices_land_on_their_outputs() {
        let dev = Device::Cpu;
        let w = Tensor::zeros((6, 2), DType::F64, &dev).unwrap();
        let ones = |r, c| Tensor::ones((r, c), DType::F64, &dev).unwrap();
        let mut lin = Linear::new(w);
        lin.lora.push(LoraFactors {
            offset: 4,
            a: ones(1, 2),
            b: ones(2, 1),
            scale: 0.5,
            dropout: 0.0,
        });
        lin.lora.push(LoraFactors {
            offset: 1,
            a: ones(1, 2),
            b: ones(1, 1),
            scale: 1.0,
            dropout: 0.0,
        });
        let x = Tensor::new(&[[1f64, 2.0]], &dev).unwrap();
        let y: Vec<f64> = lin
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(y, vec![0.0, 3.0, 0.0, 0.0, 1.5, 1.5]);
    }
}
