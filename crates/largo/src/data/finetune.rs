//! Fine-tuning data for pretrained LLMs, tokenised with the model's own tokenizer:
//!
//! - **text**: files, or directories of them; each document's tokens followed by EOS, all
//!   packed into one stream per split, from which training draws context-length windows;
//! - **chat**: JSONL, one `{"messages": [{"role": …, "content": …}, …]}` per line, rendered
//!   with the model's chat template; only the assistant's tokens are trained on (their
//!   content and the end-of-turn the template closes them with).
//!
//! Validation holds out whole documents (text) or conversations (chat).

use super::chat_template::{ChatMessage, ChatTemplate};
use super::llm_tokenizer::LlmTokenizer;
use super::text::{list_inputs, read_document, split_documents, CleanOptions};
use crate::rng::Rng;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// A target left out of the loss (transformers' and PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// One training sequence: token ids and, per position, the next token to predict
/// ([`IGNORE_INDEX`] where nothing is learned).
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub targets: Vec<i64>,
}

impl Example {
    /// Positions that count in the loss.
    pub fn trained_tokens(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
    }
}

/// Plain text, tokenised and packed: documents end with EOS.
#[derive(Clone, Debug)]
pub struct TextStreams {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    pub train_documents: Vec<String>,
    pub val_documents: Vec<String>,
}

/// Reads the text files of `path` (a file or a directory), splits whole documents into
/// training and validation (`val_fraction` of the bytes, seeded; a single document is cut at
/// that fraction) and tokenises each split into one stream.
pub fn text_streams(
    path: &Path,
    tokenizer: &LlmTokenizer,
    val_fraction: f64,
    seed: u64,
) -> Result<TextStreams> {
    let files = list_inputs(&[path.to_path_buf()])?;
    if files.is_empty() {
        return Err(Error::format(path, "no text files here"));
    }
    let mut docs = Vec::with_capacity(files.len());
    for f in &files {
        let text = read_document(f, &CleanOptions::default())?;
        docs.push((f.display().to_string(), text));
    }
    let (train, val) = split_documents(docs, val_fraction, seed);
    let eos = tokenizer.eos.ok_or_else(|| {
        Error::Invalid("the tokenizer has no EOS token to separate documents with".into())
    })?;
    let pack = |docs: &[(String, String)]| -> Result<Vec<u32>> {
        let mut stream = Vec::new();
        for (_, text) in docs {
            stream.extend(tokenizer.encode(text, false)?);
            stream.push(eos);
        }
        Ok(stream)
    };
    Ok(TextStreams {
        train: pack(&train)?,
        val: pack(&val)?,
        train_documents: train.into_iter().map(|(n, _)| n).collect(),
        val_documents: val.into_iter().map(|(n, _)| n).collect(),
    })
}

/// The window of `t` tokens at `start` of a packed stream, each position predicting the next.
pub fn window(stream: &[u32], start: usize, t: usize) -> Example {
    Example {
        ids: stream[start..start + t].to_vec(),
        targets: stream[start + 1..start + t + 1]
            .iter()
            .map(|&v| v as i64)
            .collect(),
    }
}

/// `n` windows of `t` tokens spread evenly over `stream` (validation: the same every time).
pub fn spread_windows(stream: &[u32], t: usize, n: usize) -> Vec<Example> {
    let last = stream.len().saturating_sub(t + 1);
    (0..n)
        .map(|i| {
            let start = if n <= 1 { 0 } else { i * last / (n - 1) };
            window(stream, start, t)
        })
        .collect()
}

/// `n` windows of `t` tokens at random places of `stream`.
pub fn random_windows(stream: &[u32], t: usize, n: usize, rng: &mut Rng) -> Vec<Example> {
    let span = stream.len() - t - 1;
    (0..n)
        .map(|_| window(stream, rng.below(span + 1), t))
        .collect()
}

/// A conversation and the line of the file it came from.
#[derive(Clone, Debug)]
pub struct Conversation {
    pub line: usize,
    pub messages: Vec<ChatMessage>,
}

