//! BBT's random projection: `prompt = A·z + p0`, with `A` (`L * hidden` x `d`) drawn from a seed,
//! so server and client can each regenerate it and only `z` travels; and BBTv2's deep variant,
//! one projection per layer whose prompt is added to the hidden states entering that layer.
//!
//! `A`, `z` and `A·z + p0` stay f32 whatever the model's dtype: the prompt is cast once, where
//! it enters the model, so CMA-ES's small late steps are not rounded away.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution as _, Normal, Uniform};

use crate::engine::Prompt;
use crate::protocol::{Distribution, ProjectionSpec};

/// `rows x d` entries of standard deviation `std` from `distribution`, seeded (ChaCha8: the same
/// on every machine).
fn draw_matrix(
    distribution: Distribution,
    seed: u64,
    std: f64,
    (rows, d): (usize, usize),
    device: &Device,
) -> anyhow::Result<Tensor> {
    anyhow::ensure!(
        std.is_finite() && std >= 0.0,
        "projection scale must be finite and >= 0"
    );
    let n = rows * d;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f32> = match distribution {
        Distribution::Normal => {
            let dist = Normal::new(0.0, std as f32)?;
            (0..n).map(|_| dist.sample(&mut rng)).collect()
        }
        Distribution::Uniform => {
            // Uniform(-a, a) has standard deviation a / sqrt(3).
            let a = (std * 3f64.sqrt()) as f32;
            if a == 0.0 {
                vec![0.0; n]
            } else {
                let dist = Uniform::new(-a, a)?;
                (0..n).map(|_| dist.sample(&mut rng)).collect()
            }
        }
    };
    Ok(Tensor::from_vec(values, (rows, d), device)?)
}

/// `[count, d]` candidates times `Aᵀ`, as `count` matrices `[L, hidden]` (f32).
fn project(
    matrix: &Tensor,
    z: &Tensor,
    prompt_length: usize,
    hidden: usize,
) -> anyhow::Result<Tensor> {
    let d = matrix.dim(1)?;
    anyhow::ensure!(z.dim(1)? == d, "z must have {d} columns");
    let z = z.to_device(matrix.device())?.to_dtype(DType::F32)?;
    // [count, L * hidden] = z · Aᵀ
    let flat = z.matmul(&matrix.t()?)?;
    Ok(flat.reshape((z.dim(0)?, prompt_length, hidden))?)
}

/// A generated projection and the prompt offset.
pub struct Projection {
    /// `[L * hidden, d]`, f32.
    matrix: Tensor,
    /// `[L, hidden]`, f32.
    p0: Tensor,
    prompt_length: usize,
    hidden: usize,
    /// The model's dtype, which prompts are cast to.
    dtype: DType,
}

impl Projection {
    /// The entries' standard deviation: the spec's `scale`, else the BBT reference code's
    /// `std(word embeddings) / sqrt(d)` (alpha = sigma = 1).
    pub fn entry_std(spec: &ProjectionSpec, embedding_std: f64) -> f64 {
        spec.scale
            .unwrap_or(embedding_std / (spec.intrinsic_dim as f64).sqrt())
    }

    /// Draws `A` from `spec` (ChaCha8 seeded with `spec.seed`: the same on every machine).
    pub fn new(
        spec: &ProjectionSpec,
        prompt_length: usize,
        hidden: usize,
        embedding_std: f64,
        p0: Tensor,
        device: &Device,
        dtype: DType,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(spec.intrinsic_dim > 0, "intrinsic_dim must be at least 1");
        anyhow::ensure!(
            p0.dims() == [prompt_length, hidden],
            "p0 must be [{prompt_length}, {hidden}], got {:?}",
            p0.dims()
        );
        let std = Self::entry_std(spec, embedding_std);
        let matrix = draw_matrix(
            spec.distribution,
            spec.seed,
            std,
            (prompt_length * hidden, spec.intrinsic_dim),
            device,
        )?;
        Ok(Self {
            matrix,
            p0: p0.to_device(device)?.to_dtype(DType::F32)?,
            prompt_length,
            hidden,
            dtype,
        })
    }

    /// Intrinsic dimension `d`.
    pub fn intrinsic_dim(&self) -> usize {
        self.matrix.dims()[1]
    }

