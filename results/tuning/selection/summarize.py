"""Test accuracy of each final-prompt rule's pick, per task and setting: mean ± sample std over
seeds 13, 42, 87, and each seed's. The rules' picks come from the same runs (a rule only
chooses among the prompts checked on dev; it does not change the search)."""
import json, pathlib, statistics

rows = {}
for f in sorted(pathlib.Path(__file__).parent.glob("*-s*/picks-test.jsonl")):
    task, setting, seed = f.parent.name.rsplit("-", 2)
    for line in f.read_text().splitlines():
        p = json.loads(line)
        rows.setdefault((setting, p["rule"]), {}).setdefault(task, []).append(
            (int(seed[1:]), 100 * p["test_accuracy"], 100 * p["dev_accuracy"], p["api_calls"]))

tasks = sorted({t for by_task in rows.values() for t in by_task})
print("| setting | rule | " + " | ".join(f"{t}: test (seeds 13 / 42 / 87) | {t}: dev" for t in tasks) + " | mean test |")
print("|---|---|" + "---|---|" * len(tasks) + "---|")
for (setting, rule), by_task in sorted(rows.items()):
    cells, means = [], []
    for t in tasks:
        rs = sorted(by_task.get(t, []))
        if not rs:
            cells += ["–", "–"]
            continue
        acc = [a for _, a, _, _ in rs]
        spread = f"{statistics.stdev(acc):.1f}" if len(acc) > 1 else "–"
        means.append(statistics.mean(acc))
        cells.append(f"{statistics.mean(acc):.1f} ± {spread} ({' / '.join(f'{a:.1f}' for a in acc)})")
        cells.append(f"{statistics.mean(d for _, _, d, _ in rs):.1f}")
    print(f"| {setting} | {rule} | " + " | ".join(cells) + f" | {statistics.mean(means):.1f} |")
