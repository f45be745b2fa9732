"""Peer measurement for `cma-bench --peers`: pycma on the same problems, in the same run.

Median evaluations to f < 1e-8 from x0 = 1, sigma0 = 1, default options, seeds 1..runs, on
sphere, ellipsoid (cma.ff.elli, condition 1e6) and Rosenbrock (cma.ff.rosen); then the time of
one ask/tell generation at d = 500, population 20. One JSON line each. Needs `pip install cma`
(tested with 4.5.0).
"""
import json
import sys
import time
import warnings

runs, dims, generations = int(sys.argv[1]), [int(d) for d in sys.argv[2].split(",") if d], int(sys.argv[3])
warnings.filterwarnings("ignore")
try:
    import cma
except ImportError as e:
    print(json.dumps({"peer": "pycma", "skipped": f"pycma not installed ({e})"}))
    sys.exit(0)

functions = {"sphere": cma.ff.sphere, "ellipsoid": cma.ff.elli, "rosenbrock": cma.ff.rosen}
for dim in dims:
    for name, f in functions.items():
        evals = []
        for seed in range(1, runs + 1):
            es = cma.CMAEvolutionStrategy(dim * [1.0], 1.0, {"seed": seed, "ftarget": 1e-8, "verbose": -9, "maxfevals": 1e6})
            es.optimize(f)
            evals.append(es.result.evaluations)
        evals.sort()
        print(json.dumps({"peer": "pycma", "version": cma.__version__, "function": name, "dim": dim, "median_evals": evals[len(evals) // 2], "runs": runs}), flush=True)

es = cma.CMAEvolutionStrategy(500 * [1.0], 1.0, {"seed": 1, "popsize": 20, "verbose": -9})
start = time.perf_counter()
for _ in range(generations):
    xs = es.ask()
    es.tell(xs, [cma.ff.sphere(x) for x in xs])
ms = (time.perf_counter() - start) * 1e3 / generations
print(json.dumps({"peer": "pycma", "version": cma.__version__, "bench": "generation", "dim": 500, "popsize": 20, "generations": generations, "ms_per_generation": ms}))
