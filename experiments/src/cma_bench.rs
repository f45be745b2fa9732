//! `cma-bench`: evaluations CMA-ES needs to reach f < 1e-8 on sphere, ellipsoid and
//! Rosenbrock (d = 10 and 40, from x0 = 1, sigma0 = 1, median over seeds), against pycma's
//! medians, and the time of one generation at the BBT shape (d = 500, population 20).

use std::time::Instant;

use bbt_client::cmaes::functions::TestFunction;
use bbt_client::cmaes::{minimize, CmaEs, CmaOptions, StopReason};
use serde_json::json;

/// Options of `cma-bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Seeds per function and dimension (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: u64,
    /// Dimensions of the convergence runs.
    #[arg(long, value_delimiter = ',', default_value = "10,40")]
    dims: Vec<usize>,
    /// Generations timed at the BBT shape.
    #[arg(long, default_value_t = 2000)]
    generations: u64,
}

/// pycma 4.x medians of 5 seeds (issue 5), for the ratio column.
fn pycma_median(f: TestFunction, dim: usize) -> Option<f64> {
    Some(match (f, dim) {
        (TestFunction::Sphere, 10) => 1350.0,
        (TestFunction::Sphere, 40) => 4890.0,
        (TestFunction::Ellipsoid, 10) => 4000.0,
        (TestFunction::Ellipsoid, 40) => 47805.0,
        (TestFunction::Rosenbrock, 10) => 4890.0,
        (TestFunction::Rosenbrock, 40) => 61020.0,
        _ => return None,
    })
}

/// Prints the JSON lines.
pub fn run(args: &Args) -> anyhow::Result<()> {
    for &dim in &args.dims {
        for f in TestFunction::ALL {
            let mut evals = Vec::new();
            let mut failures = 0;
            for seed in 1..=args.runs {
                let options = CmaOptions {
                    seed,
                    ftarget: Some(1e-8),
                    max_evals: Some(1_000_000),
                    ..Default::default()
                };
                let es = minimize(|x| f.eval(x), &vec![1.0; dim], 1.0, options)?;
                if es.stop_reason() != Some(StopReason::Ftarget) {
                    failures += 1;
                }
                evals.push(es.evals());
            }
            evals.sort();
            let median = evals[evals.len() / 2];
            let pycma = pycma_median(f, dim);
            println!(
                "{}",
                json!({
                    "function": f.name(), "dim": dim, "median_evals": median, "runs": args.runs,
                    "failures": failures, "pycma_median_evals": pycma,
                    "ratio_to_pycma": pycma.map(|p| median as f64 / p),
                })
            );
        }
    }
    let (dim, popsize) = (500, 20);
    let options = CmaOptions {
        popsize: Some(popsize),
        seed: 1,
        ..Default::default()
    };
    let mut es = CmaEs::new(&vec![1.0; dim], 1.0, options)?;
    let started = Instant::now();
    for _ in 0..args.generations {
        let xs = es.ask()?;
        let fs: Vec<f64> = xs.outer_iter().map(|x| x.dot(&x)).collect();
        es.tell(&fs)?;
    }
    let ms = started.elapsed().as_secs_f64() * 1e3 / args.generations as f64;
    println!(
        "{}",
        json!({
            "bench": "generation", "dim": dim, "popsize": popsize, "generations": args.generations,
            "ms_per_generation": ms, "pycma_ms_per_generation": 11.5, "speedup_vs_pycma": 11.5 / ms,
        })
    );
    Ok(())
}
