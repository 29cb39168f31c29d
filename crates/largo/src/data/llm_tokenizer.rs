//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, built as a
//! `tokenizers::Tokenizer` that gives the same ids as transformers'
//! `AutoTokenizer.from_pretrained(dir, gguf_file=…)`:
//!
//! - `tokenizer.ggml.model = gpt2`: byte-level BPE from `tokens` + `merges`, split first by the
//!   regex of `tokenizer.ggml.pre` (llama3 / llama-bpe, qwen2, …) or by GPT-2's own regex
//!   (`gpt2`, `smollm`, or no `pre` key);
//! - `tokenizer.ggml.model = llama`: SentencePiece-style BPE from `tokens` + `scores` (merges
//!   from the file, else recovered from the scores as transformers does), `▁` for spaces, a
//!   prefix space on the first word and byte fallback (`<0xAB>` tokens).
//!
//! Tokens of type 3 (control) become special added tokens and tokens of type 4 (user-defined)
//! plain added tokens, so that both are matched whole in text. BOS is added when the file's
//! `tokenizer.ggml.add_bos_token` says so (default: yes for `llama`, no for `gpt2`).

use crate::io::gguf::{GgufArray, GgufFile, GgufValue};
use crate::{Error, Result};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Llama 3's split (`llama3`, `llama-bpe`, …): contractions, letters with one leading
/// non-letter, numbers in groups of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: as Llama 3's but one digit at a time.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5's split: combining marks count as letters.
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values and the split each one uses (None: GPT-2's own byte-level regex,
/// which is what transformers uses for these).
const PRE_TYPES: &[(&str, Option<&str>)] = &[
    ("default", None),
    ("gpt2", None),
    ("smollm", None),
    ("llama3", Some(LLAMA3_SPLIT)),
    ("llama-v3", Some(LLAMA3_SPLIT)),
    ("llama-bpe", Some(LLAMA3_SPLIT)),
    ("falcon3", Some(LLAMA3_SPLIT)),
    ("falcon-h1", Some(LLAMA3_SPLIT)),
    ("pixtral", Some(LLAMA3_SPLIT)),
    ("dbrx", Some(LLAMA3_SPLIT)),
    ("smaug-bpe", Some(LLAMA3_SPLIT)),
    ("lfm2", Some(LLAMA3_SPLIT)),
    ("qwen2", Some(QWEN2_SPLIT)),
    ("deepseek-r1-qwen", Some(QWEN2_SPLIT)),
    ("megrez", Some(QWEN2_SPLIT)),
    ("qwen35", Some(QWEN35_SPLIT)),
    ("tekken", Some(TEKKEN_SPLIT)),
    ("gpt-4o", Some(GPT4O_SPLIT)),
    ("llama4", Some(GPT4O_SPLIT)),
];

const SUPPORTED_MODELS: &str = "gpt2 (byte-level BPE), llama (SentencePiece BPE)";

/// Special tokens that end a turn in common chat templates.
const END_OF_TURN_TOKENS: &[&str] = &["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];

/// A tokenizer read from a GGUF file, with what generation needs to know about it.
#[derive(Clone)]
pub struct LlmTokenizer {
    /// Encodes with BOS when `add_special` is asked for and the file wants one.
    pub tokenizer: Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Whether encoding with special tokens puts BOS first.
    pub add_bos: bool,
    /// Whether encoding with special tokens puts EOS last (rare).
    pub add_eos: bool,
    /// Tokens that end generation: EOS, the file's end-of-turn / end-of-message ids, and the
    /// usual end-of-turn markers (`<|im_end|>`, `<|eot_id|>`, `<|end|>`, `<end_of_turn>`) when
    /// they are special tokens of this vocabulary.
    pub eot: Vec<u32>,
    /// `tokenizer.chat_template`, when the file has one.
    pub chat_template: Option<String>,
}

impl std::fmt::Debug for LlmTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .field("eot", &self.eot)
            .field(
                "chat_template",
                &self.chat_template.as_ref().map(|t| t.len()),
            )
            .finish()
    }
}

fn tk_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("tokenizer: {what}: {e}"))
}

