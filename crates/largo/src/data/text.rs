//! Text corpora for language models: cleaning, tokenisation (through the `tokenizers` crate),
//! a split by document, and token ids stored compactly.
//!
//! A prepared directory holds `tokenizer.json` (loadable by any `tokenizers` binding),
//! `train.bin` and `val.bin` (little-endian u16 when the vocabulary fits, else u32; the format
//! of nanoGPT's `prepare.py`) and `meta.json`.

use crate::io::{write_atomic, write_dir_atomic};
use crate::rng::Rng;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tokenizers::Tokenizer;
use unicode_normalization::UnicodeNormalization;

/// How to tokenise: by character, a byte-level BPE trained on the corpus, or a given file.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenizerSpec {
    Char,
    Bpe { vocab_size: usize },
    File(PathBuf),
}

impl FromStr for TokenizerSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "char" {
            return Ok(TokenizerSpec::Char);
        }
        if let Some(n) = s.strip_prefix("bpe:") {
            let vocab_size = n
                .parse()
                .ok()
                .filter(|&v: &usize| v >= 260)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "tokenizer {s:?}: bpe:<vocab size> needs a size ≥ 260 (256 bytes + merges)"
                    ))
                })?;
            return Ok(TokenizerSpec::Bpe { vocab_size });
        }
        if s.ends_with(".json") {
            return Ok(TokenizerSpec::File(PathBuf::from(s)));
        }
        Err(Error::Invalid(format!(
            "tokenizer {s:?}: expected char, bpe:<vocab size> or a tokenizer.json path"
        )))
    }
}

#[derive(Clone, Debug, Default)]
pub struct CleanOptions {
    pub nfc: bool,
    pub lowercase: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextMeta {
    pub vocab_size: usize,
    /// "u16" or "u32".
    pub dtype: String,
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub train_documents: Vec<String>,
    pub val_documents: Vec<String>,
    pub tokenizer: String,
    pub nfc: bool,
    pub lowercase: bool,
}

/// One input file, cleaned: UTF-8 checked, BOM stripped, CRLF → LF, optional NFC and lowercase.
pub fn read_document(path: &Path, opts: &CleanOptions) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        Error::format(
            path,
            format!("not valid UTF-8 at byte offset {}", e.valid_up_to()),
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = text.replace("\r\n", "\n");
    if opts.nfc {
        out = out.nfc().collect();
    }
    if opts.lowercase {
        out = out.to_lowercase();
    }
    Ok(out)
}

/// Expands directories (their regular files, sorted) and keeps files as given.
pub fn list_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Error::io(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect();
            inside.sort();
            files.extend(inside);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            return Err(Error::io(
                p,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
    }
    Ok(files)
}

/// A character-level tokenizer in the `tokenizers` format: a BPE model without merges over the
/// corpus' characters, and a decoder that concatenates them.
pub fn char_tokenizer(chars: &std::collections::BTreeSet<char>) -> Result<Tokenizer> {
    let vocab: serde_json::Map<String, serde_json::Value> = chars
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::Value::from(i)))
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": []
        }
    });
    Tokenizer::from_str(&json.to_string())
        .map_err(|e| Error::Invalid(format!("cannot build the character tokenizer: {e}")))
}

/// A byte-level BPE (GPT-2 style) trained on `docs`.
pub fn train_bpe(docs: &[&str], vocab_size: usize) -> Result<Tokenizer> {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::models::TrainerWrapper;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tokenizer
        .train(&mut trainer, docs.iter())
        .map_err(|e| Error::Invalid(format!("BPE training failed: {e}")))?;
    Ok(tokenizer)
}

pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Tokenizer::from_str(&text)
        .map_err(|e| Error::format(path, format!("not a valid tokenizer.json: {e}")))
}

