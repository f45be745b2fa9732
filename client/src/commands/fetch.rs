//! `bbt fetch`: models into the asset cache, the paper's datasets into a data directory.

use std::path::PathBuf;

use bbt::assets::{self, AssetSpec};
use bbt::tasks::{builtin, sources};

use bbt_client::datasets;

/// Options of `bbt fetch`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Models (asset names, e.g. smollm2-135m) and the paper's tasks (sst2, yelp, agnews,
    /// dbpedia, mrpc, snli, rte); with none, list what can be fetched and what is here.
    names: Vec<String>,
    /// Where the datasets go, laid out as the tasks read them [default: $BBT_DATA_DIR, else
    /// datasets/ in bbt's cache, where `bbt serve`, `bbt-server` and `bbt data show` look by
    /// default].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Base URL of the datasets' source: each file is {source}/{repository}/{commit}/{path}, the
    /// public repository and commit it is a byte-for-byte copy of (see `sources.tsv`).
    #[arg(long, env = "BBT_DATA_SOURCE", default_value = sources::DEFAULT_SOURCE)]
    source: String,
}

/// One name of the command line, resolved before anything is fetched.
enum Item {
    Model(&'static AssetSpec),
    Task(String),
}

/// Runs `bbt fetch`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(sources::fetch_dir);
    if args.names.is_empty() {
        list(&data_dir);
        return Ok(());
    }
    let items = args
        .names
        .iter()
        .map(|n| resolve(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for item in items {
        match item {
            Item::Model(spec) => {
                let path = assets::fetch(spec)?;
                println!("{} -> {}", spec.name, path.display());
            }
            Item::Task(task) => {
                let done = datasets::fetch_task(&task, &data_dir, &args.source, |f| {
                    eprintln!("  {} ({:.1} MB)", f.path, f.bytes as f64 / 1e6)
                })?;
                println!(
                    "{task} -> {}: {} file(s) downloaded ({:.1} MB), {} already there",
                    data_dir.display(),
                    done.downloaded,
                    done.bytes as f64 / 1e6,
                    done.present
                );
            }
        }
    }
    Ok(())
}

/// A model's or a task's name, or an error that lists both kinds.
fn resolve(name: &str) -> anyhow::Result<Item> {
    if let Some(spec) = assets::find_asset(name) {
        return Ok(Item::Model(spec));
    }
    if let Some((spec, _)) = builtin::lookup(name) {
        return Ok(Item::Task(spec.name));
    }
    let models: Vec<&str> = assets::KNOWN_ASSETS.iter().map(|a| a.name).collect();
    anyhow::bail!(
        "`{name}` is neither a model nor one of the paper's tasks; models: {}; tasks: {} \
         (mr, mr-snippets and bbc need no fetch: they come with their packages on first use)",
        models.join(", "),
        builtin::NAMES.join(", ")
    )
}

/// What can be fetched and what is already here.
fn list(data_dir: &std::path::Path) {
    println!("models, in {}:", assets::cache_dir().display());
    for a in assets::KNOWN_ASSETS {
        let state = if assets::cached_path(a).exists() {
            "cached"
        } else {
            "not fetched"
        };
        println!(
            "  {:<14} {:>6.1} MB  {:<12} {}",
            a.name,
            a.size as f64 / 1e6,
            state,
            a.description
        );
    }
    println!("the paper's datasets, in {}:", data_dir.display());
    for task in builtin::NAMES {
        let files = sources::of_task(task).unwrap_or_default();
        let missing = sources::missing_files(task, data_dir).len();
        let mb = files.iter().map(|f| f.bytes).sum::<u64>() as f64 / 1e6;
        let state = match missing {
            0 => "fetched".to_string(),
            m if m == files.len() => "not fetched".to_string(),
            m => format!("{m} of {} files missing", files.len()),
        };
        println!("  {task:<14} {mb:>6.1} MB  {state}");
    }
}
