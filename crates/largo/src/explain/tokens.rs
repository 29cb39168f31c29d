//! Which tokens of a prompt drive a language model's next-token prediction: gradient × input
//! on the token embeddings, score_t = Σ_c e_t[c] · ∂f/∂e_t[c], where e_t = wte[id_t] and f is
//! the logit of the predicted (or chosen) next token at the last position.

use super::{diverging_rgb, html_escape, language_model_and_ids, token_texts, visible_token};
use crate::models::sentence::is_hf_dir;
use crate::models::TransformerLm;
use crate::nn::{Forward, Module};
use crate::tensor::argmax;
use crate::{Error, Result};
use serde::Serialize;
use std::path::Path;

#[derive(Clone, Debug, Serialize)]
pub struct TokenAttribution {
    pub text: String,
    pub tokens: Vec<String>,
    pub ids: Vec<u32>,
    /// Gradient × input for each prompt token.
    pub scores: Vec<f32>,
    pub target_id: u32,
    pub target: String,
    /// The target's probability and logit after the prompt.
    pub probability: f32,
    pub logit: f32,
}

/// Attributes the next-token logit of the language model at `dir` (model or run directory) to
/// the tokens of `text`. `target`: the next token to explain (default: the most likely one).
pub fn attribute_tokens(dir: &Path, text: &str, target: Option<&str>) -> Result<TokenAttribution> {
    if is_hf_dir(dir) {
        return Err(Error::Invalid(format!(
            "{}: token attributions explain a language model's next token; this is a Hugging Face encoder",
            dir.display()
        )));
    }
    let (mut model, tokenizer, ids, _) =
        language_model_and_ids(dir, text, "token attributions need a language model")?;
    let target_id = match target {
        Some(s) => match crate::data::text::encode(&tokenizer, s)?.as_slice() {
            [id] => Some(*id),
            other => {
                return Err(Error::Invalid(format!(
                    "--target {s:?} is {} tokens; give text that is exactly one token",
                    other.len()
                )))
            }
        },
        None => None,
    };
    let (scores, target_id, logit, probability) = grad_times_input(&mut model, &ids, target_id)?;
    let tokens = token_texts(&tokenizer, &ids)?;
    Ok(TokenAttribution {
        text: text.to_string(),
        tokens,
        ids,
        scores,
        target_id,
        target: crate::data::text::decode(&tokenizer, &[target_id])?,
        probability,
        logit,
    })
}

/// Scores of each position of `ids` (one sequence) for the target's logit at the last position;
/// returns (scores, target id, logit, probability).
pub fn grad_times_input(
    model: &mut TransformerLm,
    ids: &[u32],
    target: Option<u32>,
) -> Result<(Vec<f32>, u32, f32, f32)> {
    let (t, v, c) = (ids.len(), model.spec.vocab_size, model.spec.n_embd);
    let logits = model.forward(ids, Forward::eval(1, t))?;
    let last = &logits[(t - 1) * v..t * v];
    let target = target.unwrap_or(argmax(last) as u32);
    let max = last.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = last.iter().map(|&l| (l - max).exp()).sum();
    let logit = last[target as usize];
    let probability = (logit - max).exp() / z;
    // d f / d logits: one at the target of the last position, zero elsewhere.
    let mut dlogits = vec![0.0; t * v];
    dlogits[(t - 1) * v + target as usize] = 1.0;
    model.backward(&dlogits);
    let table = &model.wte.weight.value.data;
    let scores = ids
        .iter()
        .zip(model.token_embedding_grad().chunks_exact(c))
        .map(|(&id, g)| {
            let e = &table[id as usize * c..(id as usize + 1) * c];
            e.iter().zip(g).map(|(a, b)| a * b).sum()
        })
        .collect();
    model.zero_grad();
    Ok((scores, target, logit, probability))
}

impl TokenAttribution {
    fn max_abs(&self) -> f32 {
        self.scores
            .iter()
            .fold(0f32, |m, s| m.max(s.abs()))
            .max(f32::MIN_POSITIVE)
    }

