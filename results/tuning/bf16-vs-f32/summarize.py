"""The bf16-vs-f32 table: test accuracy per task and dtype, mean ± sample std over the seeds,
each seed's accuracy, and the mean best train loss. (Wall times are not compared: these runs
shared the machine with other work.)"""
import json, pathlib, statistics

runs = {}
for f in sorted(pathlib.Path(__file__).parent.glob("*-s*/result.json")):
    task, dtype, seed = f.parent.name.rsplit("-", 2)
    r = json.loads(f.read_text())
    runs.setdefault(task, {}).setdefault(dtype, []).append(
        (seed[1:], 100 * r["test_accuracy"], r["best_train_loss"], r["wall_seconds"], r["test_examples"]))


def cell(rs):
    acc = [a for _, a, _, _, _ in rs]
    spread = f"{statistics.stdev(acc):.1f}" if len(acc) > 1 else "–"
    seeds = ", ".join(f"{a:.1f}" for _, a, _, _, _ in rs)
    loss = statistics.mean(l for _, _, l, _, _ in rs)
    return f"{statistics.mean(acc):.1f} ± {spread} ({seeds}) | {loss:.3f}"


print("| task (test examples) | f32: test accuracy, mean ± std (seeds 13, 42, 87) | f32: best train loss | bf16: test accuracy | bf16: best train loss |")
print("|---|---|---|---|---|")
for task, by_dtype in sorted(runs.items()):
    n = next(iter(by_dtype.values()))[0][4]
    print(f"| {task} ({n}) | " + " | ".join(cell(by_dtype[d]) if d in by_dtype else "– | –" for d in ("f32", "bf16")) + " |")
