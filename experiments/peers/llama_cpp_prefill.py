"""Peer measurement for `bench-forward --peers`: llama.cpp prefill speed on the same GGUF.

Runs `batch` sequences of `tokens` random ids through llama-cpp-python (one sequence at a time,
as llama.cpp's own batch API holds one sequence per context here), logits for the last position
only, with the same number of threads as bbt, and prints one JSON line. Needs
`pip install llama-cpp-python` (tested with 0.3.36).
"""
import json
import random
import sys
import time

model, batch, tokens, reps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
try:
    import llama_cpp
except ImportError as e:
    print(json.dumps({"bench": "peer_llama_cpp_prefill", "skipped": f"llama-cpp-python not installed ({e})"}))
    sys.exit(0)

llm = llama_cpp.Llama(model_path=model, n_ctx=tokens + 8, n_batch=tokens, n_threads=threads, n_threads_batch=threads, verbose=False)
vocab = llm.n_vocab()
rng = random.Random(0)
seqs = [[rng.randrange(1000, vocab - 1000) for _ in range(tokens)] for _ in range(batch)]


def run():
    for s in seqs:
        llm.reset()
        llm.eval(s)


run()  # warm-up
times = []
for _ in range(max(1, reps)):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
times.sort()
seconds = times[len(times) // 2]
print(json.dumps({"bench": "peer_llama_cpp_prefill", "version": llama_cpp.__version__, "batch": batch, "tokens": tokens,
                  "threads": threads, "seconds": seconds, "tokens_per_s": batch * tokens / seconds}))
