//! `bbt demo`: zero-shot sentiment with a manual prompt, straight through the engine.
//!
//! Shows the pieces BBT tunes around: a template (" <S> It was"), a verbalizer (" bad" /
//! " great") and logits read out only for the label words.

use std::time::Instant;

use bbt::{Readout, Row, Segment};

/// Options of `bbt demo`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: bbt::cli::ModelArgs,
    /// Sentences to classify (a built-in handful when none are given).
    sentences: Vec<String>,
}

const BUILT_IN: &[(&str, &str)] = &[
    ("a gorgeous, witty, seductive movie.", "great"),
    ("the movie was a complete waste of time.", "bad"),
    ("an utterly charming and hilarious film.", "great"),
    ("bland, boring and far too long.", "bad"),
    ("one of the best films of the year.", "great"),
    ("the plot makes no sense and the acting is wooden.", "bad"),
];

/// Runs the demo and prints one line per sentence plus the accuracy on the built-in set.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let engine = args.model.load()?;
    println!(
        "loaded {} in {:.1}s",
        engine.info().name,
        start.elapsed().as_secs_f64()
    );
    let tok = engine.tokenizer();
    let label_word = |w: &str| -> anyhow::Result<u32> {
        match tok.encode(w)?.as_slice() {
            [id] => Ok(*id),
            ids => anyhow::bail!("label word {w:?} is {} tokens, not one", ids.len()),
        }
    };
    let labels = ["bad", "great"];
    let verbalizer = labels
        .iter()
        .map(|w| label_word(&format!(" {w}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let items: Vec<(String, Option<&str>)> = if args.sentences.is_empty() {
        BUILT_IN
            .iter()
            .map(|(s, l)| (s.to_string(), Some(*l)))
            .collect()
    } else {
        args.sentences.iter().map(|s| (s.clone(), None)).collect()
    };
    let rows = items
        .iter()
        .map(|(s, _)| {
            let mut ids = engine.bos_segment();
            ids.extend(tok.encode(&format!(" {s} It was"))?);
            Ok(Row::new(vec![Segment::Tokens(ids)]))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let start = Instant::now();
    let out = engine.forward(&rows, &[], None, &Readout::Tokens(verbalizer), false)?;
    let logits: Vec<Vec<f32>> = out.logits.to_vec2()?;
    let elapsed = start.elapsed().as_secs_f64();
    println!("template: \" <S> It was\" -> \" bad\" / \" great\"");
    let mut correct = 0;
    for ((sentence, gold), l) in items.iter().zip(&logits) {
        let pred = if l[1] > l[0] { labels[1] } else { labels[0] };
        correct += usize::from(*gold == Some(pred));
        let mark = match gold {
            Some(g) if *g == pred => "ok",
            Some(_) => "WRONG",
            None => "",
        };
        println!(
            "{pred:>5}  margin {:+6.2}  {mark:>5}  {sentence}",
            l[1] - l[0]
        );
    }
    if items.iter().all(|(_, g)| g.is_some()) {
        println!("zero-shot accuracy: {correct}/{}", items.len());
    }
    println!("{} sentences in {:.2}s", items.len(), elapsed);
    Ok(())
}
