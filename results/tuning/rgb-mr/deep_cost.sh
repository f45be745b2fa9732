#!/bin/bash
# BBTv2 call cost, prefix vs suffix placement (MR, L = 5, d = 100, one round of 2 calls per layer).
while pgrep -f "p0_text.sh|two_stage.sh" >/dev/null; do sleep 10; done
BBT=${BBT:-target/release/bbt}
$BBT serve --bind 127.0.0.1:8092 > server3.log 2>&1 &
SERVER=$!
for i in $(seq 60); do curl -sf http://127.0.0.1:8092/health >/dev/null && break; sleep 2; done
for placement in suffix prefix; do
  out=deep-$placement
  rm -rf $out
  $BBT tune --server http://127.0.0.1:8092 --task mr --preset bbtv2 --placement $placement --prompt-length 5 --intrinsic-dim 100 --popsize 2 --budget 60 --dev-every 1000 --test-limit 10 --seed 42 --out $out --quiet > $out.stdout 2> $out.stderr
  echo "$out rc=$?"
done
kill $SERVER
