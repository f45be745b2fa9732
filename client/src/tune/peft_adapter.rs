//! A tuned prompt as a HF peft prompt-tuning adapter folder (`adapter_config.json` and
//! `adapter_model.safetensors`), loadable with `PeftModel.from_pretrained(base, folder)`.

use std::path::Path;

use serde_json::json;

use super::outputs::write_rows_safetensors;

/// Writes `prompt` (`[L, hidden]` rows, placed before every input as peft places its virtual
/// tokens) as a prompt-tuning adapter for `base_model` (its name, for the config's
/// `base_model_name_or_path`) of `num_layers` layers into `dir`, created if needed.
pub fn write_prompt_tuning(
    dir: &Path,
    prompt: &[Vec<f32>],
    base_model: &str,
    num_layers: usize,
) -> anyhow::Result<()> {
    let rows = prompt.len();
    let hidden = prompt.first().map_or(0, Vec::len);
    anyhow::ensure!(
        rows > 0 && prompt.iter().all(|r| r.len() == hidden),
        "a prompt-tuning adapter needs L rows of equal length"
    );
    let config = json!({
        "peft_type": "PROMPT_TUNING",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "num_virtual_tokens": rows,
        "token_dim": hidden,
        "num_transformer_submodules": 1,
        "num_layers": num_layers,
        "prompt_tuning_init": "RANDOM",
        "inference_mode": true,
    });
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    write_rows_safetensors(
        &dir.join("adapter_model.safetensors"),
        "prompt_embeddings",
        prompt,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_holds_peft_s_config_and_the_prompt_under_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let prompt = vec![vec![1.0f32, -2.0, 0.5], vec![0.25, 3.0, -1.5]];
        write_prompt_tuning(dir.path(), &prompt, "smollm2-135m", 30).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("adapter_config.json")).unwrap())
                .unwrap();
        assert_eq!(config["peft_type"], "PROMPT_TUNING");
        assert_eq!(config["num_virtual_tokens"], 2);
        assert_eq!(config["token_dim"], 3);
        let bytes = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = tensors.tensor("prompt_embeddings").unwrap();
        assert_eq!(t.shape(), [2, 3]);
        let values: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(values, prompt.concat());
        assert!(write_prompt_tuning(dir.path(), &[], "m", 1).is_err());
    }
}
