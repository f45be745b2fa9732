"""Verbalizer logits of token rows under a HF peft adapter on the transformers model.

The peer side of `bbt-experiments peft-check`: transformers loads the same GGUF file bbt runs
(dequantized to f32, q/k rows un-permuted to HF order), peft loads the adapter folder bbt wrote,
and the logits at each row's last position are printed over the verbalizer ids.

usage: peft_logits.py MODEL ADAPTER_DIR INPUTS_JSON   (MODEL: a .gguf file or a HF directory)
INPUTS_JSON: {"rows": [[token ids], ...], "verbalizer": [token ids]}
prints one JSON line: {"logits": [[...], ...], "torch": ..., "transformers": ..., "peft": ...}
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def main() -> None:
    gguf_file, adapter_dir, inputs_path = sys.argv[1:4]
    with open(inputs_path) as f:
        inputs = json.load(f)
    if os.path.isdir(gguf_file):  # a HF-style directory
        base = AutoModelForCausalLM.from_pretrained(gguf_file, torch_dtype=torch.float32)
    else:
        base = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(os.path.abspath(gguf_file)),
            gguf_file=os.path.basename(gguf_file),
            torch_dtype=torch.float32,
        )
    model = peft.PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    verbalizer = torch.tensor(inputs["verbalizer"])
    rows = []
    with torch.no_grad():
        for ids in inputs["rows"]:
            out = model(input_ids=torch.tensor([ids]))
            rows.append(out.logits[0, -1, verbalizer].tolist())
    print(
        json.dumps(
            {
                "logits": rows,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
