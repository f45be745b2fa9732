//! The few-shot protocol of BBT: `k` examples per class for training and another `k` per class
//! for development, drawn from a training pool with a seed.
//!
//! The generator is ChaCha8 (`rand_chacha`), whose output is fixed by its specification, so the
//! same seed gives the same split on every machine and every build.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::Example;

/// Indices into `pool` of the sampled train and dev examples, each class-balanced (`k` per class),
/// train and dev disjoint, both in a seeded shuffled order.
pub fn sample_indices(
    pool: &[Example],
    num_classes: usize,
    k: usize,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut dev) = (Vec::new(), Vec::new());
    for drawn in draw_per_class(pool, num_classes, 2 * k, &mut rng, "train + dev")? {
        train.extend_from_slice(&drawn[..k]);
        dev.extend_from_slice(&drawn[k..]);
    }
    train.shuffle(&mut rng);
    dev.shuffle(&mut rng);
    Ok((train, dev))
}

/// Indices of `n` examples per class drawn with `seed` (a stratified evaluation set).
pub fn stratified_indices(
    pool: &[Example],
    num_classes: usize,
    n: usize,
    seed: u64,
) -> Result<Vec<usize>, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut all: Vec<usize> =
        draw_per_class(pool, num_classes, n, &mut rng, "the evaluation set")?.concat();
    all.sort_unstable();
    Ok(all)
}

/// For each class, `n` of its indices in a seeded random order.
fn draw_per_class(
    pool: &[Example],
    num_classes: usize,
    n: usize,
    rng: &mut ChaCha8Rng,
    purpose: &str,
) -> Result<Vec<Vec<usize>>, String> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (i, ex) in pool.iter().enumerate() {
        by_class[ex.label].push(i);
    }
    by_class
        .into_iter()
        .enumerate()
        .map(|(class, mut indices)| {
            if indices.len() < n {
                return Err(format!(
                    "class {class} has {} examples in the pool, {n} needed for {purpose}",
                    indices.len()
                ));
            }
            indices.shuffle(rng);
            indices.truncate(n);
            Ok(indices)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n_per_class: usize, classes: usize) -> Vec<Example> {
        (0..n_per_class * classes)
            .map(|i| Example {
                text_a: format!("text {i}"),
                text_b: None,
                label: i % classes,
            })
            .collect()
    }

    #[test]
    fn balanced_disjoint_and_pinned() {
        let p = pool(50, 3);
        let (train, dev) = sample_indices(&p, 3, 4, 42).unwrap();
        assert_eq!((train.len(), dev.len()), (12, 12));
        for c in 0..3 {
            assert_eq!(train.iter().filter(|&&i| p[i].label == c).count(), 4);
            assert_eq!(dev.iter().filter(|&&i| p[i].label == c).count(), 4);
        }
        assert!(train.iter().all(|i| !dev.contains(i)));
        // Pinned: ChaCha8 is specified and rand keeps shuffle values stable within a minor version
        // (Cargo.lock pins it), so these are the same on every machine; a change here is a bug.
        assert_eq!(&train[..4], &[114, 68, 20, 139]);
        assert_eq!(&dev[..4], &[148, 14, 130, 133]);
        assert_eq!(sample_indices(&p, 3, 4, 42).unwrap(), (train.clone(), dev));
        assert_ne!(sample_indices(&p, 3, 4, 43).unwrap().0, train);
    }

    #[test]
    fn too_small_a_pool_is_an_error() {
        let err = sample_indices(&pool(5, 2), 2, 4, 1).unwrap_err();
        assert!(
            err.contains("class 0 has 5 examples in the pool, 8 needed"),
            "{err}"
        );
    }
}
