//! Norm tuning: the norm weights plus the verbalizer rows of the output head.

use candle_core::Tensor;

use crate::peft::params::Attachment;

/// Makes every norm weight trainable and adds a trainable copy of the label words' rows of the
/// output head (`ids`).
pub(crate) fn attach_norms_and_head(a: &mut Attachment, ids: &[u32]) -> anyhow::Result<()> {
    a.make_trainable("final_norm", |w| &mut w.final_norm)?;
    for li in 0..a.weights.layers.len() {
        a.make_layer_norms_trainable(li)?;
    }
    let ids = Tensor::from_vec(ids.to_vec(), ids.len(), a.weights.embed.device())?;
    let rows = a.weights.output_head().index_select(&ids, 0)?;
    a.head = Some(a.add("verbalizer_head", &rows)?);
    Ok(())
}
