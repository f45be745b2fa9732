#!/bin/bash
# MR, quick preset with p0 from an instruction, seeds 13 42 87 (after two_stage.sh).
while pgrep -f two_stage.sh >/dev/null; do sleep 10; done
BBT=${BBT:-target/release/bbt}
$BBT serve --bind 127.0.0.1:8091 > server2.log 2>&1 &
SERVER=$!
for i in $(seq 60); do curl -sf http://127.0.0.1:8091/health >/dev/null && break; sleep 2; done
for seed in 13 42 87; do
  out=mr-p0text-s$seed
  [ -f $out/result.json ] && continue
  $BBT tune --server http://127.0.0.1:8091 --task mr --preset quick --seed $seed --out $out --quiet --p0-text " Sentiment of this review:" > $out.stdout 2> $out.stderr
  echo "$out rc=$?"
done
kill $SERVER
