//! Measures of class scores, no model needed: loss, accuracy and F1 of per-example verbalizer
//! logits, and contextual calibration. Shared by the server (every evaluate), the client
//! (calibrated baselines) and the trainer, so all report the same numbers.

use crate::protocol::{CandidateResult, Loss};
use crate::tasks::Metric;

/// Loss, accuracy and (for [`Metric::AccuracyAndF1`]) the F1 of class 1 from per-example logits.
pub fn measure(
    logits: &[Vec<f32>],
    labels: &[usize],
    loss: Loss,
    metric: Metric,
) -> CandidateResult {
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
        let before = measure(&example, &labels, Loss::CrossEntropy, Metric::Accuracy);
        let after = measure(&out, &labels, Loss::CrossEntropy, Metric::Accuracy);
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
        let r = measure(&logits, &labels, Loss::CrossEntropy, Metric::AccuracyAndF1);
        assert_eq!(r.accuracy, 0.5);
        // tp = 1, fp = 1, fn = 1 -> F1 = 2 / 4
        assert_eq!(r.f1, Some(0.5));
        let ce = |gold: f64, other: f64| (gold.exp() + other.exp()).ln() - gold;
        let want = (ce(2.0, 0.0) + ce(1.0, 0.0) + ce(0.0, 3.0) + ce(0.0, 1.0)) / 4.0;
        assert!((r.loss - want).abs() < 1e-9);
        let h = measure(
            &logits,
            &labels,
            Loss::Hinge { margin: 1.0 },
            Metric::Accuracy,
        );
        // margins: 2, 1, -3, -1 -> hinge 0, 0, 4, 2
        assert!((h.loss - 1.5).abs() < 1e-9);
        assert_eq!(h.f1, None);
    }
}
