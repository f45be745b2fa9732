//! The feature probe's classifier: multinomial logistic regression with an L2 penalty on
//! standardised features, fitted by full-batch gradient descent (the loss is convex; a few
//! dozen examples of a few hundred features fit in milliseconds), its penalty chosen on dev.

use ndarray::{Array1, Array2, Axis};

/// Feature rows with their labels.
#[derive(Debug, Clone)]
pub struct Labelled {
    features: Array2<f64>,
    labels: Vec<usize>,
}

impl Labelled {
    /// Checks that there is one label per row and that rows have one length.
    pub fn new(rows: Vec<Vec<f32>>, labels: Vec<usize>) -> anyhow::Result<Self> {
        anyhow::ensure!(
            rows.len() == labels.len(),
            "{} feature rows for {} labels",
            rows.len(),
            labels.len()
        );
        Ok(Self {
            features: matrix(&rows)?,
            labels,
        })
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.features.ncols()
    }
}

fn matrix(rows: &[Vec<f32>]) -> anyhow::Result<Array2<f64>> {
    let dim = rows.first().map_or(0, Vec::len);
    anyhow::ensure!(
        dim > 0 && rows.iter().all(|r| r.len() == dim),
        "feature rows must be non-empty and of one length"
    );
    let flat: Vec<f64> = rows.iter().flatten().map(|&x| x as f64).collect();
    Ok(Array2::from_shape_vec((rows.len(), dim), flat)?)
}

/// A fitted classifier: standardisation, then `x·W + b`.
#[derive(Debug, Clone)]
pub struct Classifier {
    mean: Array1<f64>,
    std: Array1<f64>,
    weights: Array2<f64>,
    bias: Array1<f64>,
}

impl Classifier {
    /// Class scores (logits) `[rows][classes]` of raw feature rows.
    pub fn scores(&self, rows: &[Vec<f32>]) -> anyhow::Result<Vec<Vec<f32>>> {
        let x = matrix(rows)?;
        anyhow::ensure!(
            x.ncols() == self.mean.len(),
            "features of {} numbers, the classifier takes {}",
            x.ncols(),
            self.mean.len()
        );
        Ok(self
            .logits(&x)
            .rows()
            .into_iter()
            .map(|r| r.iter().map(|&v| v as f32).collect())
            .collect())
    }

    /// Weights and biases.
    pub fn parameters(&self) -> usize {
        self.weights.len() + self.bias.len()
    }

    fn logits(&self, raw: &Array2<f64>) -> Array2<f64> {
        let x = (raw - &self.mean) / &self.std;
        x.dot(&self.weights) + &self.bias
    }

    fn accuracy(&self, data: &Labelled) -> f64 {
        let logits = self.logits(&data.features);
        let correct = logits
            .rows()
            .into_iter()
            .zip(&data.labels)
            .filter(|(row, &y)| argmax(row.iter().copied()) == y)
            .count();
        correct as f64 / data.labels.len().max(1) as f64
    }
}

fn argmax(xs: impl Iterator<Item = f64>) -> usize {
    xs.enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |(i, _)| i)
}

/// Penalties tried; dev picks one (the smallest on ties, the least regularised fit).
pub const L2_GRID: [f64; 6] = [1e-3, 1e-2, 1e-1, 0.3, 1.0, 3.0];

/// Gradient steps per fit, and their size on standardised features.
const STEPS: usize = 300;
const LEARNING_RATE: f64 = 0.1;

/// The best classifier on `dev` over [`L2_GRID`] (on train accuracy if `dev` is empty).
pub struct Fitted {
    pub classifier: Classifier,
    pub l2: f64,
    pub dev_accuracy: Option<f64>,
}

