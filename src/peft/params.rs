//! What every tuner builds with: named trainable parameters, seeded initial values, and the
//! [`Attachment`] in which a tuner registers its parameters and plugs them into the model.

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

use super::past::TrainablePast;
use crate::engine::Engine;
use crate::model::weights::DecoderWeights;
use crate::protocol::Placement;

/// One named trainable tensor.
pub struct Param {
    /// A stable name: the key in saved safetensors files and checkpoints.
    pub name: String,
    /// Its value, tracked for gradients.
    pub var: Var,
}

/// Seeded draws of initial values, as tensors in the model's dtype and device.
pub struct Init {
    /// The seeded stream every draw comes from, in the order the tuner draws.
    pub rng: ChaCha8Rng,
    device: Device,
    dtype: DType,
}

impl Init {
    /// Draws from `seed` for `engine`'s device and dtype.
    pub fn new(engine: &Engine, seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            device: engine.device().clone(),
            dtype: engine.dtype(),
        }
    }

    fn tensor(&mut self, dims: &[usize], draw: impl Fn(&mut ChaCha8Rng) -> f32) -> Tensor {
        let n: usize = dims.iter().product();
        let values: Vec<f32> = (0..n).map(|_| draw(&mut self.rng)).collect();
        Tensor::from_vec(values, dims, &Device::Cpu)
            .and_then(|t| t.to_device(&self.device))
            .and_then(|t| t.to_dtype(self.dtype))
            .expect("shape matches the values")
    }

    /// PyTorch's default `nn.Linear` / kaiming-uniform(a = sqrt 5) init: U(-1/sqrt(in), 1/sqrt(in)).
    pub fn kaiming(&mut self, dims: &[usize], fan_in: usize) -> Tensor {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let u = Uniform::new_inclusive(-bound, bound).expect("valid bounds");
        self.tensor(dims, |r| u.sample(r))
    }

    /// Independent N(0, std²) values.
    pub fn normal(&mut self, dims: &[usize], std: f32) -> Tensor {
        let n = Normal::new(0.0, std).expect("valid std");
        self.tensor(dims, |r| n.sample(r))
    }

    /// Zeros.
    pub fn zeros(&self, dims: &[usize]) -> Tensor {
        Tensor::zeros(dims, self.dtype, &self.device).expect("zeros")
    }
}

/// Trainable input vectors (prompt tuning) and where they go.
pub struct TrainablePrompt {
    /// `[L, hidden]`.
    pub embeddings: Tensor,
    /// Before the text (prefix) or before the template's tail (suffix).
    pub placement: Placement,
}

/// A model under construction by a tuner: the parameters registered so far, the weights with
/// the pieces attached, and the pieces the forward takes beside the weights.
pub struct Attachment<'e> {
    /// The model the method attaches to (for its shapes and to embed or run tokens).
    pub engine: &'e Engine,
    /// Initial values.
    pub init: Init,
    /// The parameters registered so far, in registration order.
    pub params: Vec<Param>,
    /// The model's weights with the method's trainable pieces attached (or made trainable).
    pub weights: DecoderWeights,
    /// Prompt tuning's input vectors.
    pub prompt: Option<TrainablePrompt>,
    /// The keys/values of prefix tuning, P-tuning v2 and MAM.
    pub past: Option<TrainablePast>,
    /// Trainable label-word rows `[words, hidden]` of the output head (norm tuning).
    pub head: Option<Tensor>,
    /// What a user should know about how the method was applied to this model.
    pub notes: Vec<String>,
}

impl<'e> Attachment<'e> {
    /// Nothing attached yet to `engine`'s model; initial values drawn from `seed`.
    pub fn new(engine: &'e Engine, seed: u64) -> Self {
        Self {
            engine,
            init: Init::new(engine, seed),
            params: Vec::new(),
            weights: engine.weights().clone(),
            prompt: None,
            past: None,
            head: None,
            notes: Vec::new(),
        }
    }

    /// Registers `value` as a trainable parameter named `name`; returns the tensor to use.
    pub fn add(&mut self, name: &str, value: &Tensor) -> candle_core::Result<Tensor> {
        let var = Var::from_tensor(value)?;
        let tensor = var.as_tensor().clone();
        self.params.push(Param {
            name: name.to_string(),
            var,
        });
        Ok(tensor)
    }

    /// Replaces the weight at `slot` with a trainable copy named `name`.
    pub fn make_trainable(
        &mut self,
        name: &str,
        slot: impl Fn(&mut DecoderWeights) -> &mut Tensor,
    ) -> candle_core::Result<()> {
        let value = slot(&mut self.weights).clone();
        let var = Var::from_tensor(&value)?;
        *slot(&mut self.weights) = var.as_tensor().clone();
        self.params.push(Param {
            name: name.to_string(),
            var,
        });
        Ok(())
    }

    /// Makes the norm weights of layer `li` trainable.
    pub fn make_layer_norms_trainable(&mut self, li: usize) -> candle_core::Result<()> {
        let names: Vec<&'static str> = self.weights.layers[li]
            .norms_mut()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for (k, name) in names.into_iter().enumerate() {
            self.make_trainable(&format!("layers.{li}.{name}"), move |w| {
                w.layers[li].norms_mut().swap_remove(k).1
            })?;
        }
        Ok(())
    }

    /// `n` token ids drawn uniformly from the first 5,000 of the vocabulary (frequent tokens),
    /// the starting point of prompt tuning and P-tuning v2.
    pub fn sample_tokens(&mut self, n: usize) -> Vec<u32> {
        use rand::Rng;
        let vocab = self.engine.config().vocab_size.min(5000) as u32;
        (0..n)
            .map(|_| self.init.rng.random_range(0..vocab))
            .collect()
    }
}
