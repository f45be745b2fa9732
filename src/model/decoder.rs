//! The decoder-only transformer forward (Llama family and Gemma 3) on packed, ragged batches.
//!
//! Tokens of all rows are packed into one `[n, hidden]` matrix so the matmuls, which dominate
//! the cost, never compute padding. Only attention unpacks into a padded `[b, heads, t, dim]`
//! layout. A row may continue a cached past (keys/values of earlier positions), which is how
//! prompt prefixes are shared across examples and example texts are reused across prompts.

use candle_core::{DType, Device, Tensor};

use super::config::{Architecture, ModelConfig};
use super::fused::{masked_softmax, GateActivation};
use super::layers::{gated_mlp, rms_norm, MaskSpec, Rotary};
use super::linear::matmul_t;
use super::weights::{DecoderWeights, LayerWeights};

/// Keys and values of earlier positions, per layer `[rows, kv_heads, max_len, head_dim]`,
/// right-padded; `lengths[r]` positions of row `r` are valid and start at position 0.
#[derive(Clone)]
pub struct KvCache {
    pub layers: Vec<(Tensor, Tensor)>,
    pub lengths: Vec<usize>,
}

impl KvCache {
    /// Number of cached rows.
    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    /// Bytes held by the cache's tensors.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }
}

/// Per-layer vectors added to the hidden states at some positions (BBTv2 deep prompts).
pub struct DeepAdd {
    /// Packed positions `[m]` (u32) that receive vectors.
    pub positions: Tensor,
    /// `[num_layers, m, hidden]`: row j of layer l is added before layer l at `positions[j]`.
    pub vectors: Tensor,
}

/// One packed forward pass.
pub struct PackedInput<'a> {
    /// Input embeddings of all rows' tokens, concatenated: `[n, hidden]`.
    pub embeddings: Tensor,
    /// Number of tokens of each row (sums to n).
    pub lengths: Vec<usize>,
    /// Keys/values each row continues, and which cached row each row uses.
    pub past: Option<(&'a KvCache, Vec<usize>)>,
    pub deep: Option<DeepAdd>,
    /// Return every row's keys/values (only without a past).
    pub keep_kv: bool,
    /// Return the hidden states entering every layer (deep-prompt projection scales).
    pub keep_layer_inputs: bool,
}

/// What a pass returns.
pub struct PackedOutput {
    /// Final-norm hidden state at each row's last token `[b, hidden]`.
    pub last_hidden: Tensor,
    pub kv: Option<KvCache>,
    /// Packed `[n, hidden]` hidden states entering each layer (after its deep-prompt addition),
    /// when asked for.
    pub layer_inputs: Option<Vec<Tensor>>,
}

/// Where a layer's positions are: its rotary tables, gathered at every padded position, and
/// its attention mask (global, or Gemma 3's sliding window).
struct Positions<'a> {
    rotary: &'a Rotary,
    rope: &'a (Tensor, Tensor),
    mask: &'a Tensor,
}

/// A packed batch's shape and the index maps between the packed `[n, ...]` layout and the
/// padded `[b, t, ...]` one that attention needs.
struct BatchLayout {
    rows: usize,
    /// Tokens of the longest row.
    t: usize,
    /// Tokens of all rows.
    tokens: usize,
    /// Whether rows differ in length (else packed and padded are the same).
    ragged: bool,
    /// Packed index of every padded position (a row's last token repeated past its end).
    pad_idx: Tensor,
    /// Padded index of every packed token.
    unpad_idx: Tensor,
    /// Packed index of each row's last token.
    last_idx: Tensor,
    /// Absolute position of every padded position.
    positions: Tensor,
    /// Cached positions before each row.
    past_lengths: Vec<usize>,
    /// Padded length of the cache's keys/values.
    past_len: usize,
    /// The cached rows to gather, unless rows use the cache exactly in order.
    past_gather: Option<Tensor>,
}

