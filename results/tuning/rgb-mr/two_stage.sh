#!/bin/bash
# MR, quick preset: CMA-ES 600 vs CMA-ES 400 + COBYLA 200, seeds 13 42 87.
BBT=${BBT:-target/release/bbt}
$BBT serve --bind 127.0.0.1:8090 > server.log 2>&1 &
SERVER=$!
for i in $(seq 60); do curl -sf http://127.0.0.1:8090/health >/dev/null && break; sleep 2; done
for seed in 13 42 87; do
  for variant in cma600 rgb400-200; do
    out=mr-$variant-s$seed
    [ -f $out/result.json ] && continue
    extra=""
    [ $variant = rgb400-200 ] && extra="--local-calls 200"
    $BBT tune --server http://127.0.0.1:8090 --task mr --preset quick --seed $seed --out $out --quiet $extra > $out.stdout 2> $out.stderr
    echo "$out rc=$?"
  done
done
kill $SERVER
