//! A trainable past: keys/values at every layer that every example attends to, as prefix
//! tuning, P-tuning v2 and the MAM adapter train them.

use candle_core::Tensor;

use crate::model::decoder::KvCache;
use crate::model::linear::matmul_t;

/// Trainable keys/values at every layer.
pub enum TrainablePast {
    /// P-tuning v2: one `[1, kv_heads, L, head_dim]` key and value tensor per layer.
    Direct(Vec<(Tensor, Tensor)>),
    /// Prefix tuning: embeddings `[L, hidden]` -> `tanh(E W1^T + b1) W2^T + b2`, which holds every
    /// layer's keys and values (Li & Liang's reparameterisation, laid out as HF peft does).
    Mlp {
        /// `[L, hidden]`.
        embedding: Tensor,
        /// The MLP's first layer `[width, hidden]` and its bias.
        w1: Tensor,
        b1: Tensor,
        /// Its second layer `[layers * 2 * kv_dim, width]` and its bias.
        w2: Tensor,
        b2: Tensor,
        /// `(layers, kv_heads, head_dim)` of the model's attention.
        kv_shape: (usize, usize, usize),
    },
}

impl TrainablePast {
    /// The past as one row of `L` key/value positions at every layer; with `train` it carries
    /// gradients to the parameters, without it is detached.
    pub fn cache(&self, train: bool) -> candle_core::Result<KvCache> {
        let keep = |x: &Tensor| if train { x.clone() } else { x.detach() };
        let layers: Vec<(Tensor, Tensor)> = match self {
            TrainablePast::Direct(layers) => {
                layers.iter().map(|(k, v)| (keep(k), keep(v))).collect()
            }
            TrainablePast::Mlp {
                embedding,
                w1,
                b1,
                w2,
                b2,
                kv_shape: (nl, kvh, hd),
            } => {
                let hidden = matmul_t(&keep(embedding), &keep(w1))?
                    .broadcast_add(&keep(b1))?
                    .tanh()?;
                let out = matmul_t(&hidden, &keep(w2))?.broadcast_add(&keep(b2))?;
                let (nl, kvh, hd) = (*nl, *kvh, *hd);
                let l = out.dim(0)?;
                let out = out.reshape((l, nl, 2, kvh, hd))?;
                (0..nl)
                    .map(|li| -> candle_core::Result<(Tensor, Tensor)> {
                        let part = |j: usize| {
                            out.narrow(1, li, 1)?
                                .narrow(2, j, 1)?
                                .reshape((l, kvh, hd))?
                                .transpose(0, 1)?
                                .unsqueeze(0)?
                                .contiguous()
                        };
                        Ok((part(0)?, part(1)?))
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?
            }
        };
        let length = layers.first().map_or(Ok(0), |(k, _)| k.dim(2))?;
        Ok(KvCache {
            lengths: vec![length],
            layers,
        })
    }
}
