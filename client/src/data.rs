//! `bbt data show TASK`: what a task's few-shot splits hold and exactly what the model will see.

use std::fmt::Write as _;
use std::path::PathBuf;

use bbt::tasks::{self, Example, LoadOptions, MultiTokenWords, TaskData};
use bbt::tokenizer::Tokenizer;

/// Options of `bbt data show`.
#[derive(clap::Args)]
pub struct ShowArgs {
    /// Task: mr, mr-snippets, bbc (fetched from packages); sst2, yelp, agnews, dbpedia, mrpc, snli,
    /// rte (read from the data directory); or a task spec file (.toml / .json) for your own data.
    task: String,
    /// Seed of the few-shot split (the pre-sampled folders exist for 13, 21, 42, 87, 100).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Examples per class in train and in dev.
    #[arg(long, default_value_t = 16)]
    k: usize,
    /// Data directory laid out like shared/datasets [default: $BBT_DATA_DIR, else datasets/ in bbt's cache once `bbt fetch` made it, else ../shared/datasets].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Sample from the training pool even when a pre-sampled folder exists.
    #[arg(long)]
    resample: bool,
    /// Model whose tokenizer counts tokens and checks the label words.
    #[arg(long, default_value = bbt::assets::DEFAULT_MODEL)]
    model: String,
    /// Score the first token of label words that are several tokens (with a warning) instead of
    /// refusing them.
    #[arg(long)]
    first_token: bool,
    /// Examples to print from each split.
    #[arg(long, default_value_t = 3)]
    examples: usize,
}

/// Renders class counts per split and a few examples as the model will see them.
pub fn show(args: &ShowArgs) -> anyhow::Result<String> {
    let options = LoadOptions {
        data_dir: args
            .data_dir
            .clone()
            .unwrap_or_else(tasks::default_data_dir),
        k: args.k,
        seed: args.seed,
        resample: args.resample,
    };
    let data = tasks::load_task(&args.task, &options)?;
    let tokenizer = Tokenizer::load(&bbt::assets::resolve_model(&args.model)?)?;
    let spec = &data.spec;
    let multi = if args.first_token {
        MultiTokenWords::FirstToken
    } else {
        MultiTokenWords::Reject
    };
    let (ids, cut) = spec
        .verbalizer_ids(&tokenizer, multi)
        .map_err(|e| anyhow::anyhow!("{e}, or pass --first-token to score its first token"))?;
    let mut out = String::new();
    for word in cut {
        writeln!(
            out,
            "WARNING label word {word:?} is several tokens; only its first token is scored"
        )?;
    }
    writeln!(
        out,
        "task {} ({} classes, metric {:?})",
        spec.name,
        spec.classes.len(),
        spec.metric
    )?;
    writeln!(out, "template {:?}", spec.template.as_str())?;
    let words: Vec<String> = spec
        .verbalizer
        .iter()
        .enumerate()
        .map(|(class, words)| {
            let each: Vec<String> = words
                .words()
                .iter()
                .zip(ids.words_of(class))
                .map(|(w, id)| format!("{w:?}={id}"))
                .collect();
            each.join("|")
        })
        .collect();
    writeln!(out, "verbalizer {}", words.join("  "))?;
    writeln!(out, "train/dev: {}", data.train_dev_source)?;
    writeln!(out, "test:      {}", data.test_source)?;
    if let Some(note) = &data.test_stand_in {
        writeln!(out, "           NOTE {note}")?;
    }
    writeln!(
        out,
        "\n{:<24} {:>6} {:>6} {:>7}",
        "class", "train", "dev", "test"
    )?;
    for (class, (tr, de, te)) in spec.classes.iter().zip(data.class_counts()) {
        writeln!(out, "{class:<24} {tr:>6} {de:>6} {te:>7}")?;
    }
    let (tr, de, te) = (data.train.len(), data.dev.len(), data.test.len());
    writeln!(out, "{:<24} {tr:>6} {de:>6} {te:>7}", "total")?;
    writeln!(
        out,
        "\nexamples as the model sees them (`|` marks where a suffix-placement prompt goes):"
    )?;
    for (name, split) in [
        ("train", &data.train),
        ("dev", &data.dev),
        ("test", &data.test),
    ] {
        for ex in split.iter().take(args.examples) {
            writeln!(out, "{}", render_example(&data, &tokenizer, name, ex)?)?;
        }
    }
    Ok(out)
}

/// One example: split, class, token counts of the text part and the constant tail, the text.
fn render_example(
    data: &TaskData,
    tokenizer: &Tokenizer,
    split: &str,
    ex: &Example,
) -> anyhow::Result<String> {
    let spec = &data.spec;
    let (head, tail) = spec
        .template
        .render(&ex.text_a, ex.text_b.as_deref())
        .map_err(anyhow::Error::msg)?;
    let (h, t) = (
        tokenizer.encode(&head)?.len(),
        tokenizer.encode(&tail)?.len(),
    );
    Ok(format!(
        "[{split:<5}] {:<14} {h:>3}+{t} tokens  {:?} -> {:?}",
        spec.classes[ex.label],
        format!("{head}|{tail}"),
        spec.verbalizer[ex.label].first()
    ))
}
