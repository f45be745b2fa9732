#!/bin/bash
# BBT, quick preset, MR and SST-2, seeds 13 42 87: the server in bf16 (CPU: bf16 matmul inputs,
# oneMKL) and in f32, one after the other on the same machine. Run from this folder.
BBT=${BBT:-../../../target/release/bbt}
# The server resolves the task data from its working directory: point it at shared/datasets.
export BBT_DATA_DIR=${BBT_DATA_DIR:-$(cd ../../../../shared/datasets && pwd)}
PORT=8093
for dtype in bf16 f32; do
  $BBT serve --bind 127.0.0.1:$PORT --dtype $dtype > server-$dtype.log 2>&1 &
  SERVER=$!
  for i in $(seq 90); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && break; sleep 2; done
  for task in mr sst2; do
    for seed in 13 42 87; do
      out=$task-$dtype-s$seed
      [ -f $out/result.json ] && continue
      $BBT tune --server http://127.0.0.1:$PORT --task $task --preset quick --seed $seed --out $out --quiet > $out.stdout 2> $out.stderr
      echo "$out rc=$?"
    done
  done
  kill $SERVER
  wait $SERVER 2>/dev/null
done