    /// Prompts `A·z + p0` for candidates `z` (`[count, d]`).
    pub fn prompts(&self, z: &Tensor) -> anyhow::Result<Vec<Prompt>> {
        let all = project(&self.matrix, z, self.prompt_length, self.hidden)?
            .broadcast_add(&self.p0)?
            .to_dtype(self.dtype)?;
        (0..all.dim(0)?)
            .map(|c| Ok(Prompt::new(all.get(c)?)))
            .collect()
    }

    /// Bytes held by `A`.
    pub fn bytes(&self) -> usize {
        self.matrix.elem_count() * self.matrix.dtype().size_in_bytes()
    }
}

/// BBTv2's deep prompt: layer `l` has its own projection `A_l`, and its prompt `A_l·z_l` is
/// added to the hidden states at the prompt's positions as they enter layer `l` (layer 0: to
/// the input embeddings `p0`). The matrices are drawn when a layer is evaluated, not kept: all
/// of them would take `layers * L * hidden * d` floats (1.7 GB for the default model).
pub struct DeepProjection {
    spec: ProjectionSpec,
    /// Entry standard deviation of each layer's `A_l`.
    layer_std: Vec<f64>,
    /// `[L, hidden]`, f32: the embeddings at the prompt positions.
    p0: Tensor,
    prompt_length: usize,
    hidden: usize,
    dtype: DType,
}

impl DeepProjection {
    /// The projections of `spec` with entry std `layer_std[l]` for layer `l` (see
    /// [`DeepProjection::layer_std`]) around the input `p0`.
    pub fn new(
        spec: &ProjectionSpec,
        prompt_length: usize,
        hidden: usize,
        layer_std: Vec<f64>,
        p0: Tensor,
        dtype: DType,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(spec.intrinsic_dim > 0, "intrinsic_dim must be at least 1");
        anyhow::ensure!(
            !layer_std.is_empty(),
            "a deep prompt needs at least one layer"
        );
        anyhow::ensure!(
            p0.dims() == [prompt_length, hidden],
            "p0 must be [{prompt_length}, {hidden}], got {:?}",
            p0.dims()
        );
        anyhow::ensure!(
            layer_std.iter().all(|s| s.is_finite() && *s >= 0.0),
            "projection scales must be finite and >= 0"
        );
        Ok(Self {
            spec: spec.clone(),
            layer_std,
            p0: p0.to_dtype(DType::F32)?,
            prompt_length,
            hidden,
            dtype,
        })
    }

    /// Each layer's entry std, as the BBTv2 reference code sets it: `spread_l / sqrt(d)` where
    /// `spread_0` is the word embeddings' std and `spread_l` (l > 0) that of the hidden states
    /// entering layer `l` ([`crate::Engine::layer_input_spread`]); the spec's `scale`, when
    /// given, replaces all of them; its `gain` multiplies them.
    pub fn layer_std(spec: &ProjectionSpec, embedding_std: f64, spreads: &[f64]) -> Vec<f64> {
        let per_d = spec.gain.unwrap_or(1.0) / (spec.intrinsic_dim as f64).sqrt();
        (0..spreads.len())
            .map(|l| match (spec.scale, l) {
                (Some(s), _) => s,
                (None, 0) => embedding_std * per_d,
                (None, _) => spreads[l] * per_d,
            })
            .collect()
    }

