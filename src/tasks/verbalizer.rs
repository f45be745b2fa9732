//! A verbalizer: the label words of each class, as the task spec writes them ([`LabelWords`]) and
//! as token ids grouped by class ([`Verbalizer`]).
//!
//! A class may have several label words (BBT-RGB's "multiple label words"): its score is the
//! **mean of its words' logits**. The mean is what a single label word whose output embedding
//! is the mean of the words' embeddings would score (logits are linear in the output
//! embeddings), so it keeps every class on the same scale however many words it has; a
//! log-sum-exp of the logits would add up to `ln(words)` to classes with more words and favour
//! them before any prompt is tuned.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One class's label words in a task spec: one word (`" great"`) or several
/// (`[" great", " good"]`), each a single token of the model (with its leading space).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LabelWords {
    /// One label word.
    One(String),
    /// Several label words; the class scores the mean of their logits.
    Many(Vec<String>),
}

impl LabelWords {
    /// The words, in order.
    pub fn words(&self) -> &[String] {
        match self {
            Self::One(w) => std::slice::from_ref(w),
            Self::Many(ws) => ws,
        }
    }

    /// The first word (what a demonstration writes after its example).
    pub fn first(&self) -> &str {
        self.words().first().map_or("", String::as_str)
    }
}

impl From<&str> for LabelWords {
    fn from(w: &str) -> Self {
        Self::One(w.to_string())
    }
}

impl From<String> for LabelWords {
    fn from(w: String) -> Self {
        Self::One(w)
    }
}

impl From<Vec<&str>> for LabelWords {
    fn from(ws: Vec<&str>) -> Self {
        if ws.len() == 1 {
            Self::One(ws[0].to_string())
        } else {
            Self::Many(ws.into_iter().map(String::from).collect())
        }
    }
}

impl fmt::Display for LabelWords {
    /// The words joined by `|`, each in quotes: `" great"|" good"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted: Vec<String> = self.words().iter().map(|w| format!("{w:?}")).collect();
        f.write_str(&quoted.join("|"))
    }
}

/// Several label words per class for the tasks where the words of one class have common
/// synonyms that are single tokens of the default model: the task's own word first (the word
/// demonstrations write), then synonyms. `None` for the other tasks (DBpedia's and BBC's
/// categories, for instance). `task` is the name as [`super::load_task`] takes it.
pub fn several_label_words(task: &str) -> Option<Vec<LabelWords>> {
    let key: String = task
        .to_lowercase()
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .collect();
    let lists: &[&[&str]] = match key.as_str() {
        "sst2" | "yelp" | "yelpp" | "mr" | "mrsnippets" => &[
            &[" bad", " terrible", " awful", " poor"],
            &[" great", " good", " excellent", " wonderful"],
        ],
        "agnews" => &[
            &[" World", " International", " Politics"],
            &[" Sports", " Sport", " Football"],
            &[" Business", " Economy", " Finance"],
            &[" Tech", " Technology", " Science"],
        ],
        "mrpc" => &[&[" No", " Different"], &[" Yes", " Same"]],
        "snli" => &[
            &[" Yes", " True"],
            &[" Maybe", " Perhaps"],
            &[" No", " False"],
        ],
        "rte" => &[&[" Yes", " True"], &[" No", " False"]],
        _ => return None,
    };
    Some(lists.iter().map(|words| words.to_vec().into()).collect())
}

/// The label words' token ids, grouped by class: what the engine reads out (every word's logit)
/// and how those logits become class scores (the mean over each class's words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verbalizer {
    /// Every word's token id, class by class.
    ids: Vec<u32>,
    /// Where each class's words start in `ids`, plus `ids.len()` at the end.
    starts: Vec<usize>,
}

impl Verbalizer {
    /// A verbalizer from each class's word ids.
    ///
    /// # Errors
    /// A class without words, or a token id used twice (within a class or across classes).
    pub fn new(classes: Vec<Vec<u32>>) -> Result<Self, String> {
        let mut ids = Vec::new();
        let mut starts = vec![0];
        let mut seen = std::collections::HashSet::new();
        for (c, words) in classes.into_iter().enumerate() {
            if words.is_empty() {
                return Err(format!("class {c} has no label word"));
            }
            for id in words {
                if !seen.insert(id) {
                    return Err(format!(
                        "token {id} is a label word twice (class {c} and an earlier one)"
                    ));
                }
                ids.push(id);
            }
            starts.push(ids.len());
        }
        Ok(Self { ids, starts })
    }

    /// One label word per class.
    ///
    /// # Errors
    /// A token id used by two classes.
    pub fn single(ids: &[u32]) -> Result<Self, String> {
        Self::new(ids.iter().map(|&id| vec![id]).collect())
    }

