//! A method's trainable parameters and how the model runs with them: the one place that knows
//! where each method plugs into the engine (prompt segments, a trainable past of keys/values,
//! LoRA factors, biases and adapters on the weights, trainable weights themselves).

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

use super::config::{Method, MethodConfig};
use crate::engine::{Engine, Prompt, Readout, Row, Segment};
use crate::model::decoder::KvCache;
use crate::model::linear::{matmul_t, Adapter, LoraFactors};
use crate::model::weights::{DecoderWeights, Proj};
use crate::protocol::Placement;
use crate::scoring::EncodedSplit;
use crate::tasks::Verbalizer;

/// One named trainable tensor.
pub struct Param {
    /// A stable name: the key in saved safetensors files and checkpoints.
    pub name: String,
    pub var: Var,
}

/// Trainable keys/values at every layer.
enum Prefix {
    /// P-tuning v2: one `[1, kv_heads, L, head_dim]` key and value tensor per layer.
    Direct(Vec<(Tensor, Tensor)>),
    /// Prefix tuning: embeddings `[L, hidden]` -> `tanh(E W1^T + b1) W2^T + b2`, which holds every
    /// layer's keys and values (Li & Liang's reparameterisation, laid out as HF peft does).
    Mlp {
        embedding: Tensor,
        w1: Tensor,
        b1: Tensor,
        w2: Tensor,
        b2: Tensor,
    },
}

/// A method's parameters, attached to the model.
pub struct Trainable {
    config: MethodConfig,
    params: Vec<Param>,
    /// The model's weights with the method's trainable pieces attached (or made trainable).
    weights: DecoderWeights,
    /// Prompt tuning: the `[L, hidden]` prompt.
    prompt: Option<Tensor>,
    prefix: Option<Prefix>,
    /// Norm tuning: trainable label-word rows `[words, hidden]` of the output head.
    head: Option<Tensor>,
    verbalizer: Verbalizer,
    bos: Vec<u32>,
    /// `(kv_heads, head_dim)` of the model's attention.
    kv_shape: (usize, usize),
    notes: Vec<String>,
}

/// Seeded draws of initial values, as tensors in the model's dtype and device.
struct Init {
    rng: ChaCha8Rng,
    device: Device,
    dtype: DType,
}

impl Init {
    fn tensor(&mut self, dims: &[usize], draw: impl Fn(&mut ChaCha8Rng) -> f32) -> Tensor {
        let n: usize = dims.iter().product();
        let values: Vec<f32> = (0..n).map(|_| draw(&mut self.rng)).collect();
        self.finish(values, dims)
    }

    fn finish(&self, values: Vec<f32>, dims: &[usize]) -> Tensor {
        Tensor::from_vec(values, dims, &Device::Cpu)
            .and_then(|t| t.to_device(&self.device))
            .and_then(|t| t.to_dtype(self.dtype))
            .expect("shape matches the values")
    }

    /// PyTorch's default `nn.Linear` / kaiming-uniform(a = sqrt 5) init: U(-1/sqrt(in), 1/sqrt(in)).
    fn kaiming(&mut self, dims: &[usize], fan_in: usize) -> Tensor {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let u = Uniform::new_inclusive(-bound, bound).expect("valid bounds");
        self.tensor(dims, |r| u.sample(r))
    }

    fn normal(&mut self, dims: &[usize], std: f32) -> Tensor {
        let n = Normal::new(0.0, std).expect("valid std");
        self.tensor(dims, |r| n.sample(r))
    }

    fn zeros(&self, dims: &[usize]) -> Tensor {
        Tensor::zeros(dims, self.dtype, &self.device).expect("zeros")
    }
}

