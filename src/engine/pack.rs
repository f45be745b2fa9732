//! Rows laid end to end as one packed input: every token embedding gathered at once, prompt
//! vectors appended to the same table, one `index_select` into `[positions, hidden]`, and deep
//! vectors as per-layer additions at the prompt positions.

use anyhow::Context;
use candle_core::Tensor;

use super::{Engine, Prompt, Row, Segment};
use crate::model::decoder::{DeepAdd, KvCache, PackedInput};

/// Where each packed position comes from.
struct Layout {
    /// Every token id of every row, in order.
    token_ids: Vec<u32>,
    /// Per packed position: a prompt vector (`true`, its row in the prompts' concatenation) or
    /// a token (`false`, its index in `token_ids`).
    sources: Vec<(bool, usize)>,
    /// Positions of each row.
    lengths: Vec<usize>,
    /// Packed positions of deep prompts' vectors, and their rows in the prompts' concatenation.
    deep_positions: Vec<u32>,
    deep_sources: Vec<u32>,
    /// Vectors of all prompts.
    prompt_rows: usize,
}

impl Layout {
    /// Walks the rows' segments.
    fn of(rows: &[Row], prompts: &[Prompt]) -> anyhow::Result<Self> {
        let mut prompt_offsets = Vec::with_capacity(prompts.len());
        let mut prompt_rows = 0usize;
        for p in prompts {
            prompt_offsets.push(prompt_rows);
            prompt_rows += p.len();
        }
        let mut layout = Self {
            token_ids: Vec::new(),
            sources: Vec::new(),
            lengths: Vec::with_capacity(rows.len()),
            deep_positions: Vec::new(),
            deep_sources: Vec::new(),
            prompt_rows,
        };
        for row in rows {
            let start = layout.sources.len();
            for seg in &row.segments {
                match seg {
                    Segment::Tokens(ids) => {
                        for &id in ids {
                            layout.sources.push((false, layout.token_ids.len()));
                            layout.token_ids.push(id);
                        }
                    }
                    Segment::Prompt(pi) => {
                        let p = prompts.get(*pi).with_context(|| {
                            format!("segment names prompt {pi}, only {} given", prompts.len())
                        })?;
                        for j in 0..p.len() {
                            if p.deep.is_some() {
                                layout.deep_positions.push(layout.sources.len() as u32);
                                layout.deep_sources.push((prompt_offsets[*pi] + j) as u32);
                            }
                            layout.sources.push((true, prompt_offsets[*pi] + j));
                        }
                    }
                }
            }
            anyhow::ensure!(
                layout.sources.len() > start,
                "a row has no tokens and no prompt vectors"
            );
            layout.lengths.push(layout.sources.len() - start);
        }
        Ok(layout)
    }
}

impl Engine {
    /// Builds the packed input embeddings (and deep-prompt additions) of `rows`.
    pub(super) fn pack<'a>(
        &self,
        rows: &[Row],
        prompts: &[Prompt],
        past: Option<&'a KvCache>,
        keep_kv: bool,
    ) -> anyhow::Result<PackedInput<'a>> {
        anyhow::ensure!(!rows.is_empty(), "no rows to run");
        self.check_prompts(prompts)?;
        let layout = Layout::of(rows, prompts)?;
        let past = past_rows(rows, past)?;
        self.check_ids(&layout.token_ids)?;
        let embeddings = self.gather_embeddings(&layout, prompts)?;
        let deep = self.deep_add(&layout, prompts)?;
        Ok(PackedInput {
            embeddings,
            lengths: layout.lengths,
            past,
            deep,
            keep_kv,
            keep_layer_inputs: false,
        })
    }

    /// Every prompt is `[L, hidden]`, and its deep vectors (if any) `[layers, L, hidden]`.
    fn check_prompts(&self, prompts: &[Prompt]) -> anyhow::Result<()> {
        let hidden = self.decoder.cfg.hidden_size;
        for (i, p) in prompts.iter().enumerate() {
            anyhow::ensure!(
                p.embeddings.rank() == 2 && p.embeddings.dim(1)? == hidden,
                "prompt {i} must be [L, {hidden}], got {:?}",
                p.embeddings.dims()
            );
            if let Some(d) = &p.deep {
                anyhow::ensure!(
                    d.dims() == [self.decoder.cfg.num_layers, p.len(), hidden],
                    "deep prompt {i} must be [{}, {}, {hidden}], got {:?}",
                    self.decoder.cfg.num_layers,
                    p.len(),
                    d.dims()
                );
            }
        }
        Ok(())
    }

    /// The packed `[positions, hidden]` input: a table of every token embedding and every
    /// prompt vector, gathered once (or taken as is when it is already in order).
    fn gather_embeddings(&self, layout: &Layout, prompts: &[Prompt]) -> anyhow::Result<Tensor> {
        let device = self.decoder.device();
        let dtype = self.decoder.dtype();
        let token_emb = self.decoder.embed(&layout.token_ids)?;
        let table = if layout.prompt_rows == 0 {
            token_emb
        } else {
            let mut parts = vec![token_emb];
            for p in prompts {
                parts.push(p.embeddings.to_device(device)?.to_dtype(dtype)?);
            }
            Tensor::cat(&parts, 0)?
        };
        let n_tok = layout.token_ids.len();
        let gather: Vec<u32> = layout
            .sources
            .iter()
            .map(|&(is_prompt, i)| {
                if is_prompt {
                    (n_tok + i) as u32
                } else {
                    i as u32
                }
            })
            .collect();
        let identity =
            table.dim(0)? == gather.len() && gather.iter().enumerate().all(|(i, &g)| i as u32 == g);
        Ok(if identity {
            table
        } else {
            let n = gather.len();
            table.index_select(&Tensor::from_vec(gather, n, device)?, 0)?
        })
    }

    /// The deep prompts' per-layer additions at their packed positions, if any prompt is deep.
    fn deep_add(&self, layout: &Layout, prompts: &[Prompt]) -> anyhow::Result<Option<DeepAdd>> {
        if layout.deep_positions.is_empty() {
            return Ok(None);
        }
        let device = self.decoder.device();
        let dtype = self.decoder.dtype();
        let cfg = &self.decoder.cfg;
        let parts = prompts
            .iter()
            .map(|p| match &p.deep {
                Some(d) => Ok(d.to_device(device)?.to_dtype(dtype)?),
                None => Tensor::zeros((cfg.num_layers, p.len(), cfg.hidden_size), dtype, device),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let all = Tensor::cat(&parts, 1)?;
        let m = layout.deep_sources.len();
        Ok(Some(DeepAdd {
            positions: Tensor::from_vec(layout.deep_positions.clone(), m, device)?,
            vectors: all.index_select(
                &Tensor::from_vec(layout.deep_sources.clone(), m, device)?,
                1,
            )?,
        }))
    }
}

/// The cached row each row continues, when a past cache is given (then every row names one).
fn past_rows<'a>(
    rows: &[Row],
    past: Option<&'a KvCache>,
) -> anyhow::Result<Option<(&'a KvCache, Vec<usize>)>> {
    anyhow::ensure!(
        past.is_some() == rows.iter().any(|r| r.past_row.is_some()),
        "rows name past rows exactly when a past cache is given"
    );
    let Some(cache) = past else {
        return Ok(None);
    };
    let idx: Vec<usize> = rows
        .iter()
        .map(|r| {
            r.past_row
                .context("with a past cache, every row must name its past row")
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Some((cache, idx)))
}
