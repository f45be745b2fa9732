#!/bin/bash
# Final-prompt rules and the combined BBT-RGB settings. BBT on MR and SST-2, seeds 13 42 87, in
# two settings: the quick preset (`quick`) and the quick preset with COBYLA for the last 200 of
# the 600 calls and several label words per class (`combined`). Every run tracks each selection
# rule's pick (checkpoint.json); each pick is then scored on the test set with `bbt eval`
# (picks-test.jsonl). Run from this folder against one local server in the `auto` dtype;
# finished runs and scored picks are skipped, so rerunning it continues.
BBT=${BBT:-../../../target/release/bbt}
export BBT_DATA_DIR=${BBT_DATA_DIR:-$(cd ../../../../shared/datasets && pwd)}
PORT=8095
URL=http://127.0.0.1:$PORT
$BBT serve --bind 127.0.0.1:$PORT > server.log 2>&1 &
SERVER=$!
trap 'kill $SERVER; wait $SERVER 2>/dev/null' EXIT
for i in $(seq 90); do curl -sf $URL/health >/dev/null && break; sleep 2; done
for setting in quick combined; do
  for task in mr sst2; do
    for seed in 13 42 87; do
      out=$task-$setting-s$seed
      if [ ! -f $out/result.json ]; then
        flags=""
        [ $setting = combined ] && flags="--local-calls 200 --label-words several"
        $BBT tune --server $URL --task $task --preset quick --seed $seed $flags \
          --out $out --quiet > $out.stdout 2> $out.stderr
        echo "$out rc=$?"
      fi
      [ -f $out/picks-test.jsonl ] && continue
      # Each rule's pick as a best_prompt.json, scored on the test set.
      python3 - "$out" <<'PY'
import json, pathlib, sys
run = pathlib.Path(sys.argv[1])
state = json.loads((run / "checkpoint.json").read_text())
for rule, pick in state["picks"].items():
    saved = {"session": state["session_request"], "z": pick["z"], "best_dev_accuracy": pick["dev_accuracy"]}
    (run / f"pick-{rule}.json").write_text(json.dumps(saved))
PY
      for pick in $out/pick-*.json; do
        rule=${pick#$out/pick-}; rule=${rule%.json}
        $BBT eval --server $URL --prompt $pick --json | python3 -c "
import json, sys
r = json.load(sys.stdin); p = json.load(open('$out/checkpoint.json'))['picks']['$rule']
print(json.dumps({'rule': '$rule', 'api_calls': p['api_calls'], 'dev_accuracy': p['dev_accuracy'], 'dev_loss': p['dev_loss'], 'test_accuracy': r['accuracy'], 'test_examples': r['examples']}))" >> $out/picks-test.jsonl.tmp
      done
      mv $out/picks-test.jsonl.tmp $out/picks-test.jsonl
      rm -f $out/pick-*.json
    done
  done
done
