//! Rows laid end to end as one packed input: every token embedding gathered at once, prompt
//! vectors appended to the same table, one `index_select` into `[positions, hidden]`, and deep
//! vectors as per-layer additions at the prompt positions.

use anyhow::Context;
use candle_core::Tensor;

use super::{Engine, Prompt, Row, Segment};
use crate::model::decoder::{DeepAdd, KvCache, PackedInput};

impl Engine {
    /// Builds the packed input embeddings (and deep-prompt additions) of `rows`.
    pub(super) fn pack<'a>(
        &self,
        rows: &[Row],
        prompts: &[Prompt],
        past: Option<&'a KvCache>,
        keep_kv: bool,
    ) -> anyhow::Result<PackedInput<'a>> {
        let hidden = self.decoder.cfg.hidden_size;
        anyhow::ensure!(!rows.is_empty(), "no rows to run");
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
        // Source table = [all token embeddings; all prompts' vectors]; one gather builds the input.
        let mut token_ids = Vec::new();
        let mut prompt_offsets = Vec::with_capacity(prompts.len());
        let mut prompt_rows = 0usize;
        for p in prompts {
            prompt_offsets.push(prompt_rows);
            prompt_rows += p.len();
        }
        let mut lengths = Vec::with_capacity(rows.len());
        let mut sources: Vec<(bool, usize)> = Vec::new(); // (is_prompt, index)
        let mut deep_positions = Vec::new();
        let mut deep_sources = Vec::new();
        for row in rows {
            let start = sources.len();
            for seg in &row.segments {
                match seg {
                    Segment::Tokens(ids) => {
                        for &id in ids {
                            sources.push((false, token_ids.len()));
                            token_ids.push(id);
                        }
                    }
                    Segment::Prompt(pi) => {
                        let p = prompts.get(*pi).with_context(|| {
                            format!("segment names prompt {pi}, only {} given", prompts.len())
                        })?;
                        for j in 0..p.len() {
                            if p.deep.is_some() {
                                deep_positions.push(sources.len() as u32);
                                deep_sources.push((prompt_offsets[*pi] + j) as u32);
                            }
                            sources.push((true, prompt_offsets[*pi] + j));
                        }
                    }
                }
            }
            anyhow::ensure!(
                sources.len() > start,
                "a row has no tokens and no prompt vectors"
            );
            lengths.push(sources.len() - start);
        }
        anyhow::ensure!(
            past.is_some() == rows.iter().any(|r| r.past_row.is_some()),
            "rows name past rows exactly when a past cache is given"
        );
        let past = match past {
            Some(cache) => {
                let idx: Vec<usize> = rows
                    .iter()
                    .map(|r| {
                        r.past_row
                            .context("with a past cache, every row must name its past row")
                    })
                    .collect::<anyhow::Result<_>>()?;
                Some((cache, idx))
            }
            None => None,
        };
        self.check_ids(&token_ids)?;
        let device = self.decoder.device();
        let dtype = self.decoder.dtype();
        let token_emb = self.decoder.embed(&token_ids)?;
        let table = if prompt_rows == 0 {
            token_emb
        } else {
            let mut parts = vec![token_emb];
            for p in prompts {
                parts.push(p.embeddings.to_device(device)?.to_dtype(dtype)?);
            }
            Tensor::cat(&parts, 0)?
        };
        let n_tok = token_ids.len();
        let gather: Vec<u32> = sources
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
        let embeddings = if identity {
            table
        } else {
            let n = gather.len();
            table.index_select(&Tensor::from_vec(gather, n, device)?, 0)?
        };
        let deep = if deep_positions.is_empty() {
            None
        } else {
            let parts = prompts
                .iter()
                .map(|p| match &p.deep {
                    Some(d) => Ok(d.to_device(device)?.to_dtype(dtype)?),
                    None => Tensor::zeros(
                        (self.decoder.cfg.num_layers, p.len(), hidden),
                        dtype,
                        device,
                    ),
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let all = Tensor::cat(&parts, 1)?;
            let m = deep_sources.len();
            Some(DeepAdd {
                positions: Tensor::from_vec(deep_positions, m, device)?,
                vectors: all.index_select(&Tensor::from_vec(deep_sources, m, device)?, 1)?,
            })
        };
        Ok(PackedInput {
            embeddings,
            lengths,
            past,
            deep,
            keep_kv,
            keep_layer_inputs: false,
        })
    }
}