/// Token ids of `text`. With a character vocabulary, characters it lacks are an error naming them.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let unknown = unknown_chars(tokenizer, text);
    if !unknown.is_empty() {
        return Err(Error::Invalid(format!(
            "the text has characters the vocabulary lacks: {}",
            unknown
                .iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let enc = tokenizer
        .encode_fast(text, false)
        .map_err(|e| Error::Invalid(format!("tokenizer failed: {e}")))?;
    Ok(enc.get_ids().to_vec())
}

/// What to do with characters a character-level vocabulary lacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unknown {
    /// Refuse the text, naming them (the default).
    #[default]
    Error,
    /// Drop them and count them.
    Skip,
}

/// Characters dropped under [`Unknown::Skip`], counted by character.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Skipped(pub std::collections::BTreeMap<char, usize>);

impl Skipped {
    pub fn total(&self) -> usize {
        self.0.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `skipped 3 characters the vocabulary lacks: '_' ×2, '|' ×1` (most frequent first).
    pub fn describe(&self) -> String {
        let mut counts: Vec<(char, usize)> = self.0.iter().map(|(&c, &n)| (c, n)).collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let total = self.total();
        format!(
            "skipped {total} character{} the vocabulary lacks: {}",
            if total == 1 { "" } else { "s" },
            counts
                .iter()
                .map(|(c, n)| format!("{c:?} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// `text` ready for [`encode`]: under [`Unknown::Skip`] without the characters a
/// character-level vocabulary lacks (each counted into `skipped`); otherwise unchanged.
pub fn drop_unknown<'t>(
    tokenizer: &Tokenizer,
    text: &'t str,
    unknown: Unknown,
    skipped: &mut Skipped,
) -> std::borrow::Cow<'t, str> {
    if unknown == Unknown::Error || unknown_chars(tokenizer, text).is_empty() {
        return std::borrow::Cow::Borrowed(text);
    }
    let vocab = tokenizer.get_vocab(false);
    let mut buf = [0u8; 4];
    let kept = text
        .chars()
        .filter(|c| {
            let known = vocab.contains_key(&*c.encode_utf8(&mut buf));
            if !known {
                *skipped.0.entry(*c).or_default() += 1;
            }
            known
        })
        .collect();
    std::borrow::Cow::Owned(kept)
}

/// Characters a merge-free (character-level) vocabulary cannot encode; empty for other models.
fn unknown_chars(tokenizer: &Tokenizer, text: &str) -> Vec<char> {
    let is_char_level = tokenizer.get_pre_tokenizer().is_none()
        && tokenizer
            .get_vocab(false)
            .keys()
            .all(|k| k.chars().count() == 1);
    if !is_char_level {
        return Vec::new();
    }
    let vocab = tokenizer.get_vocab(false);
    let mut missing: Vec<char> = text
        .chars()
        .filter(|c| !vocab.contains_key(c.to_string().as_str()))
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

pub fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String> {
    tokenizer
        .decode(ids, false)
        .map_err(|e| Error::Invalid(format!("tokenizer cannot decode: {e}")))
}

pub struct PrepareSummary {
    pub meta: TextMeta,
    /// Characters dropped under [`Unknown::Skip`].
    pub skipped: Skipped,
}

/// Reads, cleans, splits (whole documents into validation), tokenises and writes `out`.
/// `unknown`: what becomes of characters a given character-level tokenizer lacks.
pub fn prepare_text(
    inputs: &[PathBuf],
    spec: &TokenizerSpec,
    val_fraction: f64,
    clean: &CleanOptions,
    seed: u64,
    out: &Path,
    unknown: Unknown,
) -> Result<PrepareSummary> {
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(Error::Invalid(format!(
            "--val-fraction {val_fraction} must be in [0, 1)"
        )));
    }
    let files = list_inputs(inputs)?;
    let mut docs = Vec::new();
    for f in &files {
        let text = read_document(f, clean)?;
        if !text.trim().is_empty() {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            docs.push((name, text));
        }
    }
    if docs.is_empty() {
        return Err(Error::Invalid(format!(
            "the corpus is empty: no text in {}",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    // Validation takes whole documents (seeded); one document alone is split at its tail.
    let (train_docs, val_docs) = split_documents(docs, val_fraction, seed);
    let tokenizer = match spec {
        TokenizerSpec::Char => {
            let chars = train_docs
                .iter()
                .chain(&val_docs)
                .flat_map(|(_, t)| t.chars())
                .collect();
            char_tokenizer(&chars)?
        }
        TokenizerSpec::Bpe { vocab_size } => {
            let texts: Vec<&str> = train_docs.iter().map(|(_, t)| t.as_str()).collect();
            train_bpe(&texts, *vocab_size)?
        }
        TokenizerSpec::File(p) => load_tokenizer(p)?,
    };
    let vocab_size = tokenizer.get_vocab_size(true);
    let mut skipped = Skipped::default();
    let mut encode_all = |docs: &[(String, String)]| -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for (name, text) in docs {
            let text = drop_unknown(&tokenizer, text, unknown, &mut skipped);
            ids.extend(
                encode(&tokenizer, &text).map_err(|e| Error::Invalid(format!("{name}: {e}")))?,
            );
        }
        Ok(ids)
    };
    let train = encode_all(&train_docs)?;
    let val = encode_all(&val_docs)?;
    let dtype = if vocab_size <= 1 << 16 { "u16" } else { "u32" };
    let meta = TextMeta {
        vocab_size,
        dtype: dtype.into(),
        train_tokens: train.len(),
        val_tokens: val.len(),
        train_documents: train_docs.iter().map(|(n, _)| n.clone()).collect(),
        val_documents: val_docs.iter().map(|(n, _)| n.clone()).collect(),
        tokenizer: match spec {
            TokenizerSpec::Char => "char".into(),
            TokenizerSpec::Bpe { vocab_size } => format!("bpe:{vocab_size}"),
            TokenizerSpec::File(p) => p.display().to_string(),
        },
        nfc: clean.nfc,
        lowercase: clean.lowercase,
    };
    write_dir_atomic(out, |tmp| {
        let tok_json = tokenizer
            .to_string(true)
            .map_err(|e| Error::Invalid(format!("cannot serialise the tokenizer: {e}")))?;
        write_atomic(&tmp.join("tokenizer.json"), tok_json.as_bytes())?;
        write_atomic(&tmp.join("train.bin"), &ids_to_bytes(&train, dtype))?;
        write_atomic(&tmp.join("val.bin"), &ids_to_bytes(&val, dtype))?;
        write_atomic(
            &tmp.join("meta.json"),
            serde_json::to_string_pretty(&meta)
                .expect("meta")
                .as_bytes(),
        )
    })?;
    Ok(PrepareSummary { meta, skipped })
}

pub(crate) type Docs = Vec<(String, String)>;

pub(crate) fn split_documents(mut docs: Docs, val_fraction: f64, seed: u64) -> (Docs, Docs) {
    if val_fraction == 0.0 {
        return (docs, Vec::new());
    }
    if docs.len() == 1 {
        let (name, text) = docs.pop().expect("one document");
        let mut cut = ((text.len() as f64) * (1.0 - val_fraction)) as usize;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        let (a, b) = text.split_at(cut);
        return (
            vec![(name.clone(), a.to_string())],
            vec![(format!("{name} (tail)"), b.to_string())],
        );
    }
    let total: usize = docs.iter().map(|(_, t)| t.len()).sum();
    let mut order: Vec<usize> = (0..docs.len()).collect();
    Rng::for_stream(seed, crate::rng::stream::SPLIT).shuffle(&mut order);
    let mut val_idx = Vec::new();
    let mut val_bytes = 0;
    for &i in &order {
        if val_idx.len() + 1 >= docs.len() || (val_bytes as f64) >= val_fraction * total as f64 {
            break;
        }
        val_idx.push(i);
        val_bytes += docs[i].1.len();
    }
    let mut train = Vec::new();
    let mut val = Vec::new();
    for (i, d) in docs.into_iter().enumerate() {
        if val_idx.contains(&i) {
            val.push(d)
        } else {
            train.push(d)
        }
    }
    (train, val)
}

fn ids_to_bytes(ids: &[u32], dtype: &str) -> Vec<u8> {
    if dtype == "u16" {
        ids.iter().flat_map(|&i| (i as u16).to_le_bytes()).collect()
    } else {
        ids.iter().flat_map(|&i| i.to_le_bytes()).collect()
    }
}

/// A prepared dataset loaded for training.
pub struct TokenData {
    pub dir: PathBuf,
    pub meta: TextMeta,
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    pub tokenizer: Tokenizer,
}

impl TokenData {
    pub fn load(dir: &Path) -> Result<Self> {
        let mp = dir.join("meta.json");
        let text = std::fs::read_to_string(&mp).map_err(|e| Error::io(&mp, e))?;
        let meta: TextMeta =
            serde_json::from_str(&text).map_err(|e| Error::format(&mp, e.to_string()))?;
        let read_ids = |name: &str| -> Result<Vec<u32>> {
            let p = dir.join(name);
            let b = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            let width = if meta.dtype == "u16" { 2 } else { 4 };
            if b.len() % width != 0 {
                return Err(Error::format(
                    &p,
                    format!(
                        "length {} is not a multiple of {width} ({})",
                        b.len(),
                        meta.dtype
                    ),
                ));
            }
            let ids: Vec<u32> = if width == 2 {
                b.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
                    .collect()
            } else {
                b.chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            };
            if let Some(&bad) = ids.iter().find(|&&i| i as usize >= meta.vocab_size) {
                return Err(Error::format(
                    &p,
                    format!("token id {bad} ≥ vocab_size {}", meta.vocab_size),
                ));
            }
            Ok(ids)
        };
        Ok(TokenData {
            train: read_ids("train.bin")?,
            val: read_ids("val.bin")?,
            tokenizer: load_tokenizer(&dir.join("tokenizer.json"))?,
            dir: dir.to_path_buf(),
            meta,
        })
    }
}

/// Fills x and y [B,T] with `b` random windows of `tokens` (y is x shifted by one).
pub fn random_windows(
    tokens: &[u32],
    b: usize,
    t: usize,
    rng: &mut Rng,
    x: &mut Vec<u32>,
    y: &mut Vec<i64>,
) {
    x.clear();
    y.clear();
    let span = tokens.len() - t - 1;
    for _ in 0..b {
        let i = rng.below(span + 1);
        x.extend_from_slice(&tokens[i..i + t]);
        y.extend(tokens[i + 1..i + t + 1].iter().map(|&v| v as i64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_tokenizer_round_trips_and_names_unknown_characters() {
        let chars = "hello world\n".chars().collect();
        let tok = char_tokenizer(&chars).unwrap();
        let ids = encode(&tok, "hello\nworld").unwrap();
        assert_eq!(ids.len(), 11);
        assert_eq!(decode(&tok, &ids).unwrap(), "hello\nworld");
        let e = encode(&tok, "hallo, Zed").unwrap_err().to_string();
        assert!(
            e.contains("'Z'") && e.contains("','") && e.contains("'a'"),
            "{e}"
        );
        // Reloadable from its JSON like any tokenizer.json.
        let back = Tokenizer::from_str(&tok.to_string(false).unwrap()).unwrap();
        assert_eq!(encode(&back, "low").unwrap(), encode(&tok, "low").unwrap());
    }

    #[test]
    fn skip_drops_and_counts_the_characters_a_vocabulary_lacks() {
        let tok = char_tokenizer(&"ab c".chars().collect()).unwrap();
        let mut skipped = Skipped::default();
        let kept = drop_unknown(&tok, "a_b|c_", Unknown::Skip, &mut skipped);
        assert_eq!(kept, "abc");
        assert_eq!(
            skipped.describe(),
            "skipped 3 characters the vocabulary lacks: '_' ×2, '|' ×1"
        );
        // The default leaves the text to encode's error.
        let mut none = Skipped::default();
        assert_eq!(drop_unknown(&tok, "a_", Unknown::Error, &mut none), "a_");
        assert!(none.is_empty());
        assert!(encode(&tok, "a_").is_err());
    }

    #[test]
    fn bpe_learns_merges_and_round_trips() {
        let text = "the cat sat on the mat with the hat. ".repeat(50);
        let tok = train_bpe(&[text.as_str()], 300).unwrap();
        let ids = encode(&tok, "the cat sat").unwrap();
        assert!(
            ids.len() < "the cat sat".len(),
            "merges shorten the sequence: {ids:?}"
        );
        assert_eq!(decode(&tok, &ids).unwrap(), "the cat sat");
    }

    #[test]
    fn cleaning_strips_bom_normalises_newlines_and_reports_bad_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        std::fs::write(&p, "\u{feff}Cafe\u{301}\r\nLINE").unwrap();
        let t = read_document(
            &p,
            &CleanOptions {
                nfc: true,
                lowercase: true,
            },
        )
        .unwrap();
        assert_eq!(t, "caf\u{e9}\nline");
        std::fs::write(&p, b"ok\xffno").unwrap();
        let e = read_document(&p, &CleanOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not valid UTF-8 at byte offset 2") && e.contains("a.txt"),
            "{e}"
        );
    }

    #[test]
    fn validation_takes_whole_documents() {
        let docs: Docs = (0..10)
            .map(|i| (format!("d{i}"), "x".repeat(100)))
            .collect();
        let (train, val) = split_documents(docs, 0.2, 1);
        assert_eq!(val.len(), 2);
        assert_eq!(train.len(), 8);
        assert!(val.iter().all(|(n, _)| !train.iter().any(|(m, _)| m == n)));
    }
}
