//! BBT's placements on top of [`Engine::forward`]: the prefix placement (each prompt's
//! `[bos][prompt]` prefilled once and continued by its texts) and the suffix placement
//! (`[bos][text]` cached per session, continued by `[prompt][tail]`, or run whole once).

use super::{Engine, ForwardOutput, Prompt, Readout, Row, Segment};
use crate::model::decoder::KvCache;

impl Engine {
    /// BBT prefix placement, `[bos][prompt_c][text_e]` for every candidate c and example e,
    /// each text whole (head and template tail; row `c * E + e` of the result). Each candidate's
    /// prompt keys/values are computed once and shared by all examples.
    pub fn run_prefix(
        &self,
        prompts: &[Prompt],
        texts: &[Vec<u32>],
        readout: &Readout,
    ) -> anyhow::Result<ForwardOutput> {
        self.run_prefix_groups(prompts, &vec![texts; prompts.len()], readout)
    }

    /// The prefix placement with each prompt reading its own texts: `[bos][prompt_c][text]` for
    /// every text of `texts[c]`, rows prompt by prompt in the order of their texts. The prompts
    /// may differ in length (requests of different sessions share one pass this way); each
    /// `[bos][prompt]` is prefilled once and continued by its texts.
    pub fn run_prefix_groups(
        &self,
        prompts: &[Prompt],
        texts: &[&[Vec<u32>]],
        readout: &Readout,
    ) -> anyhow::Result<ForwardOutput> {
        anyhow::ensure!(
            texts.len() == prompts.len(),
            "{} groups of texts for {} prompts",
            texts.len(),
            prompts.len()
        );
        anyhow::ensure!(
            texts.iter().all(|g| g.iter().all(|t| !t.is_empty())),
            "every example needs at least one token after the prompt to predict from"
        );
        let bos = self.bos_segment();
        // With no BOS and empty prompts there is nothing to prefill: the texts stand alone.
        let shared = !bos.is_empty() || prompts.iter().any(|p| !p.is_empty());
        let rows: Vec<Row> = texts
            .iter()
            .enumerate()
            .flat_map(|(c, group)| {
                group.iter().map(move |t| Row {
                    segments: vec![Segment::Tokens(t.clone())],
                    past_row: shared.then_some(c),
                })
            })
            .collect();
        if !shared {
            return self.forward(&rows, &[], None, readout, false);
        }
        let prefix_rows: Vec<Row> = (0..prompts.len())
            .map(|c| Row::new(vec![Segment::Tokens(bos.clone()), Segment::Prompt(c)]))
            .collect();
        let cache = self.prefill(&prefix_rows, prompts)?;
        self.forward(&rows, &[], Some(&cache), readout, false)
    }

    /// Keys/values of `[bos][text_e]` for each example: the per-session cache of the suffix
    /// placement, computed once and reused by every later prompt.
    pub fn cache_texts(&self, texts: &[Vec<u32>]) -> anyhow::Result<KvCache> {
        let bos = self.bos_segment();
        anyhow::ensure!(
            !bos.is_empty() || texts.iter().all(|t| !t.is_empty()),
            "empty text: this model has no BOS token to stand in for it"
        );
        let rows: Vec<Row> = texts
            .iter()
            .map(|t| {
                Row::new(vec![Segment::Tokens(
                    bos.iter().chain(t).copied().collect(),
                )])
            })
            .collect();
        self.prefill(&rows, &[])
    }

    /// BBT suffix placement, `[bos][text_e][prompt_c][tail_e]` (row `c * E + e`), continuing the
    /// cached texts from [`Engine::cache_texts`].
    pub fn run_suffix(
        &self,
        texts: &KvCache,
        prompts: &[Prompt],
        tails: &[Vec<u32>],
        readout: &Readout,
    ) -> anyhow::Result<ForwardOutput> {
        anyhow::ensure!(
            tails.len() == texts.rows(),
            "{} tails for {} cached texts",
            tails.len(),
            texts.rows()
        );
        let rows: Vec<Row> = (0..prompts.len())
            .flat_map(|c| {
                tails.iter().enumerate().map(move |(e, t)| Row {
                    segments: vec![Segment::Prompt(c), Segment::Tokens(t.clone())],
                    past_row: Some(e),
                })
            })
            .collect();
        self.forward(&rows, prompts, Some(texts), readout, false)
    }

    /// The suffix placement in one pass with no cache, `[bos][text_e][prompt_c][tail_e]`: for
    /// a split scored once (a test set), where building and keeping a cache would not pay off.
    pub fn run_inline(
        &self,
        prompts: &[Prompt],
        texts: &[Vec<u32>],
        tails: &[Vec<u32>],
        readout: &Readout,
    ) -> anyhow::Result<ForwardOutput> {
        anyhow::ensure!(
            texts.len() == tails.len(),
            "{} texts for {} tails",
            texts.len(),
            tails.len()
        );
        let bos = self.bos_segment();
        let rows: Vec<Row> = (0..prompts.len())
            .flat_map(|c| {
                let bos = &bos;
                texts.iter().zip(tails).map(move |(text, tail)| {
                    let head: Vec<u32> = bos.iter().chain(text).copied().collect();
                    Row::new(vec![
                        Segment::Tokens(head),
                        Segment::Prompt(c),
                        Segment::Tokens(tail.clone()),
                    ])
                })
            })
            .collect();
        self.forward(&rows, prompts, None, readout, false)
    }
}
