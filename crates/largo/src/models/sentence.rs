//! Sentence embeddings from a Hugging Face / sentence-transformers directory: tokenizer →
//! BERT → pooling (as `1_Pooling/config.json` declares) → optional L2 normalisation (when
//! `modules.json` lists `Normalize`), truncating at `max_seq_length` as sentence-transformers does.

use super::bert::{AttentionMaps, Bert, BertConfig, BertScratch};
use super::store::load_params;
use crate::io::TensorFile;
use crate::nn::Module;
use crate::{bail, Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// How token vectors become one sentence vector; several modes are concatenated in
/// sentence-transformers' order (cls, max, mean, mean_sqrt_len).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct Pooling {
    #[serde(default)]
    pub pooling_mode_cls_token: bool,
    #[serde(default)]
    pub pooling_mode_max_tokens: bool,
    #[serde(default)]
    pub pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pub pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pub pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pub pooling_mode_lasttoken: bool,
}

impl Pooling {
    /// sentence-transformers' default for a plain Hugging Face model: mean of the tokens.
    pub const MEAN: Pooling = Pooling {
        pooling_mode_cls_token: false,
        pooling_mode_max_tokens: false,
        pooling_mode_mean_tokens: true,
        pooling_mode_mean_sqrt_len_tokens: false,
        pooling_mode_weightedmean_tokens: false,
        pooling_mode_lasttoken: false,
    };

    pub fn names(&self) -> Vec<&'static str> {
        let modes = [
            (self.pooling_mode_cls_token, "cls"),
            (self.pooling_mode_max_tokens, "max"),
            (self.pooling_mode_mean_tokens, "mean"),
            (self.pooling_mode_mean_sqrt_len_tokens, "mean_sqrt_len"),
            (self.pooling_mode_lasttoken, "lasttoken"),
        ];
        modes.iter().filter(|m| m.0).map(|m| m.1).collect()
    }

    /// tokens [T, C] → the pooled vector [C × number of modes].
    pub fn pool(&self, tokens: &[f32], c: usize, out: &mut Vec<f32>) {
        let t = tokens.len() / c;
        let rows = || tokens.chunks_exact(c);
        let mut sum = vec![0.0f32; c];
        for r in rows() {
            sum.iter_mut().zip(r).for_each(|(s, x)| *s += x);
        }
        if self.pooling_mode_cls_token {
            out.extend_from_slice(&tokens[..c]);
        }
        if self.pooling_mode_max_tokens {
            let mut m = vec![f32::NEG_INFINITY; c];
            for r in rows() {
                m.iter_mut().zip(r).for_each(|(m, x)| *m = m.max(*x));
            }
            out.extend_from_slice(&m);
        }
        if self.pooling_mode_mean_tokens {
            out.extend(sum.iter().map(|s| s / t as f32));
        }
        if self.pooling_mode_mean_sqrt_len_tokens {
            out.extend(sum.iter().map(|s| s / (t as f32).sqrt()));
        }
        if self.pooling_mode_lasttoken {
            out.extend_from_slice(&tokens[(t - 1) * c..]);
        }
    }
}

/// `1_Pooling/config.json`: the `pooling_mode_*` switches, or sentence-transformers ≥ 6's
/// single `"pooling_mode": "mean"`.
fn read_pooling(path: &Path) -> Result<Pooling> {
    let v: serde_json::Value = read_json(path)?;
    if let Some(mode) = v.get("pooling_mode") {
        let mut pool: Pooling = serde_json::from_value(serde_json::json!({}))
            .map_err(|e| Error::format(path, e.to_string()))?;
        let modes: Vec<&str> = match mode {
            serde_json::Value::String(m) => vec![m.as_str()],
            serde_json::Value::Array(a) => a.iter().filter_map(|m| m.as_str()).collect(),
            _ => vec![],
        };
        for m in modes {
            match m {
                "cls" | "cls_token" => pool.pooling_mode_cls_token = true,
                "max" | "max_tokens" => pool.pooling_mode_max_tokens = true,
                "mean" | "mean_tokens" => pool.pooling_mode_mean_tokens = true,
                "mean_sqrt_len_tokens" | "mean_sqrt_len" => {
                    pool.pooling_mode_mean_sqrt_len_tokens = true
                }
                "lasttoken" => pool.pooling_mode_lasttoken = true,
                "weightedmean" => pool.pooling_mode_weightedmean_tokens = true,
                other => {
                    return Err(Error::format(
                        path,
                        format!("pooling_mode {other:?} is not one of cls, max, mean, mean_sqrt_len_tokens, lasttoken"),
                    ))
                }
            }
        }
        return Ok(pool);
    }
    serde_json::from_value(v).map_err(|e| Error::format(path, format!("{e}")))
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// A loaded sentence encoder.
pub struct SentenceEncoder {
    pub dir: PathBuf,
    pub bert: Bert,
    pub tokenizer: Tokenizer,
    pub pooling: Pooling,
    pub normalize: bool,
    /// Longest input in tokens, [CLS] and [SEP] included; longer inputs are truncated.
    pub max_seq_length: usize,
    /// Where the weights came from (model.safetensors or pytorch_model.bin).
    pub weights_file: PathBuf,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("{e}")))
}