impl Trainable {
    /// Creates `config.method`'s parameters for `engine`'s model, initialised from `seed`.
    /// `verbalizer` holds the label words' token ids.
    pub fn new(
        engine: &Engine,
        config: &MethodConfig,
        verbalizer: &Verbalizer,
        seed: u64,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let cfg = engine.config().clone();
        let mut init = Init {
            rng: ChaCha8Rng::seed_from_u64(seed),
            device: engine.device().clone(),
            dtype: engine.dtype(),
        };
        let mut t = Self {
            config: config.clone(),
            params: Vec::new(),
            weights: engine.weights().clone(),
            prompt: None,
            prefix: None,
            head: None,
            verbalizer: verbalizer.clone(),
            bos: engine.bos_segment(),
            kv_shape: (cfg.num_kv_heads, cfg.head_dim),
            notes: Vec::new(),
        };
        let (h, kv_dim) = (cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim);
        match config.method {
            Method::ModelTuning | Method::ChildTuningF | Method::ChildTuningD => {
                t.make_all_weights_trainable()?
            }
            Method::PromptTuning => {
                // Lester et al.: initialised from the embeddings of sampled vocabulary tokens.
                let vocab = cfg.vocab_size.min(5000) as u32;
                let ids: Vec<u32> = (0..config.prompt_length)
                    .map(|_| init.rng.random_range(0..vocab))
                    .collect();
                let prompt = engine.embed_tokens(&ids)?;
                t.prompt = Some(t.add("prompt_embeddings", &prompt)?);
            }
            Method::PTuningV2 | Method::MamAdapter => {
                t.prefix = Some(Prefix::Direct(t.real_token_prefix(engine, &mut init)?));
                if config.method == Method::MamAdapter {
                    t.attach_adapters(&mut init, false, false, true)?;
                }
            }
            Method::PrefixTuning => {
                let (l, m) = (config.prefix_length, config.prefix_hidden);
                let out = cfg.num_layers * 2 * kv_dim;
                let embedding = init.normal(&[l, h], 1.0);
                let w1 = init.kaiming(&[m, h], h);
                let b1 = init.kaiming(&[m], h);
                let w2 = init.kaiming(&[out, m], m);
                let b2 = init.kaiming(&[out], m);
                t.prefix = Some(Prefix::Mlp {
                    embedding: t.add("prefix_encoder.embedding.weight", &embedding)?,
                    w1: t.add("prefix_encoder.transform.0.weight", &w1)?,
                    b1: t.add("prefix_encoder.transform.0.bias", &b1)?,
                    w2: t.add("prefix_encoder.transform.2.weight", &w2)?,
                    b2: t.add("prefix_encoder.transform.2.bias", &b2)?,
                });
            }
            Method::Lora => t.attach_lora(&mut init, &cfg)?,
            Method::Adapter => t.attach_adapters(&mut init, true, true, false)?,
            Method::ParallelAdapter => t.attach_adapters(&mut init, false, false, true)?,
            Method::Bitfit | Method::NullPrompt => {
                t.attach_biases(&init)?;
                t.notes.push(
                    "the Llama/Gemma blocks have no biases: zero-initialised biases were added \
                     to every projection (q, k, v, o, gate, up, down) and trained"
                        .into(),
                );
            }
            Method::NormTuning => t.make_norms_trainable()?,
        }
        Ok(t)
    }

    /// Registers `value` as a trainable parameter named `name`; returns the tensor to use.
    fn add(&mut self, name: &str, value: &Tensor) -> anyhow::Result<Tensor> {
        let var = Var::from_tensor(value)?;
        let tensor = var.as_tensor().clone();
        self.params.push(Param {
            name: name.to_string(),
            var,
        });
        Ok(tensor)
    }