impl BatchLayout {
    /// Checks `input` and lays it out, positions capped below `max_position`.
    fn new(input: &PackedInput, max_position: usize, device: &Device) -> anyhow::Result<Self> {
        let b = input.lengths.len();
        anyhow::ensure!(b > 0, "empty batch");
        anyhow::ensure!(
            input.lengths.iter().all(|&l| l > 0),
            "every row needs at least one token"
        );
        anyhow::ensure!(
            !(input.keep_kv && input.past.is_some()),
            "keep_kv with a past is not supported"
        );
        let tokens: usize = input.lengths.iter().sum();
        let t = *input.lengths.iter().max().expect("b > 0");
        let (past_lengths, past_len) = match &input.past {
            Some((cache, rows)) => {
                anyhow::ensure!(rows.len() == b, "one past row per row needed");
                anyhow::ensure!(
                    rows.iter().all(|&r| r < cache.rows()),
                    "past row out of range"
                );
                let lens: Vec<usize> = rows.iter().map(|&r| cache.lengths[r]).collect();
                let p = cache
                    .layers
                    .first()
                    .map(|(k, _)| k.dim(2))
                    .transpose()?
                    .unwrap_or(0);
                (lens, p)
            }
            None => (vec![0; b], 0),
        };
        let max_pos = past_lengths
            .iter()
            .zip(&input.lengths)
            .map(|(a, l)| a + l)
            .max()
            .unwrap_or(0);
        anyhow::ensure!(
            max_pos <= max_position,
            "sequence of {max_pos} positions exceeds the model's maximum of {max_position}"
        );
        let mut offsets = Vec::with_capacity(b);
        let mut acc = 0usize;
        for &l in &input.lengths {
            offsets.push(acc);
            acc += l;
        }
        let u32s = |v: Vec<u32>| {
            let n = v.len();
            Tensor::from_vec(v, n, device)
        };
        let mut pad_idx = Vec::with_capacity(b * t);
        let mut positions = Vec::with_capacity(b * t);
        for row in 0..b {
            for ti in 0..t {
                pad_idx.push((offsets[row] + ti.min(input.lengths[row] - 1)) as u32);
                positions.push((past_lengths[row] + ti).min(max_position - 1) as u32);
            }
        }
        let unpad_idx: Vec<u32> = (0..b)
            .flat_map(|row| (0..input.lengths[row]).map(move |ti| (row * t + ti) as u32))
            .collect();
        let last_idx: Vec<u32> = (0..b)
            .map(|r| (offsets[r] + input.lengths[r] - 1) as u32)
            .collect();
        let past_gather = match &input.past {
            Some((cache, rows)) if !rows.iter().copied().eq(0..cache.rows()) => {
                Some(u32s(rows.iter().map(|&r| r as u32).collect())?)
            }
            _ => None,
        };
        Ok(Self {
            rows: b,
            t,
            tokens,
            ragged: input.lengths.iter().any(|&l| l != t),
            pad_idx: u32s(pad_idx)?,
            unpad_idx: u32s(unpad_idx)?,
            last_idx: u32s(last_idx)?,
            positions: u32s(positions)?,
            past_lengths,
            past_len,
            past_gather,
        })
    }

    /// Packed `[n, ...]` rows laid out padded, `[b * t, ...]`.
    fn pad(&self, packed: Tensor) -> candle_core::Result<Tensor> {
        if self.ragged {
            packed.index_select(&self.pad_idx, 0)
        } else {
            Ok(packed)
        }
    }

    /// Padded `[b * t, ...]` rows packed again, `[n, ...]`.
    fn unpad(&self, padded: Tensor) -> candle_core::Result<Tensor> {
        if self.ragged {
            padded.index_select(&self.unpad_idx, 0)
        } else {
            Ok(padded)
        }
    }
}

/// A loaded decoder: configuration, weights and rotary tables on one device.
pub struct Decoder {
    pub cfg: ModelConfig,
    pub weights: DecoderWeights,
    rotary_global: Rotary,
    rotary_local: Option<Rotary>,
    device: Device,
    dtype: DType,
}