/// The weights of a Hugging Face directory: model.safetensors, else pytorch_model.bin.
pub fn hf_weights(dir: &Path) -> Result<TensorFile> {
    let st = dir.join("model.safetensors");
    if st.is_file() {
        return TensorFile::load(&st);
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        return crate::io::load_weights(&bin);
    }
    Err(Error::format(
        dir,
        "missing model.safetensors (or pytorch_model.bin): the directory has no weights",
    ))
}

/// A Hugging Face directory: sentence-transformers' modules.json, or a config.json with a
/// `model_type` (largo's own config.json has `arch` instead).
pub fn is_hf_dir(dir: &Path) -> bool {
    dir.join("modules.json").is_file()
        || std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v.get("model_type").is_some())
}

/// Reads a BERT model's config.json; an architecture other than BERT is named in the error.
pub fn read_bert_config(dir: &Path) -> Result<BertConfig> {
    let path = dir.join("config.json");
    let raw: serde_json::Value = read_json(&path)?;
    let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
    if model_type != "bert" {
        return Err(Error::format(
            &path,
            format!(
                "unsupported architecture {model_type:?} (model_type): supported Hugging Face \
                 architectures are bert; largo's own are {}",
                super::Arch::names()
            ),
        ));
    }
    let cfg: BertConfig =
        serde_json::from_value(raw).map_err(|e| Error::format(&path, format!("{e}")))?;
    cfg.validate()
        .map_err(|e| Error::format(&path, e.to_string()))?;
    Ok(cfg)
}

/// Copies HF weights into `bert`: accepts a `bert.` prefix (BertFor… checkpoints) and old
/// `gamma`/`beta` layer-norm names, and ignores buffers and heads that a BertModel does not use.
pub fn load_bert_weights(bert: &mut Bert, file: &mut TensorFile) -> Result<()> {
    let names: Vec<String> = file.tensors.keys().cloned().collect();
    for old in names {
        let mut new = old.strip_prefix("bert.").unwrap_or(&old).to_string();
        if let Some(stem) = new.strip_suffix(".gamma") {
            new = format!("{stem}.weight");
        } else if let Some(stem) = new.strip_suffix(".beta") {
            new = format!("{stem}.bias");
        }
        let unused = new.starts_with("pooler.")
            || new.starts_with("cls.")
            || new == "embeddings.position_ids"
            || new == "embeddings.token_type_ids";
        let t = file.tensors.remove(&old).expect("key listed above");
        if !unused {
            file.tensors.insert(new, t);
        }
    }
    load_params(bert, file)
}

