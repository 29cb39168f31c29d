//! Interpretability: what a trained model attends to and which inputs drive its prediction.
//!
//! - `attention`: every layer's and head's attention probabilities over a text, as a grid of
//!   heatmaps (PNG) and as JSON, for largo language models and Hugging Face BERT encoders.
//! - `saliency`: gradient and integrated-gradients attributions of an image classifier's
//!   logit to its pixels, overlaid on the digit.
//! - `tokens`: gradient × input on the token embeddings for a language model's next-token
//!   prediction, coloured for the terminal and as HTML.

pub mod attention;
pub mod saliency;
pub mod tokens;

use crate::models::store::{load_info, load_lm, resolve_model_dir};
use crate::models::TransformerLm;
use crate::{Error, Result};
use std::path::Path;
use tokenizers::Tokenizer;

/// A largo language model (model or run directory) and the ids of `text`, which must fit its
/// context; `needs` completes "… need a language model" in the error for another kind of model.
pub(crate) fn language_model_and_ids(
    dir: &Path,
    text: &str,
    needs: &str,
) -> Result<(TransformerLm, Tokenizer, Vec<u32>, String)> {
    let model_dir = resolve_model_dir(dir)?;
    let info = load_info(&model_dir)?;
    if info.lm_spec().is_none() {
        return Err(Error::Invalid(format!(
            "{}: {needs}, and this is an {} model",
            model_dir.display(),
            info.arch()
        )));
    }
    let (model, info, tokenizer) = load_lm(&model_dir)?;
    if text.is_empty() {
        return Err(Error::Invalid("the text is empty".into()));
    }
    let ids = crate::data::text::encode(&tokenizer, text)?;
    if ids.len() > model.spec.block_size {
        return Err(Error::Invalid(format!(
            "the text is {} tokens, longer than the model's context of {} tokens (block_size); shorten it",
            ids.len(),
            model.spec.block_size
        )));
    }
    Ok((model, tokenizer, ids, info.arch().name().to_string()))
}

/// Each id decoded on its own: the tokens as a chart or a table shows them.
pub(crate) fn token_texts(tokenizer: &Tokenizer, ids: &[u32]) -> Result<Vec<String>> {
    ids.iter()
        .map(|&id| crate::data::text::decode(tokenizer, &[id]))
        .collect()
}

/// A token as it should appear on a chart: whitespace made visible, control characters escaped.
pub fn visible_token(text: &str) -> String {
    let mut out = String::new();
    for ch in text.chars() {
        match ch {
            ' ' => out.push('␣'),
            '\n' => out.push('↵'),
            '\t' => out.push('⇥'),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    if out.is_empty() {
        out.push('∅');
    }
    out
}

/// Diverging colour for a signed score in [-1, 1]: blue (negative) – white – red (positive).
pub fn diverging_rgb(score: f32) -> (u8, u8, u8) {
    let s = score.clamp(-1.0, 1.0);
    let fade = |full: f32| (255.0 - (255.0 - full) * s.abs()).round() as u8;
    if s >= 0.0 {
        (fade(214.0), fade(39.0), fade(40.0))
    } else {
        (fade(31.0), fade(119.0), fade(180.0))
    }
}

/// Sequential colour for a weight in [0, 1]: the viridis map, interpolated between its anchors.
pub fn viridis_rgb(w: f32) -> (u8, u8, u8) {
    const ANCHORS: [(f32, f32, f32); 6] = [
        (68.0, 1.0, 84.0),
        (65.0, 68.0, 135.0),
        (42.0, 120.0, 142.0),
        (34.0, 168.0, 132.0),
        (122.0, 209.0, 81.0),
        (253.0, 231.0, 37.0),
    ];
    let x = if w.is_finite() {
        w.clamp(0.0, 1.0)
    } else {
        0.0
    } * (ANCHORS.len() - 1) as f32;
    let i = (x.floor() as usize).min(ANCHORS.len() - 2);
    let f = x - i as f32;
    let (a, b) = (ANCHORS[i], ANCHORS[i + 1]);
    let mix = |p: f32, q: f32| (p + (q - p) * f).round() as u8;
    (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// HTML-escapes text for element content and attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_show_their_whitespace() {
        assert_eq!(visible_token(" a\n"), "␣a↵");
        assert_eq!(visible_token(""), "∅");
        assert_eq!(visible_token("\u{7}"), "\\u{7}");
    }

    #[test]
    fn colour_maps_span_their_ends() {
        assert_eq!(diverging_rgb(0.0), (255, 255, 255));
        assert_eq!(diverging_rgb(1.0), (214, 39, 40));
        assert_eq!(diverging_rgb(-2.0), (31, 119, 180));
        assert_eq!(viridis_rgb(0.0), (68, 1, 84));
        assert_eq!(viridis_rgb(1.0), (253, 231, 37));
        assert_eq!(viridis_rgb(f32::NAN), (68, 1, 84));
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
