//! In-context demonstrations (GPT-3 style in-context learning, the BBT paper's ICL baseline):
//! training examples rendered with the task's template and followed by their label word, in a
//! seeded random order, as many as fit a token budget.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{Example, TaskSpec, Verbalizer};
use crate::tokenizer::Tokenizer;

/// What a context of demonstrations holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demonstrations {
    /// Token ids of the demonstrations, one after another.
    pub ids: Vec<u32>,
    /// How many training examples they are.
    pub count: usize,
}

/// Text between two demonstrations, and between the last one and the input.
pub const SEPARATOR: &str = "\n";

/// The demonstrations for `train` under `spec`: each example is tokenised exactly as the model
/// reads inputs (template head, template tail), then its class's first label word and
/// [`SEPARATOR`]. Examples are taken in a random order drawn from `order_seed`
/// and added until the next would exceed `budget` tokens or `max` examples are in.
pub fn assemble(
    tokenizer: &Tokenizer,
    spec: &TaskSpec,
    verbalizer: &Verbalizer,
    train: &[Example],
    order_seed: u64,
    max: Option<usize>,
    budget: usize,
) -> anyhow::Result<Demonstrations> {
    anyhow::ensure!(
        verbalizer.classes() == spec.classes.len(),
        "label words for {} classes, the task has {}",
        verbalizer.classes(),
        spec.classes.len()
    );
    let separator = tokenizer.encode(SEPARATOR)?;
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(order_seed));
    let mut out = Demonstrations {
        ids: Vec::new(),
        count: 0,
    };
    for i in order {
        if max.is_some_and(|m| out.count >= m) {
            break;
        }
        let example = &train[i];
        anyhow::ensure!(
            example.label < verbalizer.classes(),
            "training example {i} has label {}",
            example.label
        );
        let label = verbalizer.words_of(example.label)[0];
        let (head, tail) = spec
            .template
            .render(&example.text_a, example.text_b.as_deref())
            .map_err(|e| anyhow::anyhow!("training example {i}: {e}"))?;
        let mut ids = tokenizer.encode(&head)?;
        ids.extend(tokenizer.encode(&tail)?);
        ids.push(label);
        ids.extend(&separator);
        if out.ids.len() + ids.len() > budget {
            break;
        }
        out.ids.extend(ids);
        out.count += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{Metric, Template};
    use crate::testing::random_model::word_level_tokenizer;

    #[test]
    fn demonstrations_are_examples_with_their_label_word_cut_at_the_budget() {
        let tokenizer = Tokenizer::new(word_level_tokenizer(64), None);
        let spec = TaskSpec {
            name: "t".into(),
            classes: vec!["a".into(), "b".into()],
            template: Template::new("<S> t40").unwrap(),
            verbalizer: vec![" t50".into(), " t51".into()],
            metric: Metric::Accuracy,
        };
        // Example i reads "t{10+i} t{20+i}" (two tokens), label i % 2.
        let train: Vec<Example> = (0..6)
            .map(|i| Example {
                text_a: format!("t{} t{}", 10 + i, 20 + i),
                text_b: None,
                label: i % 2,
            })
            .collect();
        let words = Verbalizer::single(&[50, 51]).unwrap();
        let all = assemble(&tokenizer, &spec, &words, &train, 3, None, 100).unwrap();
        assert_eq!((all.count, all.ids.len()), (6, 24));
        // Each demonstration: its two words, the template's t40, its label word.
        let mut seen: Vec<u32> = all
            .ids
            .chunks(4)
            .map(|d| {
                let i = d[0] - 10;
                assert_eq!(d, [10 + i, 20 + i, 40, 50 + i % 2]);
                i
            })
            .collect();
        seen.sort();
        assert_eq!(seen, [0, 1, 2, 3, 4, 5]);
        // The budget stops it before the example that would not fit; `max` caps the count.
        let cut = assemble(&tokenizer, &spec, &words, &train, 3, None, 11).unwrap();
        assert_eq!((cut.count, &cut.ids[..]), (2, &all.ids[..8]));
        let capped = assemble(&tokenizer, &spec, &words, &train, 3, Some(1), 100).unwrap();
        assert_eq!(capped.ids, all.ids[..4]);
        // Another seed, another order.
        let other = assemble(&tokenizer, &spec, &words, &train, 4, None, 100).unwrap();
        assert_ne!(other.ids, all.ids);
        let one_class = Verbalizer::single(&[50]).unwrap();
        assert!(assemble(&tokenizer, &spec, &one_class, &train, 3, None, 100).is_err());
        // Several words per class: a demonstration writes the class's first word.
        let many = Verbalizer::new(vec![vec![50, 52], vec![51, 53]]).unwrap();
        let first = assemble(&tokenizer, &spec, &many, &train, 3, None, 100).unwrap();
        assert_eq!(first, all);
    }
}
