//! What a task is: classes, a template with slots for one or two texts, a verbalizer (one or
//! more label words per class) and a metric. Shared by the server (which scores), the clients (which sample)
//! and the experiments.

use serde::{Deserialize, Serialize};

use super::verbalizer::LabelWords;
#[cfg(feature = "engine")]
use super::verbalizer::Verbalizer;

#[cfg(feature = "engine")]
use crate::tokenizer::Tokenizer;

/// How predictions are scored.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Accuracy.
    Accuracy,
    /// Accuracy and the F1 of class 1 (MRPC's convention: the "equivalent" class).
    AccuracyAndF1,
}

/// A template like `" <S> It was"` or `" <S1> ? <S2> Answer:"`: the model predicts the label
/// word right after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Template {
    text: String,
    two_inputs: bool,
}

/// Slot names in templates.
pub const SLOT: &str = "<S>";
pub const SLOT_1: &str = "<S1>";
pub const SLOT_2: &str = "<S2>";

impl Template {
    /// Parses and validates a template: exactly one `<S>`, or exactly one `<S1>` and one `<S2>`.
    pub fn new(text: &str) -> Result<Self, String> {
        let count = |slot: &str| text.matches(slot).count();
        match (count(SLOT), count(SLOT_1), count(SLOT_2)) {
            (1, 0, 0) => Ok(Self {
                text: text.to_string(),
                two_inputs: false,
            }),
            (0, 1, 1) => Ok(Self {
                text: text.to_string(),
                two_inputs: true,
            }),
            (0, 0, 0) => Err(format!(
                "template {text:?} has no slot: put {SLOT} (one input) or {SLOT_1} and {SLOT_2} (two inputs) where the text goes"
            )),
            _ => Err(format!(
                "template {text:?} must hold exactly one {SLOT}, or exactly one {SLOT_1} and one {SLOT_2}"
            )),
        }
    }

    /// Whether the template takes two texts.
    pub fn two_inputs(&self) -> bool {
        self.two_inputs
    }

    /// The template string.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Fills the slots: returns `(head, tail)`, where `head` runs through the last slot (it
    /// depends on the example) and `tail` is the constant rest the prediction follows. The suffix
    /// placement puts the prompt between the two.
    pub fn render(&self, text_a: &str, text_b: Option<&str>) -> Result<(String, String), String> {
        let filled = if self.two_inputs {
            let b = text_b
                .ok_or("this template needs two texts (<S1> and <S2>), the example has one")?;
            self.text
                .replacen(SLOT_1, text_a.trim(), 1)
                .replacen(SLOT_2, b.trim(), 1)
        } else {
            self.text.replacen(SLOT, text_a.trim(), 1)
        };
        let last_slot_end = [SLOT, SLOT_1, SLOT_2]
            .iter()
            .filter_map(|slot| self.text.find(slot).map(|i| i + slot.len()))
            .max()
            .expect("a validated template has a slot");
        let tail = &self.text[last_slot_end..];
        let head = &filled[..filled.len() - tail.len()];
        Ok((head.to_string(), tail.to_string()))
    }
}

impl TryFrom<String> for Template {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Template::new(&s)
    }
}

impl From<Template> for String {
    fn from(t: Template) -> String {
        t.text
    }
}

/// A classification task as the model sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub name: String,
    /// Class names, in label-index order.
    pub classes: Vec<String>,
    pub template: Template,
    /// The label words of each class, in the same order: one word or several (the class scores
    /// the mean of their logits; see [`super::verbalizer`]). The leading-space form is what a
    /// causal LM predicts after the template (e.g. `" great"`).
    pub verbalizer: Vec<LabelWords>,
    pub metric: Metric,
}

/// How to treat a label word that is more than one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MultiTokenWords {
    /// Refuse (the default): the verbalizer readout needs one token per class.
    Reject,
    /// Score the word's first token; the caller is told which words were cut.
    FirstToken,
}

