//! A method's trainable parameters attached to the model, and the model's forward with them.
//! Where each method plugs in lives with the method, in [`super::tuners`].

use candle_core::{Device, Tensor};

use super::config::MethodConfig;
use super::params::{Attachment, Param, TrainablePrompt};
use super::past::TrainablePast;
use crate::engine::{Engine, Prompt, Readout, Row, Segment};
use crate::model::linear::matmul_t;
use crate::model::weights::DecoderWeights;
use crate::protocol::Placement;
use crate::scoring::EncodedSplit;
use crate::tasks::Verbalizer;

/// A method's parameters, attached to the model.
pub struct Trainable {
    config: MethodConfig,
    params: Vec<Param>,
    /// The model's weights with the method's trainable pieces attached (or made trainable).
    weights: DecoderWeights,
    prompt: Option<TrainablePrompt>,
    past: Option<TrainablePast>,
    /// Norm tuning: trainable label-word rows `[words, hidden]` of the output head.
    head: Option<Tensor>,
    verbalizer: Verbalizer,
    bos: Vec<u32>,
    notes: Vec<String>,
}

impl Trainable {
    /// Creates `config`'s method's parameters for `engine`'s model, initialised from `seed`.
    /// `verbalizer` holds the label words' token ids.
    pub fn new(
        engine: &Engine,
        config: &MethodConfig,
        verbalizer: &Verbalizer,
        seed: u64,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let mut a = Attachment::new(engine, seed);
        config.tuner.attach(&mut a, verbalizer.ids())?;
        Ok(Self {
            config: config.clone(),
            params: a.params,
            weights: a.weights,
            prompt: a.prompt,
            past: a.past,
            head: a.head,
            verbalizer: verbalizer.clone(),
            bos: engine.bos_segment(),
            notes: a.notes,
        })
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
        let prompts: Vec<Prompt> = self
            .prompt
            .iter()
            .map(|p| Prompt::new(keep(&p.embeddings)))
            .collect();
        let readout = Readout::Tokens(self.verbalizer.ids().to_vec());
        let placement = self.prompt.as_ref().map(|p| p.placement);
        if placement == Some(Placement::Prefix) {
            // `[bos][prompt]` is the same for every example: its keys/values are computed once
            // and shared, in training as in BBT's scoring (gradients flow through the share).
            let texts = idx
                .iter()
                .map(|&i| self.example_tokens(split, i).map(|(h, t)| [h, t].concat()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let words = engine.run_prefix(&prompts, &texts, &readout)?.logits;
            return Ok(self.verbalizer.class_scores_tensor(&words)?);
        }
        let past = self.past.as_ref().map(|p| p.cache(train)).transpose()?;
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
}