impl Decoder {
    /// Wraps loaded weights; builds rotary tables up to `max_position`.
    pub fn new(
        cfg: ModelConfig,
        weights: DecoderWeights,
        max_position: usize,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<Self> {
        let rotary = |theta| {
            Rotary::new(
                theta,
                cfg.head_dim,
                max_position,
                cfg.rope_style,
                device,
                dtype,
            )
        };
        let rotary_global = rotary(cfg.rope_theta)?;
        let rotary_local = match cfg.sliding_window {
            Some(_) => Some(rotary(cfg.rope_theta_local)?),
            None => None,
        };
        Ok(Self {
            cfg,
            weights,
            rotary_global,
            rotary_local,
            device: device.clone(),
            dtype,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Largest absolute position the rotary tables support.
    pub fn max_position(&self) -> usize {
        self.rotary_global.max_position()
    }

    /// Multiplier applied to input embeddings (Gemma scales by sqrt(hidden)).
    pub fn embedding_scale(&self) -> f64 {
        match self.cfg.architecture {
            Architecture::Gemma3 => (self.cfg.hidden_size as f64).sqrt(),
            Architecture::Llama => 1.0,
        }
    }

    /// Runs all layers over a packed batch.
    ///
    /// On the CPU the whole pass runs on one of rayon's worker threads: every kernel inside it
    /// splits its work over the pool, and a caller outside the pool would otherwise be put to
    /// sleep and woken again around each of those hundreds of parallel steps.
    pub fn run(&self, input: PackedInput) -> anyhow::Result<PackedOutput> {
        if self.device.is_cpu() && rayon::current_thread_index().is_none() {
            rayon::scope(|_| self.run_layers(input))
        } else {
            self.run_layers(input)
        }
    }

    /// [`Decoder::run`] on the calling thread: the batch's layout, then every block, then the
    /// final norm at each row's last token.
    fn run_layers(&self, input: PackedInput) -> anyhow::Result<PackedOutput> {
        let cfg = &self.cfg;
        let layout = BatchLayout::new(&input, self.max_position(), &self.device)?;
        let (b, t) = (layout.rows, layout.t);
        let mask_spec = MaskSpec {
            lengths: &input.lengths,
            t,
            past_lengths: &layout.past_lengths,
            p: layout.past_len,
            start_positions: &layout.past_lengths,
        };
        let mask_global = mask_spec.build(None, &self.device, self.dtype)?;
        let mask_local = match cfg.sliding_window {
            Some(w) => Some(mask_spec.build(Some(w), &self.device, self.dtype)?),
            None => None,
        };
        let rope_global = self.rotary_global.gather(&layout.positions, b, t)?;
        let rope_local = match &self.rotary_local {
            Some(r) => Some((r, r.gather(&layout.positions, b, t)?)),
            None => None,
        };

        let mut x = input.embeddings;
        if self.embedding_scale() != 1.0 {
            x = (x * self.embedding_scale())?;
        }
        anyhow::ensure!(
            x.dim(0)? == layout.tokens,
            "embeddings rows {} != tokens {}",
            x.dim(0)?,
            layout.tokens
        );
        let mut kept = Vec::new();
        let mut layer_inputs = Vec::new();
        for (li, lw) in self.weights.layers.iter().enumerate() {
            if let Some(deep) = &input.deep {
                let add = deep.vectors.get(li)?;
                x = x.index_add(&deep.positions, &add, 0)?;
            }
            if input.keep_layer_inputs {
                layer_inputs.push(x.clone());
            }
            let (rotary, rope, mask) = match (&rope_local, cfg.is_local_layer(li)) {
                (Some((r, cs)), true) => (*r, cs, mask_local.as_ref().expect("local mask")),
                _ => (&self.rotary_global, &rope_global, &mask_global),
            };
            let position = Positions { rotary, rope, mask };
            let past = input.past.as_ref().map(|(cache, _)| &cache.layers[li]);
            let (o, kv) = self.attention(lw, &x, &layout, &position, past)?;
            if input.keep_kv {
                kept.push(kv);
            }
            x = (x + o)?;
            let m = self.feed_forward(lw, &x)?;
            x = (x + m)?;
        }
        let last = x.index_select(&layout.last_idx, 0)?;
        let last_hidden = rms_norm(&last, &self.weights.final_norm, cfg.rms_norm_eps)?;
        let kv = input.keep_kv.then(|| KvCache {
            layers: kept,
            lengths: input.lengths.clone(),
        });
        Ok(PackedOutput {
            last_hidden,
            kv,
            layer_inputs: input.keep_layer_inputs.then_some(layer_inputs),
        })
    }

    /// A block's attention sublayer on the packed `x` (`[n, hidden]`): its output before the
    /// residual add, and this pass's keys and values (`[b, kv_heads, t, head_dim]`).
    fn attention(
        &self,
        lw: &LayerWeights,
        x: &Tensor,
        layout: &BatchLayout,
        position: &Positions,
        past: Option<&(Tensor, Tensor)>,
    ) -> anyhow::Result<(Tensor, (Tensor, Tensor))> {
        let cfg = &self.cfg;
        let (b, t) = (layout.rows, layout.t);
        let h = rms_norm(x, &lw.attn_norm, cfg.rms_norm_eps)?;
        let qkv = layout.pad(lw.wqkv.forward(&h)?)?;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let qkv = qkv.reshape((b, t, nh + 2 * nkv, hd))?;
        let mut q = qkv.narrow(2, 0, nh)?.transpose(1, 2)?.contiguous()?;
        let mut k = qkv.narrow(2, nh, nkv)?.transpose(1, 2)?.contiguous()?;
        let v = qkv
            .narrow(2, nh + nkv, nkv)?
            .transpose(1, 2)?
            .contiguous()?;
        if let (Some(qn), Some(kn)) = (&lw.q_norm, &lw.k_norm) {
            q = rms_norm(&q, qn, cfg.rms_norm_eps)?;
            k = rms_norm(&k, kn, cfg.rms_norm_eps)?;
        }
        let (cos, sin) = position.rope;
        let q = position.rotary.apply(&q, cos, sin)?;
        let k = position.rotary.apply(&k, cos, sin)?;
        let (k_all, v_all) = match past {
            Some((pk, pv)) => {
                let (pk, pv) = match &layout.past_gather {
                    Some(idx) => (pk.index_select(idx, 0)?, pv.index_select(idx, 0)?),
                    None => (pk.clone(), pv.clone()),
                };
                (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?)
            }
            None => (k.clone(), v.clone()),
        };
        let group = nh / nkv;
        let s = k_all.dim(2)?;
        let q = (q * cfg.attention_scale)?.reshape((b, nkv, group * t, hd))?;
        let scores = q.matmul(&k_all.t()?)?.reshape((b, nkv, group, t, s))?;
        let probs = masked_softmax(&scores, position.mask)?;
        let attn = probs
            .reshape((b, nkv, group * t, s))?
            .matmul(&v_all.contiguous()?)?;
        let attn = attn
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b * t, nh * hd))?;
        let mut o = lw.wo.forward(&layout.unpad(attn)?)?;
        if let Some(a) = &lw.adapters.after_attention {
            o = (&o + a.forward(&o)?)?;
        }
        if let Some(pn) = &lw.post_attn_norm {
            o = rms_norm(&o, pn, cfg.rms_norm_eps)?;
        }
        Ok((o, (k, v)))
    }

    /// A block's feed-forward sublayer on the packed `x`, with any adapters: its output before
    /// the residual add.
    fn feed_forward(&self, lw: &LayerWeights, x: &Tensor) -> anyhow::Result<Tensor> {
        let cfg = &self.cfg;
        let act = match cfg.architecture {
            Architecture::Llama => GateActivation::Silu,
            Architecture::Gemma3 => GateActivation::GeluTanh,
        };
        let h = rms_norm(x, &lw.ffn_norm, cfg.rms_norm_eps)?;
        let mut m = gated_mlp(&h, &lw.w_gate_up, &lw.w_down, act)?;
        if let Some(a) = &lw.adapters.after_ffn {
            m = (&m + a.forward(&m)?)?;
        }
        if let Some(a) = &lw.adapters.beside_ffn {
            m = (m + a.forward(&h)?)?;
        }
        if let Some(pn) = &lw.post_ffn_norm {
            m = rms_norm(&m, pn, cfg.rms_norm_eps)?;
        }
        Ok(m)
    }

    /// Logits of `hidden` `[b, hidden]` over `token_ids` only (or the whole vocabulary).
    pub fn logits(
        &self,
        hidden: &Tensor,
        token_ids: Option<&[u32]>,
    ) -> candle_core::Result<Tensor> {
        let head = self.weights.output_head();
        match token_ids {
            Some(ids) => {
                let idx = Tensor::from_vec(ids.to_vec(), ids.len(), &self.device)?;
                matmul_t(hidden, &head.index_select(&idx, 0)?)
            }
            None => matmul_t(hidden, head),
        }
    }

    /// Embedding rows of `ids` `[len, hidden]`, unscaled.
    pub fn embed(&self, ids: &[u32]) -> candle_core::Result<Tensor> {
        let idx = Tensor::from_vec(ids.to_vec(), ids.len(), &self.device)?;
        self.weights.embed.index_select(&idx, 0)
    }
}