impl LlmTokenizer {
    /// The ids of `text`; with `add_special`, BOS (and EOS) as the file asks. Special tokens
    /// written in the text (`<|im_start|>`) are always matched whole.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, add_special)
            .map_err(|e| tk_err("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| tk_err("decode", e))
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The token's text as the vocabulary spells it (`Ġhello`, `▁hello`, `<0x0A>`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The text of the BOS / EOS tokens, for chat templates.
    pub fn bos_token(&self) -> Option<String> {
        self.bos.and_then(|id| self.id_to_token(id))
    }

    pub fn eos_token(&self) -> Option<String> {
        self.eos.and_then(|id| self.id_to_token(id))
    }

    /// `messages` rendered with `template` and this vocabulary's BOS and EOS texts; with
    /// `add_generation_prompt`, ending where the assistant's reply starts. Encode the result
    /// without special tokens: the template places BOS itself.
    pub fn render_chat(
        &self,
        template: &super::chat_template::ChatTemplate,
        messages: &[super::chat_template::ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let bos = self.bos_token().unwrap_or_default();
        let eos = self.eos_token().unwrap_or_default();
        template.render(messages, add_generation_prompt, &bos, &eos)
    }

    /// Whether generation should stop at this token.
    pub fn is_end_of_turn(&self, id: u32) -> bool {
        self.eot.contains(&id)
    }

    /// A decoder that turns ids one by one into text, holding back incomplete UTF-8.
    pub fn stream(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }
}

/// Decodes tokens as they are generated: each `push` returns the text that is now complete,
/// so a character split over several byte tokens (an emoji, CJK under byte fallback) comes out
/// whole once its last byte arrives, and the concatenation of the pieces equals decoding all
/// ids at once (for text that ends on a complete character).
pub struct StreamDecoder<'a> {
    tokenizer: &'a LlmTokenizer,
    ids: Vec<u32>,
    /// Decoding starts here (a few tokens back, so that leading-space rules see context).
    prefix_offset: usize,
    /// Text up to here has been returned.
    read_offset: usize,
}

impl StreamDecoder<'_> {
    /// Adds one token; returns the new complete text (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = self.tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let piece = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(piece)
        } else {
            Ok(String::new())
        }
    }

    /// What is still held back (incomplete UTF-8 shows as U+FFFD).
    pub fn flush(&mut self) -> Result<String> {
        let prefix = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = self.tokenizer.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(full.get(prefix.len()..).unwrap_or_default().to_string())
    }
}

/// GPT-2's byte ↔ printable-character table: bytes that are printable stand for themselves,
/// the rest map to U+0100 onwards.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    table
}

fn token_types(gguf: &GgufFile, n: usize) -> Result<Vec<i32>> {
    let key = "tokenizer.ggml.token_type";
    let types: Vec<i32> = match gguf.metadata(key) {
        None => return Ok(vec![1; n]),
        Some(GgufValue::Array(GgufArray::I32(v))) => v.clone(),
        Some(GgufValue::Array(GgufArray::U32(v))) => v.iter().map(|&t| t as i32).collect(),
        Some(GgufValue::Array(GgufArray::I8(v))) => v.iter().map(|&t| t as i32).collect(),
        Some(GgufValue::Array(GgufArray::U8(v))) => v.iter().map(|&t| t as i32).collect(),
        Some(v) => {
            return Err(Error::format(
                gguf.path(),
                format!(
                    "GGUF: {key} is {}, expected an array of integers",
                    v.type_description()
                ),
            ))
        }
    };
    if types.len() != n {
        return Err(Error::format(
            gguf.path(),
            format!("GGUF: {key} has {} entries for {n} tokens", types.len()),
        ));
    }
    Ok(types)
}

fn optional_id(gguf: &GgufFile, key: &str, n: usize) -> Result<Option<u32>> {
    let Some(v) = gguf.metadata(key) else {
        return Ok(None);
    };
    let id = v.as_u64().ok_or_else(|| {
        Error::format(
            gguf.path(),
            format!(
                "GGUF: {key} is {}, expected a token id",
                v.type_description()
            ),
        )
    })?;
    // Some converters write -1 (as u32::MAX) for "none".
    if id == u64::from(u32::MAX) || id == u64::MAX {
        return Ok(None);
    }
    if id >= n as u64 {
        return Err(Error::format(
            gguf.path(),
            format!("GGUF: {key} = {id} is outside the vocabulary of {n} tokens"),
        ));
    }
    Ok(Some(id as u32))
}

fn optional_bool(gguf: &GgufFile, key: &str) -> Result<Option<bool>> {
    match gguf.metadata(key) {
        None => Ok(None),
        Some(_) => gguf.get_bool(key).map(Some),
    }
}

/// Merges "a b" → ("a", "b"), split at the first space not at the start (as transformers'
/// `merge.split(" ")` for the two-part merges real files hold).
fn parse_merges(gguf: &GgufFile, merges: &[String]) -> Result<Vec<(String, String)>> {
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut parts = m.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => Ok((a.to_string(), b.to_string())),
                _ => Err(Error::format(
                    gguf.path(),
                    format!("GGUF: tokenizer.ggml.merges[{i}] = {m:?} is not two tokens separated by one space"),
                )),
            }
        })
        .collect()
}