    /// Layer `l`'s seed: the spec's seed for layer 0, then one stream per layer.
    pub fn layer_seed(seed: u64, layer: usize) -> u64 {
        seed.wrapping_add((layer as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layer_std.len()
    }

    /// Intrinsic dimension `d` of every layer.
    pub fn intrinsic_dim(&self) -> usize {
        self.spec.intrinsic_dim
    }

    /// The entry std of every layer's matrix.
    pub fn scales(&self) -> &[f64] {
        &self.layer_std
    }

    /// Layer `layer`'s prompt offsets `A_l·z` for candidates `z` (`[count, d]`):
    /// `[count, L, hidden]`, f32.
    pub fn layer_offsets(&self, layer: usize, z: &Tensor) -> anyhow::Result<Tensor> {
        let std = *self
            .layer_std
            .get(layer)
            .ok_or_else(|| anyhow::anyhow!("layer {layer} out of range"))?;
        let matrix = draw_matrix(
            self.spec.distribution,
            Self::layer_seed(self.spec.seed, layer),
            std,
            (self.prompt_length * self.hidden, self.spec.intrinsic_dim),
            z.device(),
        )?;
        project(&matrix, z, self.prompt_length, self.hidden)
    }

    /// Prompts for candidates `z` of layer `layer`, every other layer at its row of `fixed`
    /// (`[layers, L, hidden]`, f32).
    pub fn prompts(&self, layer: usize, z: &Tensor, fixed: &Tensor) -> anyhow::Result<Vec<Prompt>> {
        let layers = self.num_layers();
        anyhow::ensure!(
            fixed.dims() == [layers, self.prompt_length, self.hidden],
            "fixed layers must be [{layers}, {}, {}]",
            self.prompt_length,
            self.hidden
        );
        let offsets = self.layer_offsets(layer, z)?;
        let embeddings = self.p0.to_dtype(self.dtype)?;
        (0..offsets.dim(0)?)
            .map(|c| {
                let mut parts = Vec::with_capacity(3);
                if layer > 0 {
                    parts.push(fixed.narrow(0, 0, layer)?);
                }
                parts.push(offsets.narrow(0, c, 1)?);
                if layer + 1 < layers {
                    parts.push(fixed.narrow(0, layer + 1, layers - layer - 1)?);
                }
                let deep = Tensor::cat(&parts, 0)?.to_dtype(self.dtype)?;
                Ok(Prompt {
                    embeddings: embeddings.clone(),
                    deep: Some(deep),
                })
            })
            .collect()
    }

    /// Prompts for whole deep candidates `z` (`[count, layers * d]`, layer by layer): each
    /// layer's offsets `A_l·z_l` from its own part of the candidate.
    pub fn whole_prompts(&self, z: &Tensor) -> anyhow::Result<Vec<Prompt>> {
        let (layers, d) = (self.num_layers(), self.spec.intrinsic_dim);
        anyhow::ensure!(
            z.dim(1)? == layers * d,
            "whole deep candidates must have {layers} x {d} numbers"
        );
        // [count, layers, L, hidden]
        let offsets = (0..layers)
            .map(|l| self.layer_offsets(l, &z.narrow(1, l * d, d)?))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let offsets = Tensor::stack(&offsets, 1)?.to_dtype(self.dtype)?;
        let embeddings = self.p0.to_dtype(self.dtype)?;
        (0..offsets.dim(0)?)
            .map(|c| {
                Ok(Prompt {
                    embeddings: embeddings.clone(),
                    deep: Some(offsets.get(c)?),
                })
            })
            .collect()
    }

    /// Zero offsets at every layer: `[layers, L, hidden]`, f32, where a session starts.
    pub fn zero_layers(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::zeros(
            (self.num_layers(), self.prompt_length, self.hidden),
            DType::F32,
            device,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(distribution: Distribution, seed: u64) -> ProjectionSpec {
        ProjectionSpec {
            intrinsic_dim: 50,
            seed,
            distribution,
            scale: None,
            gain: None,
        }
    }

    fn zeros(l: usize, h: usize) -> Tensor {
        Tensor::zeros((l, h), DType::F32, &Device::Cpu).unwrap()
    }

    /// `A` for 4 prompt vectors of width 30, embedding std 0.5, and its entries.
    fn draw(dist: Distribution, seed: u64, p0: Tensor) -> (Projection, Vec<f32>) {
        let p =
            Projection::new(&spec(dist, seed), 4, 30, 0.5, p0, &Device::Cpu, DType::F32).unwrap();
        let entries = p.matrix.flatten_all().unwrap().to_vec1().unwrap();
        (p, entries)
    }

    #[test]
    fn seeded_scaled_and_affine_in_z() {
        for dist in [Distribution::Normal, Distribution::Uniform] {
            let (_, a) = draw(dist, 7, zeros(4, 30));
            assert_eq!(a, draw(dist, 7, zeros(4, 30)).1);
            let mean = a.iter().sum::<f32>() / a.len() as f32;
            let std = (a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / a.len() as f32).sqrt();
            let want = 0.5 / 50f32.sqrt();
            assert!(
                (std - want).abs() < 0.05 * want,
                "{dist:?}: std {std} vs {want}"
            );
            assert_ne!(a, draw(dist, 8, zeros(4, 30)).1);
        }
        // With z = 0 the prompt is p0.
        let (p, _) = draw(
            Distribution::Normal,
            1,
            Tensor::ones((4, 30), DType::F32, &Device::Cpu).unwrap(),
        );
        let z = Tensor::zeros((2, 50), DType::F32, &Device::Cpu).unwrap();
        let prompts = p.prompts(&z).unwrap();
        assert_eq!(prompts.len(), 2);
        assert_eq!(
            prompts[1]
                .embeddings
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            120.0
        );
    }

    #[test]
    fn a_bf16_model_gets_prompts_computed_in_f32_and_rounded_once() {
        let dev = Device::Cpu;
        let p0 = Tensor::randn(0f32, 0.3, (4, 30), &dev).unwrap();
        let z = Tensor::randn(0f32, 1.0, (3, 50), &dev).unwrap();
        let new = |dtype| {
            Projection::new(
                &spec(Distribution::Normal, 5),
                4,
                30,
                0.5,
                p0.clone(),
                &dev,
                dtype,
            )
            .unwrap()
        };
        let (wide, narrow) = (new(DType::F32), new(DType::BF16));
        assert_eq!(narrow.matrix.dtype(), DType::F32, "A stays f32");
        let flat = |p: &Prompt| -> Vec<f32> {
            let e = &p.embeddings;
            e.to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        for (w, n) in wide
            .prompts(&z)
            .unwrap()
            .iter()
            .zip(narrow.prompts(&z).unwrap())
        {
            assert_eq!(
                n.embeddings.dtype(),
                DType::BF16,
                "cast at the model's boundary"
            );
            let rounded = Prompt::new(w.embeddings.to_dtype(DType::BF16).unwrap());
            assert_eq!(flat(&n), flat(&rounded), "one rounding of the f32 result");
        }
        // BBTv2's deep prompts likewise.
        let deep = |dtype| {
            DeepProjection::new(
                &spec(Distribution::Normal, 6),
                4,
                30,
                vec![0.1, 0.2],
                p0.clone(),
                dtype,
            )
            .unwrap()
        };
        let fixed = Tensor::randn(0f32, 0.2, (2, 4, 30), &dev).unwrap();
        let wide = deep(DType::F32).prompts(1, &z, &fixed).unwrap();
        let narrow = deep(DType::BF16).prompts(1, &z, &fixed).unwrap();
        for (w, n) in wide.iter().zip(&narrow) {
            let (w, n) = (w.deep.as_ref().unwrap(), n.deep.as_ref().unwrap());
            assert_eq!(n.dtype(), DType::BF16);
            let rounded = w
                .to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let n = n.to_dtype(DType::F32).unwrap();
            let same = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(same(&n), same(&rounded));
        }
    }

    #[test]
    fn deep_prompts_replace_only_the_evaluated_layer() {
        let spec = spec(Distribution::Normal, 3);
        let layers = 3;
        let deep = DeepProjection::new(&spec, 4, 30, vec![0.1, 0.2, 0.3], zeros(4, 30), DType::F32)
            .unwrap();
        let fixed = Tensor::ones((layers, 4, 30), DType::F32, &Device::Cpu).unwrap();
        let z = Tensor::ones((2, 50), DType::F32, &Device::Cpu).unwrap();
        let prompts = deep.prompts(1, &z, &fixed).unwrap();
        assert_eq!(prompts.len(), 2);
        let d = prompts[0].deep.as_ref().unwrap();
        assert_eq!(d.dims(), [layers, 4, 30]);
        // Row `i` of a tensor, flattened.
        let row_of = |t: &Tensor, i: usize| -> Vec<f32> {
            t.get(i).unwrap().flatten_all().unwrap().to_vec1().unwrap()
        };
        assert!(row_of(d, 0).iter().chain(&row_of(d, 2)).all(|&x| x == 1.0));
        let want = row_of(&deep.layer_offsets(1, &z).unwrap(), 0);
        assert_eq!(row_of(d, 1), want);
        // Each layer draws its own matrix, at its own scale.
        let other = row_of(&deep.layer_offsets(2, &z).unwrap(), 0);
        assert_ne!(want, other);
        let spread = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        let ratio = spread(&other) / spread(&want);
        assert!((ratio - 1.5).abs() < 0.15, "scale ratio {ratio}");
        // The default scales: the embeddings' for layer 0, the hidden states' above.
        assert_eq!(
            DeepProjection::layer_std(&spec, 0.7, &[9.0, 2.0, 4.0]),
            vec![0.7 / 50f64.sqrt(), 2.0 / 50f64.sqrt(), 4.0 / 50f64.sqrt()]
        );
        let gained = ProjectionSpec {
            gain: Some(2.0),
            ..spec.clone()
        };
        assert_eq!(
            DeepProjection::layer_std(&gained, 0.7, &[9.0, 2.0]),
            vec![1.4 / 50f64.sqrt(), 4.0 / 50f64.sqrt()]
        );
    }
}
