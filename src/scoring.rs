//! Scoring a task's examples under candidate prompts: tokenise once, run the engine in either
//! placement, and turn verbalizer logits into loss, accuracy and F1. Used by the server's
//! sessions and by anything else that evaluates prompts (zero-shot baselines, experiments).

use candle_core::Tensor;

use crate::engine::{Engine, Prompt, Readout, Row, Segment};
use crate::model::decoder::KvCache;
use crate::protocol::{CandidateResult, Loss, Placement};
use crate::tasks::{Example, Metric, TaskSpec};

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

    /// Keys/values of `[bos][head]` per example, for the suffix placement.
    pub fn cache_heads(&self, engine: &Engine) -> anyhow::Result<KvCache> {
        engine.cache_texts(&self.heads)
    }
}

/// Verbalizer logits `[candidates][examples][classes]` of `prompts` on `split`.
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
    verbalizer: &[u32],
) -> anyhow::Result<Vec<Vec<Vec<f32>>>> {
    let readout = Readout::Tokens(verbalizer.to_vec());
    let flat: Vec<Vec<f32>> = match placement {
        Placement::Prefix => {
            let rows: Vec<Vec<u32>> = split
                .heads
                .iter()
                .zip(&split.tails)
                .map(|(h, t)| h.iter().chain(t).copied().collect())
                .collect();
            engine
                .score_prefix(prompts, &rows, &readout)?
                .logits
                .to_vec2()?
        }
        Placement::Suffix => match cache {
            Some(cache) => engine.score_suffix(cache, prompts, &split.tails, &readout)?,
            None => engine.score_inline(prompts, &split.heads, &split.tails, &readout)?,
        }
        .logits
        .to_vec2()?,
    };
    Ok(flat
        .chunks(split.len().max(1))
        .map(<[Vec<f32>]>::to_vec)
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
    verbalizer: &[u32],
) -> anyhow::Result<Vec<Vec<f32>>> {
    let bos = engine.bos_segment();
    let rows: Vec<Row> = split
        .heads
        .iter()
        .zip(&split.tails)
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
        .collect();
    let out = engine.forward(
        &rows,
        &[prompt],
        None,
        &Readout::Tokens(verbalizer.to_vec()),
        true,
    )?;
    let features = out
        .features
        .ok_or_else(|| anyhow::anyhow!("the engine returned no features"))?;
    Ok(features.to_dtype(candle_core::DType::F32)?.to_vec2()?)
}

/// The mean training loss over verbalizer logits `[n, classes]` as candle ops, so gradients flow
/// into whatever produced the logits: the same values [`score`] computes on the host.
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

/// Loss, accuracy and (for [`Metric::AccuracyAndF1`]) the F1 of class 1 from per-example logits.
pub fn score(logits: &[Vec<f32>], labels: &[usize], loss: Loss, metric: Metric) -> CandidateResult {
    let n = labels.len().max(1) as f64;
    let mut total_loss = 0f64;
    let mut correct = 0usize;
    let (mut tp, mut fp, mut fneg) = (0usize, 0usize, 0usize);
    for (l, &y) in logits.iter().zip(labels) {
        let l: Vec<f64> = l.iter().map(|&x| x as f64).collect();
        let pred = l
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        correct += usize::from(pred == y);
        tp += usize::from(pred == 1 && y == 1);
        fp += usize::from(pred == 1 && y != 1);
        fneg += usize::from(pred != 1 && y == 1);
        total_loss += match loss {
            Loss::CrossEntropy => {
                let max = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + l.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
                lse - l[y]
            }
            Loss::Hinge { margin } => {
                let best_other = l
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != y)
                    .map(|(_, &x)| x)
                    .fold(f64::NEG_INFINITY, f64::max);
                (margin - (l[y] - best_other)).max(0.0)
            }
        };
    }
    let f1 = (metric == Metric::AccuracyAndF1).then(|| {
        let denom = 2 * tp + fp + fneg;
        if denom == 0 {
            0.0
        } else {
            2.0 * tp as f64 / denom as f64
        }
    });
    CandidateResult {
        loss: total_loss / n,
        accuracy: correct as f64 / n,
        f1,
        logits: None,
    }
}

