//! BitFit (Ben Zaken et al. 2022): biases only. The null prompt (Logan IV et al. 2022) trains
//! the same parameters without template words.

use crate::peft::params::Attachment;

/// Adds a zero bias, trainable, to every projection of every block (the Llama and Gemma
/// blocks have none of their own).
pub(crate) fn attach_biases(a: &mut Attachment) -> anyhow::Result<()> {
    for li in 0..a.weights.layers.len() {
        for (k, name) in ["wqkv", "wo", "w_gate_up", "w_down"]
            .into_iter()
            .enumerate()
        {
            let out = a.weights.layers[li].linears_mut()[k].out_features();
            let zeros = a.init.zeros(&[out]);
            let bias = a.add(&format!("layers.{li}.{name}.bias"), &zeros)?;
            a.weights.layers[li].linears_mut()[k].bias = Some(bias);
        }
    }
    a.notes.push(
        "the Llama/Gemma blocks have no biases: zero-initialised biases were added to every \
         projection (q, k, v, o, gate, up, down) and trained"
            .into(),
    );
    Ok(())
}
