//! Scoring a task's examples under candidate prompts: tokenise once, run the engine in either
//! placement, and turn verbalizer logits into loss, accuracy and F1. Used by the server's
//! sessions and by anything else that evaluates prompts (zero-shot baselines, experiments).

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::engine::{Engine, Prompt, Readout, Row, Segment};
use crate::model::decoder::KvCache;
use crate::protocol::{Loss, Placement};
use crate::tasks::{Example, TaskSpec, Verbalizer};

/// A split's examples as token ids: the example-dependent head and the constant tail, tokenised
/// separately so both placements see the same ids.
#[derive(Debug, Clone)]
pub struct EncodedSplit {
    pub heads: Vec<Vec<u32>>,
    pub tails: Vec<Vec<u32>>,
    pub labels: Vec<usize>,
}

impl EncodedSplit {
    /// Renders and tokenises `examples` with the task's template.
    pub fn new(engine: &Engine, spec: &TaskSpec, examples: &[Example]) -> anyhow::Result<Self> {
        let tok = engine.tokenizer();
        let mut split = Self {
            heads: Vec::with_capacity(examples.len()),
            tails: Vec::with_capacity(examples.len()),
            labels: Vec::with_capacity(examples.len()),
        };
        let mut tail_cache: Option<(String, Vec<u32>)> = None;
        for (i, ex) in examples.iter().enumerate() {
            anyhow::ensure!(
                ex.label < spec.classes.len(),
                "example {i}: label {} but the task has {} classes",
                ex.label,
                spec.classes.len()
            );
            let (head, tail) = spec
                .template
                .render(&ex.text_a, ex.text_b.as_deref())
                .map_err(|e| anyhow::anyhow!("example {i}: {e}"))?;
            let tail_ids = match &tail_cache {
                Some((t, ids)) if *t == tail => ids.clone(),
                _ => {
                    let ids = tok.encode(&tail)?;
                    tail_cache = Some((tail, ids.clone()));
                    ids
                }
            };
            split.heads.push(tok.encode(&head)?);
            split.tails.push(tail_ids);
            split.labels.push(ex.label);
        }
        Ok(split)
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split has no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Tokens one pass over the split costs (heads + tails, without prompts).
    pub fn tokens(&self) -> usize {
        self.heads.iter().chain(&self.tails).map(Vec::len).sum()
    }

    /// Positions the model runs to read the split once under a prompt of `prompt_positions`
    /// (what an API call is charged in tokens).
    pub fn positions_under_prompt(&self, prompt_positions: usize) -> usize {
        self.tokens() + self.len() * prompt_positions
    }

    /// Each example's whole text, `[head][tail]` (what follows the prompt in the prefix
    /// placement).
    pub fn whole_texts(&self) -> Vec<Vec<u32>> {
        self.heads
            .iter()
            .zip(&self.tails)
            .map(|(h, t)| h.iter().chain(t).copied().collect())
            .collect()
    }

    /// Each example as a row with one prompt (`Segment::Prompt(0)`) in `placement`:
    /// `[bos][prompt][head][tail]` or `[bos][head][prompt][tail]`.
    pub fn rows_with_prompt(&self, engine: &Engine, placement: Placement) -> Vec<Row> {
        let bos = engine.bos_segment();
        self.heads
            .iter()
            .zip(&self.tails)
            .map(|(h, t)| {
                let (before, after) = match placement {
                    Placement::Prefix => (bos.clone(), h.iter().chain(t).copied().collect()),
                    Placement::Suffix => (bos.iter().chain(h).copied().collect(), t.clone()),
                };
                Row::new(vec![
                    Segment::Tokens(before),
                    Segment::Prompt(0),
                    Segment::Tokens(after),
                ])
            })
            .collect()
    }

    /// Keys/values of `[bos][head]` per example, for the suffix placement.
    pub fn cache_heads(&self, engine: &Engine) -> anyhow::Result<KvCache> {
        engine.cache_texts(&self.heads)
    }
}

/// Class scores `[candidates][examples][classes]` of `prompts` on `split`: each class's mean
/// label-word logit (the logit itself for a class with one word).
///
/// `cache`, for the suffix placement, is `split.cache_heads(engine)` (it is reused across
/// calls); without it the suffix rows run whole, in one pass. It is ignored for the prefix
/// placement.
pub fn candidate_logits(
    engine: &Engine,
    split: &EncodedSplit,
    prompts: &[Prompt],
    placement: Placement,
    cache: Option<&KvCache>,
    verbalizer: &Verbalizer,
) -> anyhow::Result<Vec<Vec<Vec<f32>>>> {
    let readout = Readout::Tokens(verbalizer.ids().to_vec());
    let flat: Vec<Vec<f32>> = match placement {
        Placement::Prefix => engine
            .run_prefix(prompts, &split.whole_texts(), &readout)?
            .logits
            .to_vec2()?,
        Placement::Suffix => match cache {
            Some(cache) => engine.run_suffix(cache, prompts, &split.tails, &readout)?,
            None => engine.run_inline(prompts, &split.heads, &split.tails, &readout)?,
        }
        .logits
        .to_vec2()?,
    };
    Ok(flat
        .chunks(split.len().max(1))
        .map(|examples| {
            examples
                .iter()
                .map(|words| verbalizer.class_scores(words))
                .collect()
        })
        .collect())
}

/// One request's share of a merged prefix-placement pass: its candidates' prompts, reading
/// its split, scored with its verbalizer.
pub struct PrefixPart<'a> {
    pub split: &'a EncodedSplit,
    pub prompts: Vec<Prompt>,
    pub verbalizer: &'a Verbalizer,
}

