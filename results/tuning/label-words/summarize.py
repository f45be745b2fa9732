"""The label-words table: test accuracy per task with one and with several label words per
class, mean ± sample std over the seeds, each seed's accuracy, and the mean best train loss.
(Wall times are not compared: these runs shared the machine with other work.)"""
import json, pathlib, statistics

runs = {}
for f in sorted(pathlib.Path(__file__).parent.glob("*-s*/result.json")):
    task, words, seed = f.parent.name.rsplit("-", 2)
    r = json.loads(f.read_text())
    runs.setdefault(task, {}).setdefault(words, []).append(
        (seed[1:], 100 * r["test_accuracy"], r["best_train_loss"], r["wall_seconds"], r["test_examples"]))


def cell(rs):
    acc = [a for _, a, _, _, _ in rs]
    spread = f"{statistics.stdev(acc):.1f}" if len(acc) > 1 else "–"
    seeds = ", ".join(f"{a:.1f}" for _, a, _, _, _ in rs)
    loss = statistics.mean(l for _, _, l, _, _ in rs)
    return f"{statistics.mean(acc):.1f} ± {spread} ({seeds}) | {loss:.3f}"


print("| task (test examples) | one word per class: test accuracy, mean ± std (seeds 13, 42, 87) | one word: best train loss | several words: test accuracy | several words: best train loss |")
print("|---|---|---|---|---|")
for task, by_words in sorted(runs.items()):
    n = next(iter(by_words.values()))[0][4]
    print(f"| {task} ({n}) | " + " | ".join(cell(by_words[w]) if w in by_words else "– | –" for w in ("one", "several")) + " |")
