//! HF peft adapter folders (`adapter_config.json` + `adapter_model.safetensors`, peft's key
//! names and shapes) for the methods peft can load into the transformers version of the model:
//! LoRA and prompt tuning.

use std::collections::HashMap;
use std::path::Path;

use bbt::model::config::RopeStyle;
use bbt::model::weights::interleaved_to_half_rows;
use bbt::peft::{Trainable, TunerConfig};
use bbt::protocol::Placement;
use bbt::Engine;
use candle_core::{DType, Tensor};
use serde_json::json;

/// An error unless a run of `tuner` has the layout HF peft gives the same method: peft puts
/// prompt tuning's virtual tokens before every input token, which only the prefix placement on a
/// model without a BOS token (`bos`) matches.
pub fn ensure_peft_layout(tuner: &TunerConfig, bos: &[u32]) -> anyhow::Result<()> {
    if let TunerConfig::PromptTuning(prompt) = tuner {
        anyhow::ensure!(
            prompt.placement == Placement::Prefix && bos.is_empty(),
            "peft puts the virtual tokens before every input token: only the prefix placement \
             on a model without a BOS token has the same layout"
        );
    }
    Ok(())
}

/// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` for LoRA and prompt
/// tuning; other methods have no peft equivalent on this model and write nothing.
pub fn write_peft_adapter(
    dir: &Path,
    trainable: &Trainable,
    engine: &Engine,
) -> anyhow::Result<()> {
    let c = trainable.config();
    let cfg = engine.config();
    let base = engine.info().name.clone();
    let (config, tensors) = match &c.tuner {
        TunerConfig::Lora(lora) => {
            let targets: Vec<String> = lora.targets.iter().map(|p| p.hf_name()).collect();
            let config = json!({
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": base,
                "r": lora.rank,
                "lora_alpha": lora.alpha,
                "lora_dropout": lora.dropout,
                "target_modules": targets,
                "bias": "none",
                "fan_in_fan_out": false,
                "inference_mode": true,
                "init_lora_weights": true,
                "use_rslora": false,
                "use_dora": false,
                "modules_to_save": null,
            });
            let mut tensors = HashMap::new();
            for p in trainable.params() {
                let mut t = p.var.as_tensor().to_dtype(DType::F32)?;
                // GGUF llama q/k rows are interleaved; peft's B factors index HF's rows.
                if cfg.rope_style == RopeStyle::Interleaved && p.name.ends_with("lora_B.weight") {
                    if p.name.contains(".q_proj.") {
                        t = interleaved_to_half_rows(&t, cfg.num_heads)?;
                    } else if p.name.contains(".k_proj.") {
                        t = interleaved_to_half_rows(&t, cfg.num_kv_heads)?;
                    }
                }
                tensors.insert(p.name.clone(), t);
            }
            (config, tensors)
        }
        TunerConfig::PromptTuning(_) => {
            let prompt: Vec<Vec<f32>> = trainable
                .params()
                .first()
                .ok_or_else(|| anyhow::anyhow!("prompt tuning without a prompt"))?
                .var
                .as_tensor()
                .to_dtype(DType::F32)?
                .to_vec2()?;
            return bbt_client::tune::peft_adapter::write_prompt_tuning(
                dir,
                &prompt,
                &base,
                cfg.num_layers,
            );
        }
        _ => return Ok(()),
    };
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    let tensors: HashMap<String, Tensor> = tensors;
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors"))?;
    Ok(())
}