/// Merges recovered from a vocabulary and its scores (SentencePiece files carry no merges):
/// every split of a token into two tokens of the vocabulary, best score first; as
/// transformers' `generate_merges`, ties kept in vocabulary order.
fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let mut vocab: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t, i);
    }
    // Python dict order: first occurrence, last value.
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    let mut score_of: HashMap<&str, f32> = HashMap::with_capacity(tokens.len());
    for (t, &s) in tokens.iter().zip(scores) {
        if score_of.insert(t, s).is_none() {
            order.push(t);
        }
    }
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for token in order {
        let score = score_of[token];
        let mut local: Vec<(&str, &str, f32)> = token
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = token.split_at(at);
                (vocab.contains_key(l) && vocab.contains_key(r)).then_some((l, r, score))
            })
            .collect();
        local.sort_by_key(|&(l, r, _)| (vocab[l], vocab[r]));
        merges.extend(local);
    }
    // Descending by (score, len(left), len(right)) in characters; the sort is stable.
    merges.sort_by(|a, b| {
        let ka = (a.0.chars().count(), a.1.chars().count());
        let kb = (b.0.chars().count(), b.1.chars().count());
        b.2.partial_cmp(&a.2)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(kb.cmp(&ka))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
}

/// The tokenizer `gguf` describes. Errors name the key and value when the file has no
/// tokenizer, or one of a kind not supported here.
pub fn tokenizer_from_gguf(gguf: &GgufFile) -> Result<LlmTokenizer> {
    let fmt_err = |msg: String| Error::format(gguf.path(), msg);
    let model_key = "tokenizer.ggml.model";
    if gguf.metadata(model_key).is_none() {
        return Err(fmt_err(format!(
            "GGUF: no tokenizer in this file (metadata key {model_key} is missing)"
        )));
    }
    let model = gguf.get_str(model_key)?;
    let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
    let n = tokens.len();
    if n == 0 {
        return Err(fmt_err("GGUF: tokenizer.ggml.tokens is empty".to_string()));
    }
    let types = token_types(gguf, n)?;
    let arch = gguf.get_str("general.architecture").unwrap_or("");

    let (mut tokenizer, specials_filter, default_add_bos): (
        Tokenizer,
        Option<HashSet<char>>,
        bool,
    ) = match model {
        "gpt2" => {
            let pre = match gguf.metadata("tokenizer.ggml.pre") {
                None => "default",
                Some(_) => gguf.get_str("tokenizer.ggml.pre")?,
            };
            let split = PRE_TYPES
                .iter()
                .find(|(name, _)| *name == pre)
                .map(|(_, split)| *split)
                .ok_or_else(|| {
                    let names: Vec<&str> = PRE_TYPES.iter().map(|(n, _)| *n).collect();
                    fmt_err(format!(
                        "GGUF: tokenizer.ggml.pre = {pre:?} is not supported; supported: {}",
                        names.join(", ")
                    ))
                })?;
            let table = bytes_to_unicode();
            let alphabet: HashSet<char> = table.iter().copied().collect();
            let mut vocab = Vocab::default();
            for (i, t) in tokens.iter().enumerate() {
                let spelled = if t.chars().all(|c| alphabet.contains(&c)) {
                    t.clone()
                } else {
                    t.bytes().map(|b| table[b as usize]).collect()
                };
                vocab.insert(spelled, i as u32);
            }
            let merges = parse_merges(gguf, gguf.get_str_array("tokenizer.ggml.merges")?)?;
            let bpe = BPE::builder()
                .vocab_and_merges(vocab, merges)
                .continuing_subword_prefix(String::new())
                .end_of_word_suffix(String::new())
                .fuse_unk(false)
                .build()
                .map_err(|e| {
                    fmt_err(format!("GGUF: byte-level BPE from tokens and merges: {e}"))
                })?;
            let mut tk = Tokenizer::new(bpe);
            let pre_tokenizer: PreTokenizerWrapper = match split {
                None => {
                    tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true).into()
                }
                Some(regex) => {
                    let split = Split::new(
                        SplitPattern::Regex(regex.to_string()),
                        SplitDelimiterBehavior::Isolated,
                        false,
                    )
                    .map_err(|e| tk_err("split regex", e))?;
                    PreSequence::new(vec![
                        split.into(),
                        tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, false)
                            .into(),
                    ])
                    .into()
                }
            };
            tk.with_pre_tokenizer(Some(pre_tokenizer));
            tk.with_decoder(Some(ByteLevel::default()));
            (tk, Some(alphabet), false)
        }
        "llama" => {
            if matches!(arch, "gemma" | "gemma2" | "gemma3" | "phi3") {
                return Err(fmt_err(format!(
                        "GGUF: a SentencePiece tokenizer (tokenizer.ggml.model = llama) for general.architecture = {arch:?} needs architecture-specific rules that are not supported yet"
                    )));
            }
            let mut vocab = Vocab::default();
            for (i, t) in tokens.iter().enumerate() {
                vocab.insert(t.clone(), i as u32);
            }
            let merges = match gguf.metadata("tokenizer.ggml.merges") {
                Some(_) => parse_merges(gguf, gguf.get_str_array("tokenizer.ggml.merges")?)?,
                None => {
                    let scores = gguf.get_f32_array("tokenizer.ggml.scores")?;
                    if scores.len() != n {
                        return Err(fmt_err(format!(
                            "GGUF: tokenizer.ggml.scores has {} entries for {n} tokens",
                            scores.len()
                        )));
                    }
                    merges_from_scores(tokens, scores)
                }
            };
            let bpe = BPE::builder()
                .vocab_and_merges(vocab, merges)
                .fuse_unk(true)
                .byte_fallback(true)
                .build()
                .map_err(|e| {
                    fmt_err(format!(
                        "GGUF: SentencePiece BPE from tokens and scores: {e}"
                    ))
                })?;
            let add_prefix_space =
                optional_bool(gguf, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
            let mut tk = Tokenizer::new(bpe);
            let scheme = if add_prefix_space {
                PrependScheme::First
            } else {
                PrependScheme::Never
            };
            tk.with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)));
            let mut decoders: Vec<DecoderWrapper> = vec![
                Replace::new("▁", " ")
                    .map_err(|e| tk_err("decoder", e))?
                    .into(),
                ByteFallback::new().into(),
                Fuse::new().into(),
            ];
            if add_prefix_space {
                decoders.push(Strip::new(' ', 1, 0).into());
            }
            tk.with_decoder(Some(DecoderSequence::new(decoders)));
            (tk, None, true)
        }
        other => {
            return Err(fmt_err(format!(
                "GGUF: {model_key} = {other:?} is not supported; supported: {SUPPORTED_MODELS}"
            )))
        }
    };

    // Control tokens as special tokens, user-defined ones as plain added tokens: both matched
    // whole. In a byte-level vocabulary a control token spelled outside the byte alphabet is a
    // converter's mislabel and is left alone (as transformers does).
    let spelled_ok = |t: &str| match &specials_filter {
        Some(alphabet) => t.chars().all(|c| alphabet.contains(&c)),
        None => true,
    };
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(t, &ty)| ty == TOKEN_TYPE_CONTROL && spelled_ok(t))
        .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    tokenizer.add_special_tokens(&control);
    let user: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(t, &ty)| ty == TOKEN_TYPE_USER_DEFINED && tokenizer.token_to_id(t).is_some())
        .map(|(t, _)| AddedToken::from(t.clone(), false).normalized(false))
        .collect();
    tokenizer.add_tokens(&user);

    let bos = optional_id(gguf, "tokenizer.ggml.bos_token_id", n)?;
    let eos = optional_id(gguf, "tokenizer.ggml.eos_token_id", n)?;
    let unk = optional_id(gguf, "tokenizer.ggml.unknown_token_id", n)?;
    let pad = optional_id(gguf, "tokenizer.ggml.padding_token_id", n)?;
    // transformers registers these as special tokens too.
    let named: Vec<AddedToken> = [bos, eos, unk, pad]
        .into_iter()
        .flatten()
        .map(|id| &tokens[id as usize])
        .filter(|t| tokenizer.token_to_id(t).is_some() && spelled_ok(t))
        .map(|t| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    tokenizer.add_special_tokens(&named);

    let add_bos = optional_bool(gguf, "tokenizer.ggml.add_bos_token")?.unwrap_or(default_add_bos)
        && bos.is_some();
    let add_eos =
        optional_bool(gguf, "tokenizer.ggml.add_eos_token")?.unwrap_or(false) && eos.is_some();
    let mut single = Vec::new();
    let mut specials: Vec<(String, u32)> = Vec::new();
    let token_text = |id: u32| tokenizer.id_to_token(id).unwrap_or_default();
    if add_bos {
        let id = bos.unwrap_or_default();
        single.push(format!("{}:0", token_text(id)));
        specials.push((token_text(id), id));
    }
    single.push("$A:0".to_string());
    if add_eos {
        let id = eos.unwrap_or_default();
        single.push(format!("{}:0", token_text(id)));
        specials.push((token_text(id), id));
    }
    let post = TemplateProcessing::builder()
        .try_single(single.join(" "))
        .map_err(|e| tk_err("post-processor", e))?
        .special_tokens(specials)
        .build()
        .map_err(|e| tk_err("post-processor", e))?;
    tokenizer.with_post_processor(Some(post));

    let mut eot: Vec<u32> = Vec::new();
    let mut push = |id: Option<u32>| {
        if let Some(id) = id {
            if !eot.contains(&id) {
                eot.push(id);
            }
        }
    };
    push(eos);
    push(optional_id(gguf, "tokenizer.ggml.eot_token_id", n)?);
    push(optional_id(gguf, "tokenizer.ggml.eom_token_id", n)?);
    for name in END_OF_TURN_TOKENS {
        if let Some(i) = tokens.iter().position(|t| t == name) {
            if types[i] == TOKEN_TYPE_CONTROL || types[i] == TOKEN_TYPE_USER_DEFINED {
                push(Some(i as u32));
            }
        }
    }

    let chat_template = match gguf.metadata("tokenizer.chat_template") {
        None => None,
        Some(_) => Some(gguf.get_str("tokenizer.chat_template")?.to_string()),
    };

    Ok(LlmTokenizer {
        tokenizer,
        bos,
        eos,
        add_bos,
        add_eos,
        eot,
        chat_template,
    })
}