    /// Every word's token id, class by class (the engine's readout).
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.starts.len() - 1
    }

    /// The word ids of `class`.
    pub fn words_of(&self, class: usize) -> &[u32] {
        &self.ids[self.starts[class]..self.starts[class + 1]]
    }

    /// Whether every class has exactly one word (the class scores are the logits themselves).
    pub fn is_single(&self) -> bool {
        self.ids.len() == self.classes()
    }

    /// Class scores from one example's word logits (in [`Self::ids`] order): the mean of each
    /// class's words.
    pub fn class_scores(&self, word_logits: &[f32]) -> Vec<f32> {
        debug_assert_eq!(word_logits.len(), self.ids.len());
        (0..self.classes())
            .map(|c| {
                let words = &word_logits[self.starts[c]..self.starts[c + 1]];
                words.iter().sum::<f32>() / words.len() as f32
            })
            .collect()
    }

    /// Class scores `[n, classes]` from word logits `[n, words]` as a differentiable tensor op
    /// (the logits times a `[words, classes]` averaging matrix; the logits themselves when every
    /// class has one word).
    #[cfg(feature = "engine")]
    pub fn class_scores_tensor(
        &self,
        word_logits: &candle_core::Tensor,
    ) -> candle_core::Result<candle_core::Tensor> {
        if self.is_single() {
            return Ok(word_logits.clone());
        }
        let (words, classes) = (self.ids.len(), self.classes());
        let mut avg = vec![0f32; words * classes];
        for c in 0..classes {
            let n = (self.starts[c + 1] - self.starts[c]) as f32;
            for w in self.starts[c]..self.starts[c + 1] {
                avg[w * classes + c] = 1.0 / n;
            }
        }
        let avg = candle_core::Tensor::from_vec(avg, (words, classes), word_logits.device())?
            .to_dtype(word_logits.dtype())?;
        word_logits.matmul(&avg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_words_read_one_word_or_a_list() {
        let v: Vec<LabelWords> = serde_json::from_str(r#"[" bad", [" great", " good"]]"#).unwrap();
        assert_eq!(v[0], LabelWords::One(" bad".into()));
        assert_eq!(v[1].words(), [" great", " good"]);
        assert_eq!(v[1].first(), " great");
        assert_eq!(v[1].to_string(), r#"" great"|" good""#);
        // Written back the way it was read: a plain string for one word.
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"[" bad",[" great"," good"]]"#
        );
        assert!(serde_json::from_str::<Vec<LabelWords>>("[3]").is_err());
    }

    #[test]
    fn class_scores_are_the_mean_of_each_class_words() {
        let v = Verbalizer::new(vec![vec![7], vec![3, 9, 4]]).unwrap();
        assert_eq!(v.ids(), [7, 3, 9, 4]);
        assert_eq!(v.classes(), 2);
        assert_eq!(v.words_of(1), [3, 9, 4]);
        assert!(!v.is_single());
        assert_eq!(v.class_scores(&[1.0, 2.0, 4.0, 6.0]), [1.0, 4.0]);
        assert!(Verbalizer::single(&[5, 6]).unwrap().is_single());
    }

    #[test]
    fn a_word_in_two_places_or_a_class_without_words_is_refused() {
        let err = Verbalizer::new(vec![vec![1, 2], vec![2]]).unwrap_err();
        assert!(err.contains("token 2"), "{err}");
        let err = Verbalizer::new(vec![vec![1, 1]]).unwrap_err();
        assert!(err.contains("token 1"), "{err}");
        let err = Verbalizer::new(vec![vec![1], vec![]]).unwrap_err();
        assert!(err.contains("class 1 has no label word"), "{err}");
    }

    #[cfg(feature = "engine")]
    #[test]
    fn the_tensor_op_matches_the_host_means_and_passes_gradients() {
        use candle_core::{Device, Tensor, Var};
        let v = Verbalizer::new(vec![vec![10, 11], vec![12], vec![13, 14, 15]]).unwrap();
        let rows = [
            [1.0f32, 3.0, -2.0, 0.5, 1.5, 4.0],
            [0.0, -1.0, 2.0, 3.0, 3.0, 3.0],
        ];
        let x = Var::from_tensor(&Tensor::new(&rows, &Device::Cpu).unwrap()).unwrap();
        let got = v.class_scores_tensor(x.as_tensor()).unwrap();
        let got: Vec<Vec<f32>> = got.to_vec2().unwrap();
        for (row, g) in rows.iter().zip(&got) {
            let want = v.class_scores(row);
            for (a, b) in g.iter().zip(&want) {
                assert!((a - b).abs() < 1e-6, "{g:?} vs {want:?}");
            }
        }
        // d(sum of class scores)/d(word logit) = 1 / (words in its class).
        let grads = v
            .class_scores_tensor(x.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = grads.backward().unwrap();
        let g: Vec<Vec<f32>> = grads.get(x.as_tensor()).unwrap().to_vec2().unwrap();
        let want = [0.5, 0.5, 1.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0];
        for (a, b) in g[0].iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{:?}", g[0]);
        }
    }
}
