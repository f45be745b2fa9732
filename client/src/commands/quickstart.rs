//! `bbt quickstart`: the whole product in one command. Starts a local bbt-server with the
//! default model as a child process (unless `--server` is given), tunes the MR task 16-shot
//! with the `quick` preset, and prints the manual prompt's zero-shot test accuracy next to
//! BBT's.

use std::path::PathBuf;

use bbt_server::process::ServerProcess;

use bbt_client::http::{RetryPolicy, ServerClient};
use bbt_client::tune::checkpoint::CHECKPOINT_FILE;
use bbt_client::tune::config::TuneConfig;
use bbt_client::tune::outputs::{peak_rss_mb_of, TuneResult};
use bbt_client::tune::{self, Start};

use super::tune::{human_bytes, OutputArgs, SettingArgs};

/// Options of `bbt quickstart`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Use this server instead of starting one.
    #[arg(long)]
    server: Option<String>,
    /// API key for --server; also read from $BBT_API_KEY.
    #[arg(long, env = "BBT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The local server's model, device and dtype.
    #[command(flatten)]
    model: bbt::cli::ModelArgs,
    /// Task.
    #[arg(long, default_value = "mr")]
    task: String,
    /// Output folder; a run already there is continued.
    #[arg(long, default_value = "bbt-quickstart")]
    out: PathBuf,
    #[command(flatten)]
    settings: SettingArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// Runs `bbt quickstart`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let quiet = args.output.quiet;
    let (url, local) = match &args.server {
        Some(url) => (url.clone(), None),
        None => {
            if !quiet {
                eprintln!("starting a local bbt-server with {} ...", args.model.model);
            }
            let server = ServerProcess::serve_this_binary(&args.model, !quiet)?;
            (server.url().to_string(), Some(server))
        }
    };
    let mut client = ServerClient::new(&url, args.api_key.clone(), RetryPolicy::default())?;
    let start = if args.out.join(CHECKPOINT_FILE).exists() {
        if !quiet {
            eprintln!("continuing the run in {}", args.out.display());
        }
        Start::Resume
    } else {
        Start::Fresh(Box::new(
            args.settings.apply(TuneConfig::quick(&args.task))?,
        ))
    };
    let result = tune::run(&mut client, start, &args.out, args.output.progress())?;
    let server_rss = local
        .as_ref()
        .and_then(|s| peak_rss_mb_of(&s.pid().to_string()));
    if args.output.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print_table(&result, server_rss);
        println!(
            "results, best prompt and curve.svg in {}",
            args.out.display()
        );
    }
    Ok(())
}

fn print_table(r: &TuneResult, server_rss: Option<f64>) {
    let pct = |a: Option<f64>| a.map_or("-".to_string(), |a| format!("{:.1}%", 100.0 * a));
    let c = &r.config;
    println!();
    let test = r
        .summary
        .test_examples
        .map_or("-".to_string(), |n| n.to_string());
    println!(
        "{} {}-shot (seed {}), {test} test examples",
        r.summary.task, c.k, c.seed
    );
    println!("{:<44} {:>14}", "method", "test accuracy");
    println!(
        "{:<44} {:>14}",
        "manual prompt, zero-shot",
        pct(r.zero_shot_test_accuracy)
    );
    let placement = serde_json::to_value(c.placement).unwrap_or_default();
    let label = format!(
        "BBT (L={} {}, d={}, pop {})",
        c.prompt_length,
        placement.as_str().unwrap_or("?"),
        c.intrinsic_dim,
        c.popsize
    );
    println!("{:<44} {:>14}", label, pct(r.summary.test_accuracy));
    if let (Some(zs), Some(t)) = (r.zero_shot_test_accuracy, r.summary.test_accuracy) {
        println!("{:<44} {:>+13.1}", "gain (points)", 100.0 * (t - zs));
    }
    println!();
    println!(
        "API calls {} ({} training), wall {:.0} s, {} up, {} down, peak memory: client {:.0} MB{}",
        r.summary.api_calls,
        r.summary.train_api_calls,
        r.summary.wall_seconds,
        human_bytes(r.summary.bytes_up),
        human_bytes(r.summary.bytes_down),
        r.summary.peak_rss_mb.unwrap_or(0.0),
        server_rss.map_or(String::new(), |m| format!(", server {m:.0} MB"))
    );
}
