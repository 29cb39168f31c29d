//! Perplexity over a text, scored as llama.cpp's `llama-perplexity` scores it, so the two
//! numbers compare: the tokens are cut into non-overlapping chunks of `context` tokens (the
//! tail shorter than a chunk is dropped); each chunk runs from an empty cache, its first token
//! replaced by BOS when the tokenizer adds one; only the second half of each chunk is scored
//! (position j predicts token j + 1 for j in context/2 .. context − 1), so every scored token
//! sees at least half a context.

use crate::{bail, Result};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Perplexity {
    pub perplexity: f64,
    /// Tokens in the text.
    pub tokens: usize,
    pub chunks: usize,
    /// Tokens scored (chunks × (context − 1 − context/2)).
    pub scored: usize,
    pub context: usize,
    /// Mean negative log-likelihood per scored token (nats).
    pub nll: f64,
}

/// Scores `tokens` with `logits_of(chunk) → [context, vocab]` logits of every position.
pub fn chunked_perplexity(
    tokens: &[u32],
    context: usize,
    bos: Option<u32>,
    vocab: usize,
    mut logits_of: impl FnMut(&[u32]) -> Result<Vec<f32>>,
) -> Result<Perplexity> {
    if context < 4 {
        bail!("--context must be at least 4 tokens, got {context}");
    }
    let chunks = tokens.len() / context;
    if chunks == 0 {
        bail!(
            "the text is {} tokens, fewer than one chunk of --context {context}: give a longer text or a smaller --context",
            tokens.len()
        );
    }
    let first = context / 2;
    let (mut nll, mut scored) = (0f64, 0usize);
    for c in 0..chunks {
        let mut chunk = tokens[c * context..(c + 1) * context].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let logits = logits_of(&chunk)?;
        if logits.len() != context * vocab {
            bail!(
                "the model gave {} logits for a chunk of {context} tokens over {vocab}",
                logits.len()
            );
        }
        for j in first..context - 1 {
            let row = &logits[j * vocab..(j + 1) * vocab];
            // The target is the text's token, not the BOS that may have replaced it.
            let target = tokens[c * context + j + 1] as usize;
            nll += log_sum_exp(row) - row[target] as f64;
            scored += 1;
        }
    }
    let mean = nll / scored as f64;
    Ok(Perplexity {
        perplexity: mean.exp(),
        tokens: tokens.len(),
        chunks,
        scored,
        context,
        nll: mean,
    })
}

fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    max + row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_the_vocabulary_size_and_the_second_halves_are_scored() {
        let tokens: Vec<u32> = (0..50).map(|i| i % 7).collect();
        let mut seen = Vec::new();
        let p = chunked_perplexity(&tokens, 16, Some(99), 7, |chunk| {
            seen.push(chunk.to_vec());
            Ok(vec![0.0; 16 * 7])
        })
        .unwrap();
        assert!((p.perplexity - 7.0).abs() < 1e-9);
        assert_eq!((p.chunks, p.scored, p.tokens), (3, 3 * 7, 50));
        // Each chunk starts with BOS in place of its first token; the rest is the text.
        assert_eq!(seen[1][0], 99);
        assert_eq!(&seen[1][1..], &tokens[17..32]);
    }

    #[test]
    fn a_model_that_knows_the_next_token_has_perplexity_near_one() {
        let tokens: Vec<u32> = (0..64).map(|i| i % 5).collect();
        let p = chunked_perplexity(&tokens, 32, None, 5, |chunk| {
            let mut l = vec![0.0; 32 * 5];
            for (j, &t) in chunk.iter().enumerate() {
                l[j * 5 + ((t as usize + 1) % 5)] = 50.0;
            }
            Ok(l)
        })
        .unwrap();
        assert!(p.perplexity < 1.0 + 1e-9, "{p:?}");
        assert!(chunked_perplexity(&tokens[..10], 32, None, 5, |_| Ok(vec![])).is_err());
    }
}