impl SentenceEncoder {
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
            ));
        }
        // sentence-transformers layout: modules.json names the transformer's folder, the
        // pooling folder and whether a Normalize module follows.
        let (mut root, mut pooling_dir, mut normalize) = (dir.to_path_buf(), None, false);
        let modules = dir.join("modules.json");
        if modules.is_file() {
            let entries: Vec<ModuleEntry> = read_json(&modules)?;
            for m in entries {
                match m.kind.rsplit('.').next().unwrap_or("") {
                    "Transformer" => root = dir.join(&m.path),
                    "Pooling" => pooling_dir = Some(dir.join(&m.path)),
                    "Normalize" => normalize = true,
                    other => {
                        return Err(Error::format(
                            &modules,
                            format!(
                                "module type {:?} is not supported (expected Transformer, \
                                 Pooling, Normalize); {other} is unknown",
                                m.kind
                            ),
                        ))
                    }
                }
            }
        }
        let pooling = match &pooling_dir {
            Some(p) => {
                let path = p.join("config.json");
                let pool = read_pooling(&path)?;
                if pool.pooling_mode_weightedmean_tokens {
                    return Err(Error::format(
                        &path,
                        "pooling_mode_weightedmean_tokens is not supported",
                    ));
                }
                if pool.names().is_empty() {
                    return Err(Error::format(&path, "no pooling mode is enabled"));
                }
                pool
            }
            None => Pooling::MEAN,
        };
        let cfg = read_bert_config(&root)?;
        let tok_path = root.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(Error::format(
                &root,
                "missing tokenizer.json (the Hugging Face fast-tokenizer file)",
            ));
        }
        let mut tokenizer = crate::data::text::load_tokenizer(&tok_path)?;
        let st_config = dir.join("sentence_bert_config.json");
        let declared = if st_config.is_file() {
            read_json::<SentenceBertConfig>(&st_config)?.max_seq_length
        } else {
            None
        };
        // Undeclared: the tokenizer's model_max_length, as sentence-transformers falls back to.
        let declared = match declared {
            Some(n) => Some(n),
            None => {
                let tc = root.join("tokenizer_config.json");
                if tc.is_file() {
                    read_json::<serde_json::Value>(&tc)?
                        .get("model_max_length")
                        .and_then(|v| v.as_u64())
                        .map(|n| n as usize)
                } else {
                    None
                }
            }
        };
        let max_seq_length = declared
            .unwrap_or(cfg.max_position_embeddings)
            .min(cfg.max_position_embeddings);
        // Truncate to max_seq_length (special tokens included); never pad: batches are packed.
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_seq_length,
                ..Default::default()
            }))
            .map_err(|e| Error::format(&tok_path, format!("cannot set truncation: {e}")))?;
        tokenizer.with_padding(None);
        let mut bert =
            Bert::new(cfg).map_err(|e| Error::format(root.join("config.json"), e.to_string()))?;
        let mut file = hf_weights(&root)?;
        let weights_file = file.path.clone();
        load_bert_weights(&mut bert, &mut file)?;
        bert.drop_grads();
        bert.pack_for_inference();
        Ok(SentenceEncoder {
            dir: dir.to_path_buf(),
            bert,
            tokenizer,
            pooling,
            normalize,
            max_seq_length,
            weights_file,
        })
    }

    /// Width of an embedding.
    pub fn dim(&self) -> usize {
        self.bert.cfg.hidden_size * self.pooling.names().len()
    }

    /// Token ids of each text, [CLS] … [SEP], truncated to `max_seq_length`.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Invalid(format!("tokenizer: {e}")))?;
        Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Embeddings of already tokenised sequences, in their order (one forward pass).
    pub fn embed_ids(&self, seqs: &[&[u32]], scratch: &mut BertScratch) -> Result<Vec<Vec<f32>>> {
        if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
            bail!("sequence {i} has no tokens");
        }
        let c = self.bert.cfg.hidden_size;
        let hidden = self.bert.forward(seqs, scratch, None)?;
        let mut out = Vec::with_capacity(seqs.len());
        let mut row = 0;
        for s in seqs {
            let mut v = Vec::with_capacity(self.dim());
            self.pooling
                .pool(&hidden[row * c..(row + s.len()) * c], c, &mut v);
            if self.normalize {
                // sentence-transformers' Normalize: x / max(‖x‖, 1e-12).
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|x| *x /= norm);
            }
            row += s.len();
            out.push(v);
        }
        Ok(out)
    }

    /// Embeddings of `texts` in input order. Texts are sorted by length and cut into batches
    /// of `batch` so each pass holds sequences of similar length.
    pub fn embed(&self, texts: &[&str], batch: usize) -> Result<Vec<Vec<f32>>> {
        self.embed_tokenized(&self.tokenize(texts)?, batch)
    }

    /// `embed` for texts already tokenised (by `tokenize`).
    pub fn embed_tokenized(&self, ids: &[Vec<u32>], batch: usize) -> Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out = vec![Vec::new(); ids.len()];
        let mut scratch = BertScratch::default();
        for chunk in order.chunks(batch.max(1)) {
            let seqs: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            for (&i, e) in chunk.iter().zip(self.embed_ids(&seqs, &mut scratch)?) {
                out[i] = e;
            }
        }
        Ok(out)
    }

    /// Attention probabilities of every layer for one text: [layer][H, T, T], and its tokens.
    pub fn attention_maps(&self, text: &str) -> Result<(Vec<String>, AttentionMaps)> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::Invalid(format!("tokenizer: {e}")))?;
        if !enc.get_overflowing().is_empty() {
            let max = enc.get_ids().len();
            return Err(Error::Invalid(format!(
                "the text is longer than the model's max_seq_length of {max} tokens; shorten it"
            )));
        }
        let mut maps = AttentionMaps::new();
        self.bert.forward(
            &[enc.get_ids()],
            &mut BertScratch::default(),
            Some(&mut maps),
        )?;
        Ok((enc.get_tokens().to_vec(), maps))
    }
}
