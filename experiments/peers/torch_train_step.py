"""One training step of prompt tuning, LoRA or model tuning in PyTorch (+ HF peft), timed.

The peer side of `bbt-experiments bench-train --peers`: transformers loads the same GGUF file
bbt runs (f32), the batch is the same token rows (left-padded, so the prediction is the last
position and only its logits are computed), the loss is cross-entropy over the verbalizer
logits, and the optimizer is torch's AdamW.

usage: torch_train_step.py MODEL INPUTS_JSON METHOD STEPS PROMPT_LENGTH LORA_RANK LORA_ALPHA
INPUTS_JSON: {"rows": [[token ids], ...], "labels": [...], "verbalizer": [token ids]}
prints one JSON line per method.
"""

import json
import resource
import statistics
import sys
import time

from hf_model import load_model, versions  # sets HF_HUB_OFFLINE first
import peft  # noqa: E402
import torch  # noqa: E402




def main() -> None:
    model_path, inputs_path, method, steps = sys.argv[1:5]
    prompt_length, lora_rank, lora_alpha = int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
    steps = int(steps)
    with open(inputs_path) as f:
        inputs = json.load(f)
    model = load_model(model_path)
    if method == "prompt-tuning":
        model = peft.get_peft_model(
            model,
            peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=prompt_length),
        )
    elif method == "lora":
        model = peft.get_peft_model(
            model,
            peft.LoraConfig(
                task_type="CAUSAL_LM",
                r=lora_rank,
                lora_alpha=lora_alpha,
                lora_dropout=0.0,
                target_modules=["q_proj", "v_proj"],
            ),
        )
    elif method != "model-tuning":
        raise SystemExit(f"unknown method {method}")
    model.train()
    rows = inputs["rows"]
    width = max(len(r) for r in rows)
    pad = 0
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    labels = torch.tensor(inputs["labels"])
    verbalizer = torch.tensor(inputs["verbalizer"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    times = []
    for rep in range(steps + 1):
        start = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        logits = out.logits[:, -1, verbalizer]
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if rep > 0:
            times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "bench": "peer_torch_train_step",
                "method": method,
                "examples": len(rows),
                "trainable_params": sum(p.numel() for p in params),
                "seconds_per_step": statistics.median(times),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "threads": torch.get_num_threads(),
                **versions(),
            }
        )
    )


if __name__ == "__main__":
    main()
