//! Generation with a pretrained Llama-family model: the prompt's tokens run through the model
//! once (filling the KV cache), then one token at a time until an end token (EOS, the chat
//! template's end of turn), a stop string, `max_tokens` or the end of the context.

use super::{sample, Sampling};
use crate::data::llm_tokenizer::LlmTokenizer;
use crate::models::llama::{Llama, LlamaCache};
use crate::rng::Rng;
use crate::{bail, Error, Result};

/// Why a generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end token, a stop string, or `on_text` asked to stop.
    Stop,
    /// `max_tokens`, or the model's context is full.
    Length,
}

#[derive(Clone, Debug)]
pub struct LlmGeneration {
    pub text: String,
    /// The generated token ids (an end token that stopped it excluded).
    pub ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub finish: Finish,
    /// Seconds spent on the prompt (prefill) and on the generated tokens.
    pub prompt_secs: f64,
    pub gen_secs: f64,
}

/// Generates after `prompt` (token ids) from an empty cache until an end-of-turn token of the
/// tokenizer, calling `on_text` with each new whole piece of text (false from it stops).
pub fn generate_llm(
    model: &Llama,
    tokenizer: &LlmTokenizer,
    prompt: &[u32],
    s: &Sampling,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<LlmGeneration> {
    s.validate()?;
    if prompt.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let context = model.config.max_position_embeddings;
    if prompt.len() >= context {
        return Err(Error::Invalid(format!(
            "the prompt is {} tokens, the model's context is {context}: shorten it",
            prompt.len()
        )));
    }
    let mut rng = Rng::new(s.seed);
    let mut cache = LlamaCache::new(&model.config);
    let t0 = std::time::Instant::now();
    let mut logits = model.forward(prompt, &mut cache, false)?;
    let prompt_secs = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let (mut ids, mut text) = (Vec::new(), String::new());
    let mut stream = tokenizer.stream();
    let finish = loop {
        let next = sample(&logits, s, &mut rng);
        if tokenizer.is_end_of_turn(next) {
            break Finish::Stop;
        }
        ids.push(next);
        // Whole characters only: a byte-level token may end inside one.
        let piece = stream.push(next)?;
        if !piece.is_empty() {
            let before = text.len();
            text.push_str(&piece);
            if let Some(stop) = s.stop.iter().find(|st| text.contains(st.as_str())) {
                let cut = text.find(stop.as_str()).expect("contains");
                if cut > before {
                    on_text(&text[before..cut]);
                }
                text.truncate(cut);
                break Finish::Stop;
            }
            if !on_text(&piece) {
                break Finish::Stop;
            }
        }
        if ids.len() == s.max_tokens || cache.len() + 1 >= context {
            break Finish::Length;
        }
        logits = model.forward(&[next], &mut cache, false)?;
    };
    Ok(LlmGeneration {
        text,
        ids,
        prompt_tokens: prompt.len(),
        finish,
        prompt_secs,
        gen_secs: t1.elapsed().as_secs_f64(),
    })
}
