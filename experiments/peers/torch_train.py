"""A whole few-shot training run of LoRA, prompt tuning or model tuning in PyTorch (+ HF peft).

The peer side of `bbt-experiments train --peer`: the same model file (transformers dequantizes
the GGUF to f32), the same token rows, initial adapter, batches, learning rate per step, AdamW
settings, clipping and dev evaluations as the bbt run it is compared with; only the framework
differs. It keeps the parameters of the best dev evaluation (ties broken by the lower dev loss,
as bbt does) and returns their verbalizer logits on the test rows, which bbt scores.

usage: torch_train.py MODEL RUN_JSON   (MODEL: a .gguf file or a HF directory)
RUN_JSON: {"method", "init_adapter" (a peft folder or null), "verbalizer",
           "train"/"dev"/"test": {"rows": [[token ids], ...], "labels": [...]},
           "batches": [[train indices] per step], "learning_rates": [per step],
           "eval_every", "weight_decay", "beta1", "beta2", "eps", "max_grad_norm"}
prints one JSON line: the curve, the best step, the test logits, timings and versions.
"""

import json
import os
import resource
import sys
import time

from hf_model import load_model, versions  # sets HF_HUB_OFFLINE first
import peft  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

EVAL_CHUNK = 64




def verbalizer_logits(model, rows, verbalizer):
    """Logits over the verbalizer at each row's last token. Rows are right-padded, so every real
    token keeps the position it has alone (peft's virtual tokens come first and ignore
    position ids, which rules out left padding for prompt tuning)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    offset = model.peft_config["default"].num_virtual_tokens if is_prompt_tuning(model) else 0
    last = [offset + len(r) - 1 for r in rows]
    keep = sorted(set(last))  # the LM head runs only where some row predicts
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=torch.tensor(keep)).logits
    where = torch.tensor([keep.index(p) for p in last])
    return logits[torch.arange(len(rows)), where][:, verbalizer]


def is_prompt_tuning(model):
    return isinstance(model, peft.PeftModel) and model.peft_config["default"].is_prompt_learning


def evaluate(model, split, verbalizer):
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(split["rows"]), EVAL_CHUNK):
            out.append(verbalizer_logits(model, split["rows"][start : start + EVAL_CHUNK], verbalizer))
    model.train()
    logits = torch.cat(out)
    labels = torch.tensor(split["labels"])
    accuracy = (logits.argmax(dim=1) == labels).double().mean().item()
    loss = F.cross_entropy(logits.double(), labels).item()
    return logits, accuracy, loss


def main() -> None:
    model_path, run_path = sys.argv[1:3]
    with open(run_path) as f:
        run = json.load(f)
    start = time.perf_counter()
    model = load_model(model_path)
    if run["method"] == "lora":
        model = peft.PeftModel.from_pretrained(model, run["init_adapter"], is_trainable=True)
    elif run["method"] == "prompt-tuning":
        # peft loads saved prompts frozen only: build a trainable one and copy bbt's start in.
        with open(os.path.join(run["init_adapter"], "adapter_config.json")) as f:
            length = json.load(f)["num_virtual_tokens"]
        model = peft.get_peft_model(
            model, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=length)
        )
        start_prompt = load_file(os.path.join(run["init_adapter"], "adapter_model.safetensors"))
        with torch.no_grad():
            model.prompt_encoder["default"].embedding.weight.copy_(start_prompt["prompt_embeddings"])
    elif run["method"] != "model-tuning":
        raise SystemExit(f"the peer does not train {run['method']}")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params,
        lr=run["learning_rates"][0],
        betas=(run["beta1"], run["beta2"]),
        eps=run["eps"],
        weight_decay=run["weight_decay"],
    )
    verbalizer = torch.tensor(run["verbalizer"])
    train = run["train"]
    steps = len(run["batches"])
    curve = []
    best = None  # (dev accuracy, dev loss, step, parameter copies)
    step_seconds = 0.0
    for step, (batch, lr) in enumerate(zip(run["batches"], run["learning_rates"]), start=1):
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = [train["rows"][i] for i in batch]
        labels = torch.tensor([train["labels"][i] for i in batch])
        loss = F.cross_entropy(verbalizer_logits(model, rows, verbalizer), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, run["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_seconds += time.perf_counter() - t0
        point = {"step": step, "train_loss": loss.item(), "dev_accuracy": None}
        if step % run["eval_every"] == 0 or step == steps:
            _, accuracy, dev_loss = evaluate(model, run["dev"], verbalizer)
            point["dev_accuracy"] = accuracy
            if best is None or accuracy > best[0] or (accuracy == best[0] and dev_loss < best[1]):
                best = (accuracy, dev_loss, step, [p.detach().clone() for p in params])
        curve.append(point)
    with torch.no_grad():
        for p, kept in zip(params, best[3]):
            p.copy_(kept)
    test_logits, _, _ = evaluate(model, run["test"], verbalizer)
    print(
        json.dumps(
            {
                "curve": curve,
                "best_step": best[2],
                "best_dev_accuracy": best[0],
                "test_logits": test_logits.tolist(),
                "trainable_params": sum(p.numel() for p in params),
                "seconds_per_step": step_seconds / steps,
                "wall_seconds": time.perf_counter() - start,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "threads": torch.get_num_threads(),
                **versions(),
            }
        )
    )


if __name__ == "__main__":
    main()