/// [`candidate_logits`] in the prefix placement for several requests (of any sessions) in one
/// engine pass: every prompt's `[bos][prompt]` is prefilled together, each continued by its
/// part's texts, and the logits are read over the union of the parts' label words. Rows are
/// independent, so each part's class scores equal those of a pass of its own. One
/// `[candidates][examples][classes]` per part, in order.
pub fn merged_prefix_logits(
    engine: &Engine,
    parts: &[PrefixPart<'_>],
) -> anyhow::Result<Vec<Vec<Vec<Vec<f32>>>>> {
    let texts: Vec<Vec<Vec<u32>>> = parts.iter().map(|p| p.split.whole_texts()).collect();
    let prompts: Vec<Prompt> = parts.iter().flat_map(|p| p.prompts.clone()).collect();
    let groups: Vec<&[Vec<u32>]> = parts
        .iter()
        .zip(&texts)
        .flat_map(|(part, t)| std::iter::repeat_n(t.as_slice(), part.prompts.len()))
        .collect();
    // The union of label words; each part reads its own columns.
    let mut columns: BTreeMap<u32, usize> = BTreeMap::new();
    for part in parts {
        for &id in part.verbalizer.ids() {
            let next = columns.len();
            columns.entry(id).or_insert(next);
        }
    }
    let mut union = vec![0u32; columns.len()];
    for (&id, &col) in &columns {
        union[col] = id;
    }
    let logits: Vec<Vec<f32>> = engine
        .run_prefix_groups(&prompts, &groups, &Readout::Tokens(union))?
        .logits
        .to_vec2()?;
    let mut rows = logits.iter();
    Ok(parts
        .iter()
        .map(|part| {
            let cols: Vec<usize> = part.verbalizer.ids().iter().map(|id| columns[id]).collect();
            (0..part.prompts.len())
                .map(|_| {
                    (&mut rows)
                        .take(part.split.len())
                        .map(|row| {
                            let words: Vec<f32> = cols.iter().map(|&c| row[c]).collect();
                            part.verbalizer.class_scores(&words)
                        })
                        .collect()
                })
                .collect()
        })
        .collect())
}

/// The final hidden state (after the last norm) at each example's last position, where the label
/// word is read, under one `prompt` in `placement`: `[examples][hidden]`, f32. The features a
/// probe classifier is trained on.
pub fn split_features(
    engine: &Engine,
    split: &EncodedSplit,
    prompt: Prompt,
    placement: Placement,
    verbalizer: &Verbalizer,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let rows = split.rows_with_prompt(engine, placement);
    let out = engine.forward(
        &rows,
        &[prompt],
        None,
        &Readout::Tokens(verbalizer.ids().to_vec()),
        true,
    )?;
    let features = out
        .features
        .ok_or_else(|| anyhow::anyhow!("the engine returned no features"))?;
    Ok(features.to_dtype(candle_core::DType::F32)?.to_vec2()?)
}

/// The mean training loss over verbalizer logits `[n, classes]` as candle ops, so gradients flow
/// into whatever produced the logits: the same values [`crate::metrics::score`] computes on the
/// host.
pub fn loss_tensor(logits: &Tensor, labels: &[usize], loss: Loss) -> anyhow::Result<Tensor> {
    let (n, classes) = logits.dims2()?;
    anyhow::ensure!(
        labels.len() == n && labels.iter().all(|&y| y < classes),
        "{} labels (each below {classes}) needed for {n} rows of logits",
        labels.len()
    );
    let ids: Vec<u32> = labels.iter().map(|&y| y as u32).collect();
    let ids = Tensor::from_vec(ids, (n, 1), logits.device())?;
    let per_row = match loss {
        Loss::CrossEntropy => candle_nn::ops::log_softmax(logits, 1)?
            .gather(&ids, 1)?
            .neg()?,
        Loss::Hinge { margin } => {
            let gold = logits.gather(&ids, 1)?;
            // The gold entry is pushed far below every other before taking the max.
            let one_hot: Vec<f32> = (0..n * classes)
                .map(|i| {
                    if i % classes == labels[i / classes] {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            let one_hot = Tensor::from_vec(one_hot, (n, classes), logits.device())?
                .to_dtype(logits.dtype())?;
            let others = (logits - (one_hot * 1e9)?)?;
            let best_other = others.max_keepdim(1)?;
            ((best_other - gold)? + margin)?.relu()?
        }
    };
    Ok(per_row.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::measure;
    use crate::tasks::Metric;

    #[test]
    fn loss_tensor_equals_host_scores() {
        let logits = vec![
            vec![2.0f32, 0.0, -1.0],
            vec![0.5, 1.0, 3.0],
            vec![0.0, 0.0, 0.0],
        ];
        let labels = [0, 1, 2];
        let t = Tensor::new(logits.clone(), &candle_core::Device::Cpu).unwrap();
        for loss in [Loss::CrossEntropy, Loss::Hinge { margin: 1.0 }] {
            let host = measure(&logits, &labels, loss, Metric::Accuracy).loss;
            let graph: f32 = loss_tensor(&t, &labels, loss).unwrap().to_scalar().unwrap();
            assert!(
                (host - graph as f64).abs() < 1e-5,
                "{loss:?}: {host} vs {graph}"
            );
        }
        assert!(loss_tensor(&t, &[0, 3, 1], Loss::CrossEntropy).is_err());
    }
}