/// Reads chat JSONL: per non-empty line, an object with `messages`, a list of objects with
/// string `role` and `content`. Anything else is an error naming the file and line.
pub fn read_chat_jsonl(path: &Path) -> Result<Vec<Conversation>> {
    let text = read_document(path, &CleanOptions::default())?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| Error::format(path, format!("line {n}: {msg}"));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let list = v
            .get("messages")
            .and_then(|m| m.as_array())
            .ok_or_else(|| bad("expected an object with a \"messages\" list".into()))?;
        if list.is_empty() {
            return Err(bad("\"messages\" is empty".into()));
        }
        let messages = list
            .iter()
            .enumerate()
            .map(|(j, m)| {
                let field = |key: &str| {
                    m.get(key)
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| bad(format!("messages[{j}] lacks \"{key}\" (a string)")))
                };
                Ok(ChatMessage::new(field("role")?, field("content")?))
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(Conversation { line: n, messages });
    }
    if out.is_empty() {
        return Err(Error::format(
            path,
            "no conversations (one JSON object per line)",
        ));
    }
    Ok(out)
}

/// A conversation as the model sees it: rendered with `template`, tokenised, the targets
/// set on the assistant's tokens only, cut to `context` tokens. The assistant's part of each
/// reply is what rendering the conversation up to and including the reply adds to rendering
/// it up to the reply with the generation prompt; a template that does not render
/// conversations as growing prefixes is refused.
pub fn chat_example(
    conv: &Conversation,
    template: &ChatTemplate,
    tokenizer: &LlmTokenizer,
    context: usize,
    path: &Path,
) -> Result<Example> {
    let bad = |msg: String| Error::format(path, format!("line {}: {msg}", conv.line));
    let render = |messages: &[ChatMessage], prompt: bool| {
        tokenizer
            .render_chat(template, messages, prompt)
            .map_err(|e| bad(e.to_string()))
    };
    let full = render(&conv.messages, false)?;
    // Spans [start, end) of `full` that are the assistant's.
    let mut spans = Vec::new();
    for (i, m) in conv.messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = render(&conv.messages[..i], true)?;
        let through = render(&conv.messages[..=i], false)?;
        if !(through.starts_with(&before) && full.starts_with(&through)) {
            return Err(bad(format!(
                "the chat template does not render this conversation as growing prefixes, so the assistant's tokens of messages[{i}] cannot be told apart"
            )));
        }
        spans.push((before.len(), through.len()));
    }
    if spans.is_empty() {
        return Err(bad(
            "no \"assistant\" message: nothing to learn from this conversation".into(),
        ));
    }
    let mut ids = Vec::new();
    let mut labels = Vec::new();
    let mut at = 0;
    let mut push = |text: &str, learn: bool| -> Result<()> {
        let part = tokenizer.encode(text, false)?;
        labels.extend(
            part.iter()
                .map(|&id| if learn { id as i64 } else { IGNORE_INDEX }),
        );
        ids.extend(part);
        Ok(())
    };
    for (start, end) in spans {
        push(&full[at..start], false)?;
        push(&full[start..end], true)?;
        at = end;
    }
    push(&full[at..], false)?;
    ids.truncate(context);
    labels.truncate(context);
    // Position t predicts labels[t + 1].
    let mut targets: Vec<i64> = labels.iter().skip(1).copied().collect();
    targets.push(IGNORE_INDEX);
    Ok(Example { ids, targets })
}

/// Pads `examples` to the longest of them (EOS ids, targets left out) and flattens them into
/// one batch [B, T]: causal attention lets no position see the padding after it.
pub fn pad_batch(examples: &[&Example], pad: u32) -> (Vec<u32>, Vec<i64>, usize) {
    let t = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(examples.len() * t);
    let mut targets = Vec::with_capacity(examples.len() * t);
    for e in examples {
        ids.extend(&e.ids);
        ids.resize(ids.len() + t - e.ids.len(), pad);
        targets.extend(&e.targets);
        targets.resize(targets.len() + t - e.targets.len(), IGNORE_INDEX);
    }
    (ids, targets, t)
}

