//! `bbt demo`: zero-shot sentiment with the MR task's manual prompt, straight through the engine.
//!
//! Shows the pieces BBT tunes around: the task's template (" <S> It was"), its verbalizer
//! (" bad" / " great") and logits read out only for the label words — here with no continuous
//! prompt at all (L = 0).

use std::time::Instant;

use bbt::protocol::Placement;
use bbt::scoring::{self, EncodedSplit};
use bbt::tasks::{self, Example, MultiTokenWords};
use bbt::Prompt;
use candle_core::Tensor;

/// Options of `bbt demo`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: bbt::cli::ModelArgs,
    /// Sentences to classify (a built-in handful when none are given).
    sentences: Vec<String>,
}

/// (sentence, class: 0 negative, 1 positive)
const BUILT_IN: &[(&str, usize)] = &[
    ("a gorgeous, witty, seductive movie.", 1),
    ("the movie was a complete waste of time.", 0),
    ("an utterly charming and hilarious film.", 1),
    ("bland, boring and far too long.", 0),
    ("one of the best films of the year.", 1),
    ("the plot makes no sense and the acting is wooden.", 0),
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
    let (spec, _) = tasks::registry::lookup("mr").expect("mr is a built-in task");
    let (verbalizer, _) = spec.verbalizer_ids(engine.tokenizer(), MultiTokenWords::Reject)?;
    let labelled = args.sentences.is_empty();
    let examples: Vec<Example> = if labelled {
        BUILT_IN
            .iter()
            .map(|(s, l)| Example {
                text_a: s.to_string(),
                text_b: None,
                label: *l,
            })
            .collect()
    } else {
        args.sentences
            .iter()
            .map(|s| Example {
                text_a: s.clone(),
                text_b: None,
                label: 0,
            })
            .collect()
    };
    let split = EncodedSplit::new(&engine, &spec, &examples)?;
    let no_prompt = Prompt::new(Tensor::zeros(
        (0, engine.config().hidden_size),
        engine.dtype(),
        engine.device(),
    )?);
    let start = Instant::now();
    let logits = scoring::candidate_logits(
        &engine,
        &split,
        &[no_prompt],
        Placement::Prefix,
        None,
        &verbalizer,
    )?
    .remove(0);
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "template {:?} -> {}",
        spec.template.as_str(),
        spec.verbalizer
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" / ")
    );
    let mut correct = 0;
    for (ex, l) in examples.iter().zip(&logits) {
        let pred = usize::from(l[1] > l[0]);
        correct += usize::from(pred == ex.label);
        let mark = match (labelled, pred == ex.label) {
            (false, _) => "",
            (true, true) => "ok",
            (true, false) => "WRONG",
        };
        println!(
            "{:>9}  margin {:+6.2}  {mark:>5}  {}",
            spec.classes[pred],
            l[1] - l[0],
            ex.text_a
        );
    }
    if labelled {
        println!("zero-shot accuracy: {correct}/{}", examples.len());
    }
    println!("{} sentences in {:.2}s", examples.len(), elapsed);
    Ok(())
}
