//! Every gradient method on the real default model and real SST-2 sentences: a few optimizer
//! steps lower the training loss (the methods are wired to something that learns), and the
//! model tuned by a method is the only thing that changes.

use bbt::peft::{Method, MethodConfig, Trainable, Trainer};
use bbt::scoring::{loss_tensor, EncodedSplit};
use bbt::tasks::{self, LoadOptions, MultiTokenWords};
use bbt::Engine;

fn mean_loss(trainable: &Trainable, engine: &mut Engine, split: &EncodedSplit) -> f64 {
    let idx: Vec<usize> = (0..split.len()).collect();
    let logits = trainable.logits(engine, split, &idx, false).unwrap();
    loss_tensor(&logits, &split.labels, trainable.config().training.loss)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64
}

#[test]
fn a_few_steps_lower_the_training_loss_for_every_method() {
    let Some(data_dir) = bbt::testing::paper_datasets(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        "a_few_steps_lower_the_training_loss_for_every_method",
    ) else {
        return;
    };
    let mut engine = Engine::load(bbt::assets::DEFAULT_MODEL, &candle_core::Device::Cpu).unwrap();
    let data = tasks::load_task(
        "sst2",
        &LoadOptions {
            data_dir,
            k: 4,
            seed: 13,
            resample: true,
        },
    )
    .unwrap();
    let (verbalizer, _) = data
        .spec
        .verbalizer_ids(engine.tokenizer(), MultiTokenWords::Reject)
        .unwrap();
    let train = EncodedSplit::new(&engine, &data.spec, &data.train).unwrap();
    let idx: Vec<usize> = (0..train.len()).collect();
    let first_weight = |e: &Engine| -> Vec<f32> {
        e.weights().layers[0]
            .wqkv
            .weight
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let base = first_weight(&engine);
    for method in Method::ALL {
        let mut config = MethodConfig::defaults(method);
        if let Some(prompt) = config.tuner.prompt_tuning_mut() {
            prompt.length = 5;
        }
        config.training.warmup_ratio = 0.0;
        let trainable = Trainable::new(&engine, &config, &verbalizer, 1).unwrap();
        let mut trainer = Trainer::new(trainable, 1).unwrap();
        trainer
            .select_child_network(&mut engine, &train, 4)
            .unwrap();
        let before = mean_loss(&trainer.trainable, &mut engine, &train);
        for _ in 0..3 {
            trainer
                .step(&mut engine, &train, &idx, config.training.learning_rate)
                .unwrap();
        }
        let after = mean_loss(&trainer.trainable, &mut engine, &train);
        assert!(
            after < before,
            "{method}: training loss {before:.4} -> {after:.4} after 3 steps"
        );
        // The engine's own weights are untouched, whatever the method trained.
        assert!(
            first_weight(&engine) == base,
            "{method} changed the engine's weights"
        );
    }
}
