"""Peer measurement for `bench-forward --peers`: PyTorch's forward on the same model file, the
same shapes and the same thread count as bbt's, in fp32 and in bf16.

Two shapes, as bbt measures them:
- prefill: `batch` sequences of `tokens` random ids, logits at the last position only;
- the BBT prefix call: `examples` rows of [bos][prompt of `prompt_len` vectors][`text_tokens`
  random ids], given as input embeddings, logits at the last position only. PyTorch runs each
  row whole; bbt shares the prompt's keys/values across rows and reads only the verbalizer.

Prints one JSON line per (shape, dtype): the median of `reps` timed runs after a warm-up.
Needs `pip install torch transformers peft gguf`.
"""
import json
import random
import sys
import time

model_path = sys.argv[1]
batch, tokens, examples, text_tokens, prompt_len, reps, threads = map(int, sys.argv[2:9])

try:
    import torch
    from hf_model import load_model, versions
except ImportError as e:
    print(json.dumps({"bench": "peer_torch_forward", "skipped": f"PyTorch peer not installed ({e})"}))
    sys.exit(0)

torch.set_num_threads(threads)
torch.manual_seed(0)
base = load_model(model_path).eval()
vocab = base.config.vocab_size
rng = random.Random(0)


def median_seconds(f):
    f()
    times = []
    for _ in range(max(1, reps)):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


prefill_ids = torch.tensor([[rng.randrange(1000, vocab - 1000) for _ in range(tokens)] for _ in range(batch)])
text_ids = torch.tensor([[rng.randrange(1000, vocab - 1000) for _ in range(text_tokens)] for _ in range(examples)])
bos = base.config.bos_token_id if base.config.bos_token_id is not None else 1
for dtype_name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
    model = base.to(dtype)
    embed = model.get_input_embeddings()
    std = embed.weight.float().std().item()
    prompt = (torch.randn(prompt_len, embed.weight.shape[1]) * std).to(dtype)

    def prefill():
        with torch.inference_mode():
            model(input_ids=prefill_ids, logits_to_keep=1)

    def bbt_call():
        with torch.inference_mode():
            rows = torch.cat(
                [
                    embed(torch.full((examples, 1), bos)),
                    prompt.unsqueeze(0).expand(examples, -1, -1),
                    embed(text_ids),
                ],
                dim=1,
            )
            model(inputs_embeds=rows, logits_to_keep=1)

    s = median_seconds(prefill)
    print(json.dumps({"bench": "peer_torch_prefill", "dtype": dtype_name, "batch": batch, "tokens": tokens,
                      "threads": threads, "seconds": s, "tokens_per_s": batch * tokens / s, **versions()}))
    s = median_seconds(bbt_call)
    print(json.dumps({"bench": "peer_torch_bbt_call_prefix", "dtype": dtype_name, "examples": examples,
                      "text_tokens": text_tokens, "prompt_len": prompt_len, "threads": threads,
                      "seconds_per_call": s, **versions()}))