    /// The prompt with each token on a background coloured by its score (24-bit ANSI).
    pub fn to_ansi(&self) -> String {
        let max = self.max_abs();
        let mut out = String::new();
        for (tok, &s) in self.tokens.iter().zip(&self.scores) {
            let (r, g, b) = diverging_rgb(s / max);
            out.push_str(&format!(
                "\x1b[48;2;{r};{g};{b}m\x1b[38;2;0;0;0m{}\x1b[0m",
                visible_token(tok)
            ));
        }
        out
    }

    /// A self-contained HTML page: the coloured prompt (scores on hover) and a table.
    pub fn to_html(&self) -> String {
        let max = self.max_abs();
        let mut spans = String::new();
        let mut rows = String::new();
        for (i, (tok, &s)) in self.tokens.iter().zip(&self.scores).enumerate() {
            let (r, g, b) = diverging_rgb(s / max);
            let shown = html_escape(&visible_token(tok));
            spans.push_str(&format!(
                "<span style=\"background:rgb({r},{g},{b})\" title=\"{s:+.4}\">{shown}</span>"
            ));
            rows.push_str(&format!(
                "<tr><td>{i}</td><td><code>{shown}</code></td><td>{s:+.4}</td></tr>\n"
            ));
        }
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>largo: token attributions</title>\n\
             <style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}\
             .prompt{{font-family:monospace;font-size:1.3em;line-height:1.8;white-space:pre-wrap}}\
             .prompt span{{padding:0.1em 0;border-radius:2px}}\
             table{{border-collapse:collapse}}td,th{{padding:0.2em 0.8em;border-bottom:1px solid #ddd}}</style></head>\n\
             <body><h1>Token attributions</h1>\n\
             <p>Gradient × input on the token embeddings for the next token \
             <code>{target}</code> (probability {p:.4}, logit {logit:.4}). Red tokens raise its logit, blue lower it.</p>\n\
             <p class=\"prompt\">{spans}</p>\n<table><tr><th>#</th><th>token</th><th>score</th></tr>\n{rows}</table></body></html>\n",
            target = html_escape(&visible_token(&self.target)),
            p = self.probability,
            logit = self.logit,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{EncoderLmConfig, GptConfig};
    use crate::rng::Rng;

    /// score_t is the derivative of the logit when e_t is scaled by (1 + ε): checked by finite
    /// differences on an untied model whose prompt tokens are all different.
    #[test]
    fn scores_are_directional_derivatives() {
        let gpt = GptConfig {
            vocab_size: 11,
            n_layer: 2,
            n_head: 2,
            n_embd: 16,
            ff: 32,
            block_size: 8,
            tie_weights: false,
            ..GptConfig::default()
        }
        .spec();
        // The encoder LM scales embeddings by √d and adds sinusoidal positions.
        let encoder = EncoderLmConfig {
            ntoken: 11,
            d_model: 16,
            nhead: 2,
            d_hid: 32,
            nlayers: 2,
            max_len: 8,
            ..EncoderLmConfig::default()
        }
        .spec();
        for spec in [gpt, encoder] {
            let mut model = TransformerLm::new(spec).unwrap();
            model.init(&mut Rng::new(5));
            let ids = [3u32, 7, 1, 9, 4];
            let (scores, target, logit, p) = grad_times_input(&mut model, &ids, Some(6)).unwrap();
            assert_eq!(target, 6);
            assert!(p > 0.0 && p < 1.0 && logit.is_finite());
            let c = 16;
            for (pos, &id) in ids.iter().enumerate() {
                let f_at = |eps: f32| {
                    let mut m2 = model.clone();
                    let row = &mut m2.wte.weight.value.data[id as usize * c..(id as usize + 1) * c];
                    row.iter_mut().for_each(|x| *x *= 1.0 + eps);
                    let l = m2.forward(&ids, Forward::eval(1, ids.len())).unwrap();
                    l[(ids.len() - 1) * 11 + 6] as f64
                };
                let fd = (f_at(1e-2) - f_at(-1e-2)) / 2e-2;
                let s = scores[pos] as f64;
                assert!(
                    (fd - s).abs() <= 1e-3 + 1e-2 * s.abs(),
                    "position {pos}: {fd} vs {s}"
                );
            }
        }
    }
}
