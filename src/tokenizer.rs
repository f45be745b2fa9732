//! Text to token ids, built from a GGUF file's own metadata or from a `tokenizer.json`.
//!
//! The heavy lifting (BPE merges, byte-level mapping, special-token splitting) is done by the
//! `tokenizers` crate; this module only assembles the right pipeline from what the model file
//! records, so a model file is self-contained.

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper};

/// GGUF token types (llama.cpp `llama_token_type`) that mark special tokens.
const TOKEN_TYPE_NORMAL: i32 = 1;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// A model's tokenizer and the special ids the engine needs.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence id, when the model expects one in front of every input.
    bos: Option<u32>,
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.*` keys).
    pub fn from_gguf(content: &gguf_file::Content) -> anyhow::Result<Self> {
        let md = &content.metadata;
        let get = |k: &str| {
            md.get(k)
                .with_context(|| format!("GGUF metadata lacks {k}"))
        };
        let model = get("tokenizer.ggml.model")?.to_string()?.clone();
        let tokens: Vec<String> = get("tokenizer.ggml.tokens")?
            .to_vec()?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<Result<_, _>>()?;
        let token_types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()?
                .iter()
                .map(|t| t.to_i32())
                .collect::<Result<_, _>>()?,
            None => vec![1; tokens.len()],
        };
        let inner = match model.as_str() {
            "gpt2" => {
                let pre = md
                    .get("tokenizer.ggml.pre")
                    .map(|v| v.to_string().cloned())
                    .transpose()?
                    .unwrap_or_else(|| "default".into());
                let merges: Vec<(String, String)> = get("tokenizer.ggml.merges")?
                    .to_vec()?
                    .iter()
                    .map(|m| {
                        let m = m.to_string()?;
                        m.split_once(' ')
                            .map(|(a, b)| (a.to_string(), b.to_string()))
                            .with_context(|| format!("malformed BPE merge `{m}`"))
                    })
                    .collect::<anyhow::Result<_>>()?;
                byte_level_bpe(&tokens, merges, &pre)?
            }
            "llama" => {
                let scores: Vec<f32> = get("tokenizer.ggml.scores")?
                    .to_vec()?
                    .iter()
                    .map(|v| v.to_f32())
                    .collect::<Result<_, _>>()?;
                let add_space_prefix = md
                    .get("tokenizer.ggml.add_space_prefix")
                    .map(|v| v.to_bool())
                    .transpose()?
                    .unwrap_or(true);
                sentencepiece_bpe(&tokens, &scores, &token_types, add_space_prefix)?
            }
            other => bail!("unsupported GGUF tokenizer model `{other}` (supported: gpt2, llama)"),
        };
        let mut inner = inner;
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
            .map(|(tok, _)| AddedToken::from(tok.clone(), true))
            .collect();
        inner.add_special_tokens(&specials);
        let id = |k: &str| -> anyhow::Result<Option<u32>> {
            md.get(k).map(|v| Ok(v.to_u32()?)).transpose()
        };
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .map(|v| v.to_bool())
            .transpose()?
            .unwrap_or(model == "llama");
        Ok(Self {
            inner,
            bos: if add_bos {
                id("tokenizer.ggml.bos_token_id")?
            } else {
                None
            },
        })
    }

    /// The tokenizer of a model given as a `.gguf` file or a HF-style directory
    /// (`tokenizer.json`, with the BOS id from `config.json`), without loading weights.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        if path.is_dir() {
            let config_path = path.join("config.json");
            let text = std::fs::read_to_string(&config_path)
                .with_context(|| format!("read {}", config_path.display()))?;
            let config: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("parse {}", config_path.display()))?;
            let id = |k: &str| config.get(k).and_then(|x| x.as_u64()).map(|x| x as u32);
            return Self::from_file(&path.join("tokenizer.json"), id("bos_token_id"));
        }
        let mut file =
            std::fs::File::open(path).with_context(|| format!("open model {}", path.display()))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| anyhow::anyhow!("{} is not a readable GGUF file: {e}", path.display()))?;
        Self::from_gguf(&content)
    }

    /// Wraps an already-built `tokenizers` pipeline (e.g. for small test models).
    pub fn new(inner: tokenizers::Tokenizer, bos: Option<u32>) -> Self {
        Self { inner, bos }
    }

    /// Loads a Hugging Face `tokenizer.json`; `bos` is prepended to inputs when given.
    pub fn from_file(path: &Path, bos: Option<u32>) -> anyhow::Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        Ok(Self { inner, bos })
    }

    /// Token ids of `text`, without BOS (the engine places BOS itself).
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| anyhow::anyhow!("tokenization failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of a sequence of ids.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| anyhow::anyhow!("decoding failed: {e}"))
    }

    /// Beginning-of-sequence id the model expects in front of every input, if any.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
}

/// SentencePiece-style BPE (llama.cpp's "llama" tokenizer model): spaces become `▁`, adjacent
/// pieces merge in order of the merged piece's score, unknown bytes fall back to `<0xXX>` tokens.
///
/// The merge list is derived from the scores, as Hugging Face's SentencePiece converter does:
/// every split of a vocabulary piece into two vocabulary pieces is a merge, ranked by the score of
/// the piece it produces.
fn sentencepiece_bpe(
    tokens: &[String],
    scores: &[f32],
    token_types: &[i32],
    add_space_prefix: bool,
) -> anyhow::Result<tokenizers::Tokenizer> {
    anyhow::ensure!(
        scores.len() == tokens.len(),
        "GGUF has {} scores for {} tokens",
        scores.len(),
        tokens.len()
    );
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    // Only ordinary pieces take part in merges; control, user-defined and byte tokens do not.
    let mergeable = |id: usize| token_types.get(id).is_none_or(|&t| t == TOKEN_TYPE_NORMAL);
    let mut merges: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if !mergeable(id) || piece.chars().nth(1).is_none() {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                if mergeable(l as usize) && mergeable(r as usize) {
                    merges.push((scores[id], id as u32, l, r));
                }
            }
        }
    }
    // Higher score first; among equal scores, the lower id (more frequent piece) first.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<(String, String)> = merges
        .into_iter()
        .map(|(_, _, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .build()
        .map_err(|e| anyhow::anyhow!("invalid SentencePiece vocabulary: {e}"))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    let replace = Replace::new(" ", "▁").map_err(|e| anyhow::anyhow!("{e}"))?;
    let normalizer: NormalizerWrapper = if add_space_prefix {
        NormalizerSequence::new(vec![Prepend::new("▁".into()).into(), replace.into()]).into()
    } else {
        replace.into()
    };
    tk.with_normalizer(Some(normalizer));
    let decoder = DecoderSequence::new(vec![
        Replace::new("▁", " ")
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ]);
    tk.with_decoder(Some(decoder));
    Ok(tk)
}

/// GPT-2 style byte-level BPE; `pre` is llama.cpp's pre-tokenizer name.
fn byte_level_bpe(
    tokens: &[String],
    merges: Vec<(String, String)>,
    pre: &str,
) -> anyhow::Result<tokenizers::Tokenizer> {
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| anyhow::anyhow!("invalid BPE vocabulary: {e}"))?;
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        // SmolLM: every digit is its own word, then GPT-2's regex split.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "gpt2" | "default" => byte_level.into(),
        other => {
            bail!("unsupported BPE pre-tokenizer `{other}` (supported: smollm, gpt2, default)")
        }
    };
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(pre_tokenizer));
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tk)
}
