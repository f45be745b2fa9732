#!/bin/bash
# BBT, quick preset, MR and SST-2, seeds 13 42 87: each class scored by one label word (the
# task's own) and by several (`--label-words several`), against one local server in the `auto`
# dtype. Run from this folder; finished runs are skipped, so rerunning it continues.
BBT=${BBT:-../../../target/release/bbt}
# The server resolves the task data from its working directory: point it at shared/datasets.
export BBT_DATA_DIR=${BBT_DATA_DIR:-$(cd ../../../../shared/datasets && pwd)}
PORT=8094
$BBT serve --bind 127.0.0.1:$PORT > server.log 2>&1 &
SERVER=$!
for i in $(seq 90); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && break; sleep 2; done
for words in several one; do
  for task in mr sst2; do
    for seed in 13 42 87; do
      out=$task-$words-s$seed
      [ -f $out/result.json ] && continue
      flags=""
      [ $words = several ] && flags="--label-words several"
      $BBT tune --server http://127.0.0.1:$PORT --task $task --preset quick --seed $seed $flags \
        --out $out --quiet > $out.stdout 2> $out.stderr
      echo "$out rc=$?"
    done
  done
done
kill $SERVER
wait $SERVER 2>/dev/null