impl TaskSpec {
    /// Checks the spec's own consistency (classes, verbalizer, template).
    pub fn validate(&self) -> Result<(), String> {
        if self.classes.len() < 2 {
            return Err(format!("task {}: needs at least two classes", self.name));
        }
        if let Some((i, class)) = self
            .classes
            .iter()
            .enumerate()
            .find(|(i, c)| self.classes[..*i].contains(c))
        {
            return Err(format!(
                "task {}: class {class:?} is listed twice in `classes` (as class {} and {i}); \
                 every class needs its own name",
                self.name,
                self.classes.iter().position(|c| c == class).unwrap_or(0)
            ));
        }
        if self.verbalizer.len() != self.classes.len() {
            return Err(format!(
                "task {}: {} label words for {} classes",
                self.name,
                self.verbalizer.len(),
                self.classes.len()
            ));
        }
        for (class, words) in self.classes.iter().zip(&self.verbalizer) {
            if words.words().is_empty() {
                return Err(format!(
                    "task {}: class {class:?} has an empty list of label words",
                    self.name
                ));
            }
            if let Some(w) = words.words().iter().find(|w| w.trim().is_empty()) {
                return Err(format!("task {}: empty label word {w:?}", self.name));
            }
        }
        Ok(())
    }

    #[cfg(feature = "engine")]
    /// The verbalizer's token ids under `tokenizer`, grouped by class. A word that is not a
    /// single token is an error naming it, unless `multi` is [`MultiTokenWords::FirstToken`], in
    /// which case its first token is used and the word is returned in the second list.
    pub fn verbalizer_ids(
        &self,
        tokenizer: &Tokenizer,
        multi: MultiTokenWords,
    ) -> anyhow::Result<(Verbalizer, Vec<String>)> {
        let mut classes = Vec::with_capacity(self.verbalizer.len());
        let mut cut = Vec::new();
        let mut owner: std::collections::HashMap<u32, &str> = std::collections::HashMap::new();
        for words in &self.verbalizer {
            let mut ids = Vec::with_capacity(words.words().len());
            for word in words.words() {
                let tokens = tokenizer.encode(word)?;
                let id = match (tokens.as_slice(), multi) {
                    ([id], _) => *id,
                    ([], _) => anyhow::bail!("label word {word:?} encodes to no token"),
                    ([first, ..], MultiTokenWords::FirstToken) => {
                        cut.push(word.clone());
                        *first
                    }
                    (many, MultiTokenWords::Reject) => anyhow::bail!(
                        "label word {word:?} is {} tokens for this model ({}); choose a word that is a \
                         single token (`bbt data show TASK` checks a task's words)",
                        many.len(),
                        many.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" ")
                    ),
                };
                if let Some(other) = owner.insert(id, word.as_str()) {
                    anyhow::bail!(
                        "label word {word:?} maps to the same token as the label word {other:?}"
                    );
                }
                ids.push(id);
            }
            classes.push(ids);
        }
        let verbalizer = Verbalizer::new(classes).map_err(|e| anyhow::anyhow!(e))?;
        Ok((verbalizer, cut))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_splits_into_head_and_constant_tail() {
        let t = Template::new(" <S> It was").unwrap();
        assert_eq!(
            t.render("  a fine film. ", None).unwrap(),
            (" a fine film.".to_string(), " It was".to_string())
        );
        let t = Template::new(" <S1> ? <S2> Answer:").unwrap();
        assert!(t.two_inputs());
        assert_eq!(
            t.render("A man sleeps.", Some("A man rests.")).unwrap(),
            (
                " A man sleeps. ? A man rests.".to_string(),
                " Answer:".to_string()
            )
        );
        let reversed = Template::new("<S2> | <S1> =").unwrap();
        assert_eq!(
            reversed.render("a", Some("b")).unwrap(),
            ("b | a".to_string(), " =".to_string())
        );
    }

    #[test]
    fn templates_without_or_with_extra_slots_are_refused() {
        assert!(Template::new(" It was")
            .unwrap_err()
            .contains("has no slot"));
        assert!(Template::new("<S> and <S>")
            .unwrap_err()
            .contains("exactly one"));
        assert!(Template::new("<S1> only")
            .unwrap_err()
            .contains("exactly one"));
        let one = Template::new("<S1> ? <S2>").unwrap();
        assert!(one
            .render("a", None)
            .unwrap_err()
            .contains("needs two texts"));
    }

    #[test]
    fn a_class_named_twice_is_refused_by_name() {
        let spec = TaskSpec {
            name: "t".into(),
            classes: vec!["a".into(), "b".into(), "a".into()],
            template: Template::new(" <S> is").unwrap(),
            verbalizer: vec![" x".into(), " y".into(), " z".into()],
            metric: Metric::Accuracy,
        };
        let e = spec.validate().unwrap_err();
        assert!(
            e.contains("class \"a\" is listed twice in `classes` (as class 0 and 2)"),
            "{e}"
        );
    }
}
