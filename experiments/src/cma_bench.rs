//! `cma-bench`: evaluations CMA-ES needs to reach f < 1e-8 on sphere, ellipsoid and
//! Rosenbrock (from x0 = 1, sigma0 = 1, median over seeds), and the time of one generation at
//! the BBT shape (d = 500, population 20), each against pycma: measured in the same run with
//! `--peers` (`experiments/peers/pycma_bench.py`), else the medians recorded in issue 5.

use std::time::Instant;

use bbt_client::cmaes::functions::TestFunction;
use bbt_client::cmaes::{minimize, CmaEs, CmaOptions, StopReason};
use serde_json::{json, Value};

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
    /// Also run pycma (`pip install cma`) on the same problems in this run.
    #[arg(long)]
    peers: bool,
}

/// pycma 4.x medians of 5 seeds and ms per generation recorded in issue 5.
fn issue_figure(function: &str, dim: usize) -> Option<f64> {
    Some(match (function, dim) {
        ("sphere", 10) => 1350.0,
        ("sphere", 40) => 4890.0,
        ("ellipsoid", 10) => 4000.0,
        ("ellipsoid", 40) => 47805.0,
        ("rosenbrock", 10) => 4890.0,
        ("rosenbrock", 40) => 61020.0,
        ("generation", 500) => 11.5,
        _ => return None,
    })
}

/// The pycma figure for `(function, dim)` and where it comes from.
fn peer_figure(peer: &[Value], function: &str, dim: usize) -> (Option<f64>, &'static str) {
    let key = if function == "generation" {
        "ms_per_generation"
    } else {
        "median_evals"
    };
    let measured = peer
        .iter()
        .find(|l| (l["function"] == function || l["bench"] == function) && l["dim"] == dim);
    match measured.and_then(|l| l[key].as_f64()) {
        Some(v) => (Some(v), "same run"),
        None => (issue_figure(function, dim), "issue 5"),
    }
}

/// Prints the JSON lines.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let peer = if args.peers {
        let dims: Vec<String> = args.dims.iter().map(usize::to_string).collect();
        let peer_args = [
            args.runs.to_string(),
            dims.join(","),
            args.generations.min(500).to_string(),
        ];
        match crate::peers::run_python("pycma_bench.py", &peer_args) {
            Ok(lines) => {
                lines.iter().for_each(|l| println!("{l}"));
                lines
            }
            Err(reason) => {
                println!("{}", json!({"peer": "pycma", "skipped": reason}));
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
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
            let (pycma, source) = peer_figure(&peer, f.name(), dim);
            println!(
                "{}",
                json!({
                    "function": f.name(), "dim": dim, "median_evals": median, "runs": args.runs,
                    "failures": failures, "pycma_median_evals": pycma, "pycma_source": source,
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
    let (pycma, source) = peer_figure(&peer, "generation", dim);
    println!(
        "{}",
        json!({
            "bench": "generation", "dim": dim, "popsize": popsize, "generations": args.generations,
            "ms_per_generation": ms, "pycma_ms_per_generation": pycma, "pycma_source": source,
            "speedup_vs_pycma": pycma.map(|p| p / ms),
        })
    );
    Ok(())
}