/// Contextual calibration (Zhao et al. 2021): each example's class probabilities (softmax of
/// its verbalizer logits) divided by the mean probabilities of the content-free inputs, then
/// renormalised; returned as log-probabilities `[examples][classes]`. A model that leans to one
/// label word whatever the input has that lean divided out.
pub fn calibrate(logits: &[Vec<f32>], content_free: &[Vec<f32>]) -> anyhow::Result<Vec<Vec<f32>>> {
    let classes = content_free.first().map_or(0, Vec::len);
    anyhow::ensure!(
        classes > 0 && content_free.iter().all(|r| r.len() == classes),
        "content-free logits must be non-empty rows of equal length"
    );
    let softmax = |row: &[f32]| -> Vec<f64> {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let exp: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
        let sum: f64 = exp.iter().sum();
        exp.into_iter().map(|e| e / sum).collect()
    };
    let mut bias = vec![0f64; classes];
    for row in content_free {
        for (b, p) in bias.iter_mut().zip(softmax(row)) {
            *b += p / content_free.len() as f64;
        }
    }
    logits
        .iter()
        .enumerate()
        .map(|(i, row)| {
            anyhow::ensure!(
                row.len() == classes,
                "example {i} has {} logits, the content-free inputs {classes}",
                row.len()
            );
            let divided: Vec<f64> = softmax(row).iter().zip(&bias).map(|(p, b)| p / b).collect();
            let sum: f64 = divided.iter().sum();
            Ok(divided.iter().map(|q| (q / sum).ln() as f32).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_divides_out_the_content_free_lean() {
        // Content-free inputs: probabilities (0.8, 0.2) and (0.6, 0.4), mean (0.7, 0.3).
        let cf = vec![
            vec![(0.8f32).ln(), (0.2f32).ln()],
            vec![(0.6f32).ln(), (0.4f32).ln()],
        ];
        // An example at (0.6, 0.4): 0.6/0.7 = 0.857, 0.4/0.3 = 1.333 -> (0.3913, 0.6087).
        let example = vec![vec![(0.6f32).ln(), (0.4f32).ln()]];
        let out = calibrate(&example, &cf).unwrap();
        let p: Vec<f32> = out[0].iter().map(|l| l.exp()).collect();
        assert!((p[0] - 0.391_304).abs() < 1e-5, "{p:?}");
        assert!((p[1] - 0.608_696).abs() < 1e-5, "{p:?}");
        // The prediction flips from class 0 to class 1.
        let labels = [1];
        let before = score(&example, &labels, Loss::CrossEntropy, Metric::Accuracy);
        let after = score(&out, &labels, Loss::CrossEntropy, Metric::Accuracy);
        assert_eq!((before.accuracy, after.accuracy), (0.0, 1.0));
        // A shift of every logit by a constant changes nothing.
        let shifted = vec![vec![(0.6f32).ln() + 5.0, (0.4f32).ln() + 5.0]];
        let again = calibrate(&shifted, &cf).unwrap();
        assert!((again[0][1] - out[0][1]).abs() < 1e-5);
        assert!(calibrate(&[vec![0.0; 3]], &cf).is_err());
        assert!(calibrate(&example, &[]).is_err());
    }

    #[test]
    fn cross_entropy_hinge_accuracy_and_f1() {
        let logits = vec![
            vec![2.0, 0.0],
            vec![0.0, 1.0],
            vec![0.0, 3.0],
            vec![1.0, 0.0],
        ];
        let labels = [0, 1, 0, 1];
        let r = score(&logits, &labels, Loss::CrossEntropy, Metric::AccuracyAndF1);
        assert_eq!(r.accuracy, 0.5);
        // tp = 1, fp = 1, fn = 1 -> F1 = 2 / 4
        assert_eq!(r.f1, Some(0.5));
        let ce = |gold: f64, other: f64| (gold.exp() + other.exp()).ln() - gold;
        let want = (ce(2.0, 0.0) + ce(1.0, 0.0) + ce(0.0, 3.0) + ce(0.0, 1.0)) / 4.0;
        assert!((r.loss - want).abs() < 1e-9);
        let h = score(
            &logits,
            &labels,
            Loss::Hinge { margin: 1.0 },
            Metric::Accuracy,
        );
        // margins: 2, 1, -3, -1 -> hinge 0, 0, 4, 2
        assert!((h.loss - 1.5).abs() < 1e-9);
        assert_eq!(h.f1, None);
    }

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
            let host = score(&logits, &labels, loss, Metric::Accuracy).loss;
            let graph: f32 = loss_tensor(&t, &labels, loss).unwrap().to_scalar().unwrap();
            assert!(
                (host - graph as f64).abs() < 1e-5,
                "{loss:?}: {host} vs {graph}"
            );
        }
        assert!(loss_tensor(&t, &[0, 3, 1], Loss::CrossEntropy).is_err());
    }
}