    /// Replaces the weight at `slot` with a trainable copy named `name`.
    fn make_trainable(
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

    fn make_all_weights_trainable(&mut self) -> anyhow::Result<()> {
        self.make_trainable("embed", |w| &mut w.embed)?;
        if self.weights.lm_head.is_some() {
            self.make_trainable("lm_head", |w| w.lm_head.as_mut().expect("checked"))?;
        }
        self.make_trainable("final_norm", |w| &mut w.final_norm)?;
        for li in 0..self.weights.layers.len() {
            for (k, name) in ["wqkv", "wo", "w_gate_up", "w_down"]
                .into_iter()
                .enumerate()
            {
                self.make_trainable(&format!("layers.{li}.{name}"), move |w| {
                    &mut w.layers[li].linears_mut()[k].weight
                })?;
            }
            self.make_layer_norms_trainable(li)?;
        }
        Ok(())
    }

    fn make_layer_norms_trainable(&mut self, li: usize) -> candle_core::Result<()> {
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

    fn make_norms_trainable(&mut self) -> anyhow::Result<()> {
        self.make_trainable("final_norm", |w| &mut w.final_norm)?;
        for li in 0..self.weights.layers.len() {
            self.make_layer_norms_trainable(li)?;
        }
        let ids = Tensor::from_vec(
            self.verbalizer.ids().to_vec(),
            self.verbalizer.ids().len(),
            self.weights.embed.device(),
        )?;
        let rows = self.weights.output_head().index_select(&ids, 0)?;
        self.head = Some(self.add("verbalizer_head", &rows)?);
        Ok(())
    }

    fn attach_lora(
        &mut self,
        init: &mut Init,
        cfg: &crate::model::config::ModelConfig,
    ) -> anyhow::Result<()> {
        let c = self.config.clone();
        let mut targets: Vec<Proj> = c
            .lora_targets
            .iter()
            .filter_map(|n| Proj::parse(n))
            .collect();
        targets.sort();
        targets.dedup();
        for li in 0..self.weights.layers.len() {
            for &proj in &targets {
                let (fan_in, len) = {
                    let (lin, slot) = self.weights.layers[li].proj_mut(proj, cfg);
                    (lin.in_features(), slot.len)
                };
                let prefix = format!("base_model.model.model.layers.{li}.{}", proj.hf_module());
                let a = init.kaiming(&[c.lora_rank, fan_in], fan_in);
                let a = self.add(&format!("{prefix}.lora_A.weight"), &a)?;
                let b = self.add(
                    &format!("{prefix}.lora_B.weight"),
                    &init.zeros(&[len, c.lora_rank]),
                )?;
                let (lin, slot) = self.weights.layers[li].proj_mut(proj, cfg);
                lin.lora.push(LoraFactors {
                    offset: slot.offset,
                    a,
                    b,
                    scale: c.lora_alpha / c.lora_rank as f64,
                    dropout: c.lora_dropout,
                });
            }
        }
        Ok(())
    }

    fn attach_adapters(
        &mut self,
        init: &mut Init,
        after_attention: bool,
        after_ffn: bool,
        beside_ffn: bool,
    ) -> anyhow::Result<()> {
        let h = self.weights.embed.dim(1)?;
        let m = self.config.adapter_bottleneck;
        let scale = self.config.adapter_scale;
        for li in 0..self.weights.layers.len() {
            let mut make = |t: &mut Self, place: &str| -> anyhow::Result<Adapter> {
                let name = |p: &str| format!("layers.{li}.adapter_{place}.{p}");
                Ok(Adapter {
                    down: t.add(&name("down.weight"), &init.kaiming(&[m, h], h))?,
                    down_bias: t.add(&name("down.bias"), &init.zeros(&[m]))?,
                    up: t.add(&name("up.weight"), &init.zeros(&[h, m]))?,
                    up_bias: t.add(&name("up.bias"), &init.zeros(&[h]))?,
                    scale,
                })
            };
            let a = after_attention
                .then(|| make(self, "attention"))
                .transpose()?;
            let f = after_ffn.then(|| make(self, "ffn")).transpose()?;
            let p = beside_ffn.then(|| make(self, "parallel")).transpose()?;
            let slots = &mut self.weights.layers[li].adapters;
            slots.after_attention = a;
            slots.after_ffn = f;
            slots.beside_ffn = p;
        }
        Ok(())
    }

    fn attach_biases(&mut self, init: &Init) -> anyhow::Result<()> {
        for li in 0..self.weights.layers.len() {
            for (k, name) in ["wqkv", "wo", "w_gate_up", "w_down"]
                .into_iter()
                .enumerate()
            {
                let out = self.weights.layers[li].linears_mut()[k].out_features();
                let bias = self.add(&format!("layers.{li}.{name}.bias"), &init.zeros(&[out]))?;
                self.weights.layers[li].linears_mut()[k].bias = Some(bias);
            }
        }
        Ok(())
    }

    /// P-tuning v2's initial keys/values: those of `prefix_length` sampled vocabulary tokens run
    /// through the model, so training starts from activations the model knows.
    fn real_token_prefix(
        &mut self,
        engine: &Engine,
        init: &mut Init,
    ) -> anyhow::Result<Vec<(Tensor, Tensor)>> {
        let vocab = engine.config().vocab_size.min(5000) as u32;
        let ids: Vec<u32> = (0..self.config.prefix_length)
            .map(|_| init.rng.random_range(0..vocab))
            .collect();
        let cache = engine.prefill(&[Row::new(vec![Segment::Tokens(ids)])], &[])?;
        let mut layers = Vec::with_capacity(cache.layers.len());
        for (li, (k, v)) in cache.layers.iter().enumerate() {
            let k = self.add(&format!("prefix.{li}.key"), k)?;
            let v = self.add(&format!("prefix.{li}.value"), v)?;
            layers.push((k, v));
        }
        Ok(layers)
    }

    /// Installs the method's weights (detached) in `engine`: a method that copied every weight
    /// into a trainable one (model tuning, Child-Tuning) then no longer keeps the originals alive
    /// beside the copies. The engine's forward is unchanged until training moves a weight.
    pub fn share_weights_with(&self, engine: &mut Engine) -> anyhow::Result<()> {
        engine.replace_weights(self.weights.for_inference())?;
        Ok(())
    }

    /// Saves the parameters as one safetensors file, each under its name.
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let tensors: std::collections::HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&tensors, path)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    }

