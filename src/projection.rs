//! BBT's random projection: `prompt = A·z + p0`, with `A` (`L * hidden` x `d`) drawn from a seed,
//! so server and client can each regenerate it and only `z` travels.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution as _, Normal, Uniform};

use crate::engine::Prompt;
use crate::protocol::{Distribution, ProjectionSpec};

/// A generated projection and the prompt offset.
pub struct Projection {
    /// `[L * hidden, d]`.
    matrix: Tensor,
    /// `[L, hidden]`.
    p0: Tensor,
    prompt_length: usize,
    hidden: usize,
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
        anyhow::ensure!(
            std.is_finite() && std >= 0.0,
            "projection scale must be finite and >= 0"
        );
        let n = prompt_length * hidden * spec.intrinsic_dim;
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let values: Vec<f32> = match spec.distribution {
            Distribution::Normal => {
                let d = Normal::new(0.0, std as f32)?;
                (0..n).map(|_| d.sample(&mut rng)).collect()
            }
            Distribution::Uniform => {
                // Uniform(-a, a) has standard deviation a / sqrt(3).
                let a = (std * 3f64.sqrt()) as f32;
                if a == 0.0 {
                    vec![0.0; n]
                } else {
                    let d = Uniform::new(-a, a)?;
                    (0..n).map(|_| d.sample(&mut rng)).collect()
                }
            }
        };
        let matrix =
            Tensor::from_vec(values, (prompt_length * hidden, spec.intrinsic_dim), device)?
                .to_dtype(dtype)?;
        Ok(Self {
            matrix,
            p0: p0.to_device(device)?.to_dtype(dtype)?,
            prompt_length,
            hidden,
        })
    }

    /// Intrinsic dimension `d`.
    pub fn intrinsic_dim(&self) -> usize {
        self.matrix.dims()[1]
    }

    /// Prompts `A·z + p0` for candidates `z` (`[count, d]`).
    pub fn prompts(&self, z: &Tensor) -> anyhow::Result<Vec<Prompt>> {
        let count = z.dim(0)?;
        anyhow::ensure!(
            z.dim(1)? == self.intrinsic_dim(),
            "z must have {} columns",
            self.intrinsic_dim()
        );
        let z = z
            .to_device(self.matrix.device())?
            .to_dtype(self.matrix.dtype())?;
        // [count, L * hidden] = z · Aᵀ
        let flat = z.matmul(&self.matrix.t()?)?;
        (0..count)
            .map(|c| {
                let p = flat.get(c)?.reshape((self.prompt_length, self.hidden))?;
                Ok(Prompt::new((p + &self.p0)?))
            })
            .collect()
    }

    /// Bytes held by `A`.
    pub fn bytes(&self) -> usize {
        self.matrix.elem_count() * self.matrix.dtype().size_in_bytes()
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
}