/// The chat template a Hugging Face model directory gives: `chat_template.jinja`, else the
/// `chat_template` of `tokenizer_config.json` (a string, or a list of named templates of
/// which `default` is taken). None when the directory has neither.
pub fn chat_template_from_dir(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| Error::io(&jinja, e));
    }
    let config = dir.join("tokenizer_config.json");
    if !config.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config).map_err(|e| Error::io(&config, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(&config, e.to_string()))?;
    match json.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => Ok(list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(str::to_string)),
        Some(other) => Err(Error::format(
            &config,
            format!("chat_template is {other}, expected a string or a list of named templates"),
        )),
    }
}

/// A Hugging Face directory's tokenizer: `tokenizer.json`, with BOS/EOS and `add_bos_token`
/// from `tokenizer_config.json`, end tokens from `generation_config.json` and the chat
/// template (`chat_template.jinja` or `tokenizer_config.json`).
pub fn tokenizer_from_hf_dir(dir: &Path) -> Result<LlmTokenizer> {
    let file = dir.join("tokenizer.json");
    if !file.is_file() {
        return Err(Error::format(dir, "missing tokenizer.json"));
    }
    let tokenizer = crate::data::text::load_tokenizer(&file)?;
    let json = |name: &str| -> Result<Value> {
        let p = dir.join(name);
        if !p.is_file() {
            return Ok(Value::Null);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&text).map_err(|e| Error::format(&p, e.to_string()))
    };
    let config = json("tokenizer_config.json")?;
    // A token given as a string or as {"content": "…"}.
    let token_id = |v: &Value| {
        v.as_str()
            .or_else(|| v.get("content").and_then(|c| c.as_str()))
            .and_then(|t| tokenizer.token_to_id(t))
    };
    let bos = token_id(&config["bos_token"]);
    let eos = token_id(&config["eos_token"]);
    let mut eot: Vec<u32> = eos.into_iter().collect();
    let generation = json("generation_config.json")?;
    match &generation["eos_token_id"] {
        Value::Number(n) => eot.extend(n.as_u64().map(|n| n as u32)),
        Value::Array(ids) => eot.extend(ids.iter().filter_map(|n| n.as_u64()).map(|n| n as u32)),
        _ => {}
    }
    for marker in ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"] {
        eot.extend(tokenizer.token_to_id(marker));
    }
    eot.sort_unstable();
    eot.dedup();
    Ok(LlmTokenizer {
        bos,
        eos,
        add_bos: config["add_bos_token"].as_bool().unwrap_or(false),
        add_eos: config["add_eos_token"].as_bool().unwrap_or(false),
        eot,
        chat_template: chat_template_from_dir(dir)?,
        tokenizer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let t = bytes_to_unicode();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        let distinct: HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn merges_from_scores_prefer_higher_scores() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "abc", "bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -3.0, -2.0];
        let m = merges_from_scores(&tokens, &scores);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, vec![("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]);
    }
}