/// Splits conversations into training and validation: `val_fraction` of them, seeded, at
/// least one each when there are two or more and the fraction is not 0.
pub fn split_conversations<T>(items: Vec<T>, val_fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    let n = items.len();
    let mut val_n = (n as f64 * val_fraction).round() as usize;
    if val_fraction > 0.0 && n >= 2 {
        val_n = val_n.clamp(1, n - 1);
    }
    let mut order: Vec<usize> = (0..n).collect();
    Rng::for_stream(seed, crate::rng::stream::SPLIT).shuffle(&mut order);
    let val_set: std::collections::BTreeSet<usize> = order[..val_n].iter().copied().collect();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, item) in items.into_iter().enumerate() {
        if val_set.contains(&i) {
            val.push(item);
        } else {
            train.push(item);
        }
    }
    (train, val)
}

/// Whether `path` names chat data by its extension (`.jsonl`).
pub fn looks_like_chat(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "jsonl")
}

/// `path` as an absolute path when it exists (config files then work from any directory).
pub fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn bad_chat_lines_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = r#"{"messages": [{"role": "user", "content": "hi"}]}"#;
        for (text, want) in [
            (format!("{good}\nnot json\n"), "line 2: not JSON"),
            (
                format!("{good}\n\n{{\"msgs\": []}}\n"),
                "line 3: expected an object with a \"messages\" list",
            ),
            (
                r#"{"messages": [{"role": "user"}]}"#.to_string(),
                "line 1: messages[0] lacks \"content\"",
            ),
            (
                r#"{"messages": [{"content": "x"}]}"#.to_string(),
                "line 1: messages[0] lacks \"role\"",
            ),
            ("\n\n".to_string(), "no conversations"),
        ] {
            let p = write(dir.path(), "c.jsonl", &text);
            let e = read_chat_jsonl(&p).unwrap_err().to_string();
            assert!(e.contains("c.jsonl") && e.contains(want), "{e}");
        }
        let p = write(dir.path(), "ok.jsonl", &format!("{good}\n{good}\n"));
        let convs = read_chat_jsonl(&p).unwrap();
        assert_eq!(convs.len(), 2);
        assert_eq!(convs[1].line, 2);
        assert_eq!(convs[0].messages[0], ChatMessage::new("user", "hi"));
    }

    #[test]
    fn batches_pad_with_targets_left_out() {
        let a = Example {
            ids: vec![1, 2, 3],
            targets: vec![2, 3, IGNORE_INDEX],
        };
        let b = Example {
            ids: vec![4],
            targets: vec![IGNORE_INDEX],
        };
        let (ids, targets, t) = pad_batch(&[&a, &b], 9);
        assert_eq!(t, 3);
        assert_eq!(ids, [1, 2, 3, 4, 9, 9]);
        assert_eq!(targets, [2, 3, -100, -100, -100, -100]);
    }

    #[test]
    fn windows_predict_the_next_token_and_validation_windows_cover_the_stream() {
        let stream: Vec<u32> = (0..20).collect();
        let w = window(&stream, 3, 4);
        assert_eq!(w.ids, [3, 4, 5, 6]);
        assert_eq!(w.targets, [4, 5, 6, 7]);
        let spread = spread_windows(&stream, 4, 3);
        assert_eq!(spread[0].ids[0], 0);
        assert_eq!(*spread[2].targets.last().unwrap(), 19);
        let mut rng = Rng::new(1);
        for e in random_windows(&stream, 4, 50, &mut rng) {
            assert_eq!(e.targets[3] as u32, e.ids[3] + 1);
            assert!(e.targets[3] <= 19);
        }
    }

    #[test]
    fn conversations_split_with_at_least_one_on_each_side() {
        let (train, val) = split_conversations((0..10).collect(), 0.1, 7);
        assert_eq!((train.len(), val.len()), (9, 1));
        let (train, val) = split_conversations((0..2).collect(), 0.01, 7);
        assert_eq!((train.len(), val.len()), (1, 1));
        let (train, val) = split_conversations((0..5).collect::<Vec<i32>>(), 0.0, 7);
        assert_eq!((train.len(), val.len()), (5, 0));
    }
}
