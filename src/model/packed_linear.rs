//! A linear layer's frozen weight prepared for the CPU's BLAS ([`crate::blas`]) once at load,
//! and the op that multiplies by it: prepacked in the model's matmul precision for oneMKL and
//! oneDNN, used in place (row-major `[out, in]`) by OpenBLAS.
//!
//! The prepared weight remembers which weight tensor it was made from: when a training method
//! swaps in a trainable copy of the weight, the copy no longer matches and the layer runs the
//! ordinary matmul on it.

use std::sync::Arc;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Storage, Tensor, TensorId,
};
use half::bf16;

use crate::blas::{matmul_nt, sgemm, Blas, PackedWeight, Precision};

/// A weight prepared for a BLAS library.
#[derive(Clone)]
pub struct CpuWeight {
    source: TensorId,
    /// oneMKL's or oneDNN's packed copy; `None` for libraries that read the weight in place.
    packed: Option<Arc<PackedWeight>>,
    /// Unpacked bf16 models: inputs are rounded to bf16 before the f32 product (the weight was
    /// rounded when prepared).
    round_inputs: bool,
    blas: &'static Blas,
}

impl CpuWeight {
    /// Prepares `weight` (`[out, in]`, f32 on the CPU) for `blas` in `precision`.
    pub fn prepare(
        blas: &'static Blas,
        weight: &Tensor,
        precision: Precision,
    ) -> candle_core::Result<Self> {
        let (out, inp) = weight.dims2()?;
        let packed = match blas.packs_weights() {
            true => {
                let data = weight
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let packed =
                    PackedWeight::pack(blas, &data, out, inp, precision).map_err(blas_error)?;
                Some(Arc::new(packed))
            }
            false => None,
        };
        Ok(Self {
            source: weight.id(),
            round_inputs: packed.is_none() && precision == Precision::Bf16,
            packed,
            blas,
        })
    }

    /// Whether this was prepared from `weight` (not from a weight since replaced).
    pub fn prepares(&self, weight: &Tensor) -> bool {
        self.source == weight.id() && !weight.is_variable()
    }

    /// Whether this was prepared for `blas`.
    pub fn is_for(&self, blas: &Blas) -> bool {
        std::ptr::eq(self.blas, blas)
    }

    /// Bytes of the packed copy (0 when the weight is used in place).
    pub fn bytes(&self) -> usize {
        self.packed.as_ref().map_or(0, |p| p.bytes())
    }

    /// `x @ W^T` for `x` `[n, in]` (f32, CPU); differentiable in `x` (the gradient is
    /// `grad @ W`, with `weight` the tensor this was prepared from).
    pub fn matmul_t(&self, x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1(BlasLinear {
            prepared: self.clone(),
            weight: weight.clone(),
        })
    }
}

/// `x @ W^T` through a prepared weight (the weight is held by the op, not a graph input).
struct BlasLinear {
    prepared: CpuWeight,
    weight: Tensor,
}

impl CustomOp1 for BlasLinear {
    fn name(&self) -> &'static str {
        "blas-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = x else {
            candle_core::bail!("blas-linear: f32 input needed");
        };
        let Some((start, end)) = lx.contiguous_offsets() else {
            candle_core::bail!("blas-linear: input must be contiguous");
        };
        let x = &data[start..end];
        let (m, k) = lx.shape().dims2()?;
        let (n, k_w) = self.weight.dims2()?;
        if k != k_w {
            candle_core::bail!("linear: input has {k} features, the weight {k_w}");
        }
        let p = &self.prepared;
        let y = match &p.packed {
            Some(packed) => packed.matmul_t(p.blas, x, m).map_err(blas_error)?,
            None => {
                let rounded: Vec<f32>;
                let x = if p.round_inputs {
                    rounded = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
                    &rounded
                } else {
                    x
                };
                with_f32_slice(&self.weight, |w| matmul_nt(p.blas, x, w, m, k, n))
                    .ok_or_else(|| candle_core::Error::Msg("blas-linear: weight not f32".into()))?
                    .map_err(blas_error)?
            }
        };
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let (m, n) = grad.dims2()?;
        let k = self.weight.dim(1)?;
        let dx = with_f32_slice(&grad, |g| {
            with_f32_slice(&self.weight, |w| sgemm(self.prepared.blas, g, w, m, n, k))
        });
        let Some(Some(dx)) = dx else {
            return Ok(Some(grad.matmul(&self.weight)?));
        };
        Ok(Some(Tensor::from_vec(
            dx.map_err(blas_error)?,
            (m, k),
            grad.device(),
        )?))
    }
}

/// A BLAS library's failure as a candle error.
fn blas_error(e: anyhow::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("CPU matmul: {e:#}"))
}

/// `x @ W^T` for a weight being trained (a variable, `[out, in]`, f32 on the CPU) through
/// `blas`'s plain sgemm: the weight changes every step, so it is read in place, not packed.
/// Differentiable in both: `dx = g @ W`, `dW = g^T @ x`, each one sgemm.
pub fn trainable_matmul_t(
    blas: &'static Blas,
    x: &Tensor,
    weight: &Tensor,
) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, TrainableLinear { blas })
}

/// `x @ W^T` with the weight as the op's second input (so it gets a gradient).
struct TrainableLinear {
    blas: &'static Blas,
}

impl CustomOp2 for TrainableLinear {
    fn name(&self) -> &'static str {
        "blas-trainable-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (x, w) else {
            candle_core::bail!("blas-trainable-linear: f32 inputs needed");
        };
        let (Some((xs, xe)), Some((ws, we))) = (lx.contiguous_offsets(), lw.contiguous_offsets())
        else {
            candle_core::bail!("blas-trainable-linear: inputs must be contiguous");
        };
        let (m, k) = lx.shape().dims2()?;
        let (n, k_w) = lw.shape().dims2()?;
        if k != k_w {
            candle_core::bail!("linear: input has {k} features, the weight {k_w}");
        }
        let y = matmul_nt(self.blas, &x[xs..xe], &w[ws..we], m, k, n).map_err(blas_error)?;
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (m, n) = grad.dims2()?;
        let k = w.dim(1)?;
        // dW = g^T @ x: the gradient transposed once (`[n, m]`, small next to the product).
        let grad_t = grad.t()?.contiguous()?;
        let products = with_f32_slice(&grad, |g| {
            with_f32_slice(w, |w| sgemm(self.blas, g, w, m, n, k))
        })
        .zip(with_f32_slice(&grad_t, |gt| {
            with_f32_slice(x, |x| sgemm(self.blas, gt, x, n, m, k))
        }));
        let Some((Some(dx), Some(dw))) = products else {
            return Ok((Some(grad.matmul(w)?), Some(grad_t.matmul(x)?)));
        };
        Ok((
            Some(Tensor::from_vec(
                dx.map_err(blas_error)?,
                (m, k),
                grad.device(),
            )?),
            Some(Tensor::from_vec(
                dw.map_err(blas_error)?,
                (n, k),
                grad.device(),
            )?),
        ))
    }
}

/// Runs `f` on the f32 elements of a contiguous CPU tensor (`None` for any other tensor).
fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return None;
    };
    let (start, end) = layout.contiguous_offsets()?;
    Some(f(&data[start..end]))
}

/// Rounds an f32 tensor's values to bf16 (nearest even), keeping f32 storage: what a bf16
/// model's matmul inputs become on the candle path, matching the BLAS paths.
pub fn round_to_bf16(x: &Tensor) -> candle_core::Result<Tensor> {
    x.to_dtype(DType::BF16)?.to_dtype(DType::F32)
}