    /// Loads parameters saved by [`Trainable::save`] for the same method, settings and model.
    pub fn load(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let device = self.weights.embed.device();
        let saved = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        for p in &self.params {
            let t = saved
                .get(&p.name)
                .ok_or_else(|| anyhow::anyhow!("{} lacks {}", path.display(), p.name))?;
            anyhow::ensure!(
                t.dims() == p.var.dims(),
                "{}: {} has shape {:?}, this model and method need {:?}",
                path.display(),
                p.name,
                t.dims(),
                p.var.dims()
            );
            p.var.set(&t.to_device(device)?.to_dtype(p.var.dtype())?)?;
        }
        Ok(())
    }

    /// The trainable parameters, in a fixed order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Number of trainable scalars.
    pub fn num_trainable(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    /// What a user should know about how the method was applied to this model.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The run's settings.
    pub fn config(&self) -> &MethodConfig {
        &self.config
    }

    /// The weights with the method's pieces attached (trainable tensors included).
    pub fn weights(&self) -> &DecoderWeights {
        &self.weights
    }

    /// Class scores `[idx.len(), classes]` (each the mean of its label words' logits) of the
    /// examples `idx` of `split`. With `train` they carry gradients to the parameters (and LoRA
    /// dropout is on); without, the pass runs detached, keeping no graph. The method's weights are installed in `engine` for the pass
    /// and the engine's own put back after it.
    pub fn logits(
        &self,
        engine: &mut Engine,
        split: &EncodedSplit,
        idx: &[usize],
        train: bool,
    ) -> anyhow::Result<Tensor> {
        anyhow::ensure!(!idx.is_empty(), "no examples to run");
        let previous = engine.replace_weights(if train {
            self.weights.clone()
        } else {
            self.weights.for_inference()
        })?;
        let logits = self.run(engine, split, idx, train);
        engine.replace_weights(previous)?;
        logits
    }

    /// [`Trainable::logits`] with the method's weights installed.
    fn run(
        &self,
        engine: &Engine,
        split: &EncodedSplit,
        idx: &[usize],
        train: bool,
    ) -> anyhow::Result<Tensor> {
        let keep = |x: &Tensor| if train { x.clone() } else { x.detach() };
        let prompts: Vec<Prompt> = self.prompt.iter().map(|p| Prompt::new(keep(p))).collect();
        let readout = Readout::Tokens(self.verbalizer.ids().to_vec());
        if !prompts.is_empty() && self.config.placement == Placement::Prefix {
            // `[bos][prompt]` is the same for every example: its keys/values are computed once
            // and shared, in training as in BBT's scoring (gradients flow through the share).
            let texts = idx
                .iter()
                .map(|&i| self.example_tokens(split, i).map(|(h, t)| [h, t].concat()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let words = engine.run_prefix(&prompts, &texts, &readout)?.logits;
            return Ok(self.verbalizer.class_scores_tensor(&words)?);
        }
        let past = self.prefix_cache(train)?;
        let rows = idx
            .iter()
            .map(|&i| self.row(split, i, past.is_some()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let out = engine.forward(&rows, &prompts, past.as_ref(), &readout, true)?;
        let words = match &self.head {
            Some(head) => {
                let features = out.features.expect("features were asked for");
                matmul_t(&features, &keep(head))?
            }
            None => out.logits,
        };
        Ok(self.verbalizer.class_scores_tensor(&words)?)
    }

    fn example_tokens<'s>(
        &self,
        split: &'s EncodedSplit,
        i: usize,
    ) -> anyhow::Result<(&'s [u32], &'s [u32])> {
        anyhow::ensure!(
            i < split.len(),
            "example {i} is outside the split of {}",
            split.len()
        );
        Ok((&split.heads[i], &split.tails[i]))
    }

    fn row(&self, split: &EncodedSplit, i: usize, past: bool) -> anyhow::Result<Row> {
        let (head, tail) = self.example_tokens(split, i)?;
        let cat = |parts: &[&[u32]]| Segment::Tokens(parts.concat());
        // A prompt here is in the suffix placement (prefix prompts go through run_prefix).
        let segments = if self.prompt.is_some() {
            vec![cat(&[&self.bos, head]), Segment::Prompt(0), cat(&[tail])]
        } else {
            vec![cat(&[&self.bos, head, tail])]
        };
        Ok(Row {
            segments,
            past_row: past.then_some(0),
        })
    }

    /// The trainable past: one row of `L` key/value positions at every layer.
    fn prefix_cache(&self, train: bool) -> anyhow::Result<Option<KvCache>> {
        let keep = |x: &Tensor| if train { x.clone() } else { x.detach() };
        let layers = match &self.prefix {
            None => return Ok(None),
            Some(Prefix::Direct(layers)) => {
                layers.iter().map(|(k, v)| (keep(k), keep(v))).collect()
            }
            Some(Prefix::Mlp {
                embedding,
                w1,
                b1,
                w2,
                b2,
            }) => {
                let hidden = matmul_t(&keep(embedding), &keep(w1))?
                    .broadcast_add(&keep(b1))?
                    .tanh()?;
                let out = matmul_t(&hidden, &keep(w2))?.broadcast_add(&keep(b2))?;
                let (nl, (kvh, hd)) = (self.weights.layers.len(), self.kv_shape);
                let l = out.dim(0)?;
                let out = out.reshape((l, nl, 2, kvh, hd))?;
                (0..nl)
                    .map(|li| -> candle_core::Result<(Tensor, Tensor)> {
                        let part = |j: usize| {
                            out.narrow(1, li, 1)?
                                .narrow(2, j, 1)?
                                .reshape((l, kvh, hd))?
                                .transpose(0, 1)?
                                .unsqueeze(0)?
                                .contiguous()
                        };
                        Ok((part(0)?, part(1)?))
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?
            }
        };
        Ok(Some(KvCache {
            lengths: vec![self.config.prefix_length],
            layers,
        }))
    }
}