/// Fits one classifier per penalty of [`L2_GRID`] on `train` and keeps the best on `dev`.
pub fn fit(train: &Labelled, dev: &Labelled, classes: usize) -> anyhow::Result<Fitted> {
    anyhow::ensure!(
        train.labels.iter().all(|&y| y < classes),
        "a training label is not below {classes}"
    );
    let judge = if dev.labels.is_empty() { train } else { dev };
    let mut best: Option<(f64, Fitted)> = None;
    for l2 in L2_GRID {
        let classifier = fit_one(train, classes, l2);
        let accuracy = classifier.accuracy(judge);
        if best.as_ref().is_none_or(|(a, _)| accuracy > *a) {
            let dev_accuracy = (!dev.labels.is_empty()).then_some(accuracy);
            best = Some((
                accuracy,
                Fitted {
                    classifier,
                    l2,
                    dev_accuracy,
                },
            ));
        }
    }
    Ok(best.expect("the grid is not empty").1)
}

/// Gradient descent on mean cross-entropy + `l2 / 2 * |W|^2`.
fn fit_one(train: &Labelled, classes: usize, l2: f64) -> Classifier {
    let raw = &train.features;
    let mean = raw.mean_axis(Axis(0)).expect("rows exist");
    let std = raw
        .std_axis(Axis(0), 0.0)
        .mapv(|s| if s > 1e-8 { s } else { 1.0 });
    let x = (raw - &mean) / &std;
    let (n, dim) = x.dim();
    let mut one_hot = Array2::<f64>::zeros((n, classes));
    for (i, &y) in train.labels.iter().enumerate() {
        one_hot[[i, y]] = 1.0;
    }
    let mut classifier = Classifier {
        mean,
        std,
        weights: Array2::zeros((dim, classes)),
        bias: Array1::zeros(classes),
    };
    for _ in 0..STEPS {
        let logits = x.dot(&classifier.weights) + &classifier.bias;
        let mut probs = logits;
        for mut row in probs.rows_mut() {
            let max = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
            row.mapv_inplace(|v| (v - max).exp());
            let sum = row.sum();
            row /= sum;
        }
        let error = (probs - &one_hot) / n as f64;
        let grad_w = x.t().dot(&error) + &classifier.weights * l2;
        let grad_b = error.sum_axis(Axis(0));
        classifier.weights -= &(grad_w * LEARNING_RATE);
        classifier.bias -= &(grad_b * LEARNING_RATE);
    }
    classifier
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Gaussian blobs along the first of eight features (the others are noise of a larger
    /// spread):
    /// the probe separates them and generalises to new draws.
    #[test]
    fn separates_linearly_separable_classes() {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let noise = Normal::new(0.0, 3.0).unwrap();
        let mut draw = |n: usize| {
            let mut rows = Vec::new();
            let mut labels = Vec::new();
            for i in 0..n {
                let y = i % 2;
                let mut row: Vec<f32> = (0..8).map(|_| noise.sample(&mut rng) as f32).collect();
                row[0] = if y == 1 { 2.0 } else { -2.0 } + 0.3 * noise.sample(&mut rng) as f32;
                rows.push(row);
                labels.push(y);
            }
            (rows, labels)
        };
        let (train_x, train_y) = draw(64);
        let (dev_x, dev_y) = draw(32);
        let (test_x, test_y) = draw(200);
        let train = Labelled::new(train_x, train_y).unwrap();
        let dev = Labelled::new(dev_x, dev_y).unwrap();
        let fitted = fit(&train, &dev, 2).unwrap();
        let scores = fitted.classifier.scores(&test_x).unwrap();
        let correct = scores
            .iter()
            .zip(&test_y)
            .filter(|(s, &y)| argmax(s.iter().map(|&v| v as f64)) == y)
            .count();
        assert!(correct >= 185, "{correct}/200 correct");
        assert_eq!(fitted.classifier.parameters(), 8 * 2 + 2);
        assert!(fitted.classifier.scores(&[vec![0.0; 3]]).is_err());
        assert!(Labelled::new(vec![vec![1.0]], vec![]).is_err());
    }
}
