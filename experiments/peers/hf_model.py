"""What the PyTorch peer scripts share: loading the model bbt runs into transformers, and the
versions to report.

The model is a .gguf file (transformers dequantizes it to f32 and un-permutes llama's q/k rows
to HF's order) or a HF-style directory.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def load_model(model_path):
    """The causal LM at `model_path` in f32."""
    if os.path.isdir(model_path):
        return AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(
        os.path.dirname(os.path.abspath(model_path)),
        gguf_file=os.path.basename(model_path),
        torch_dtype=torch.float32,
    )


def versions():
    """torch, transformers and peft versions, for the JSON lines."""
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
