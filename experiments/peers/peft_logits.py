"""Verbalizer logits of token rows under a HF peft adapter on the transformers model.

The peer side of `bbt-experiments peft-check`: transformers loads the same GGUF file bbt runs
(dequantized to f32, q/k rows un-permuted to HF order), peft loads the adapter folder bbt wrote,
and the logits at each row's last position are printed over the verbalizer ids.

usage: peft_logits.py MODEL ADAPTER_DIR INPUTS_JSON   (MODEL: a .gguf file or a HF directory)
INPUTS_JSON: {"rows": [[token ids], ...], "verbalizer": [token ids]}
prints one JSON line: {"logits": [[...], ...], "torch": ..., "transformers": ..., "peft": ...}
"""

import json
import sys

from hf_model import load_model, versions  # sets HF_HUB_OFFLINE first
import peft  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    gguf_file, adapter_dir, inputs_path = sys.argv[1:4]
    with open(inputs_path) as f:
        inputs = json.load(f)
    base = load_model(gguf_file)
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
                **versions(),
            }
        )
    )


if __name__ == "__main__":
    main()
