//! Generation with a pretrained Llama-family model: the prompt's tokens run through the model
//! once (filling the KV cache), then one token at a time until an end token (EOS, the chat
//! template's end of turn), a stop string, `max_tokens` or the end of the context.

use super::constrained::TokenConstraint;
use super::{sample, Sampling};
use crate::data::llm_tokenizer::{LlmTokenizer, StreamDecoder};
use crate::models::llama::{Llama, LlamaCache};
use crate::rng::Rng;
use crate::{bail, Error, Result};
use std::time::Instant;

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
    /// Per generated token, when asked for ([`LlmDecoder::with_logprobs`]).
    pub logprobs: Vec<TokenLogprob>,
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
    let (mut decoder, mut feed) = LlmDecoder::new(model, tokenizer, prompt, s)?;
    loop {
        let logits = model.forward(&feed, &mut decoder.cache, false)?;
        match decoder.step(&logits, &mut on_text)? {
            Some(next) => feed = next,
            None => return Ok(decoder.finish()),
        }
    }
}

/// One generation advanced a token at a time by its caller, which runs the model (so that a
/// server can batch many): feed the tokens `new`/`step` return through `cache`, and hand the
/// last position's logits to `step`.
pub struct LlmDecoder<'a> {
    tokenizer: &'a LlmTokenizer,
    sampling: Sampling,
    rng: Rng,
    pub cache: LlamaCache,
    stream: StreamDecoder<'a>,
    ids: Vec<u32>,
    text: String,
    prompt_tokens: usize,
    context: usize,
    finish: Finish,
    started: Instant,
    first_step: Option<Instant>,
    /// Alternatives to record per token when log-probabilities are asked for.
    top_logprobs: Option<usize>,
    logprobs: Vec<TokenLogprob>,
    /// Structured output: tokens that cannot continue a valid document are masked.
    constraint: Option<TokenConstraint>,
}

/// A generated token's log-probability under the model (its logits, before temperature and
/// truncation), with the most likely alternatives when asked.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// (id, log-probability), most likely first.
    pub top: Vec<(u32, f32)>,
}

/// log softmax(logits)[id] for `id` and the `k` most likely ids.
fn token_logprob(logits: &[f32], id: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let log_sum = logits
        .iter()
        .map(|&v| ((v - max) as f64).exp())
        .sum::<f64>()
        .ln() as f32;
    let lp = |v: f32| v - max - log_sum;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &v) in logits.iter().enumerate() {
            if top.len() < k || v > top[top.len() - 1].1 {
                let at = top.partition_point(|&(_, t)| t >= v);
                top.insert(at, (i as u32, v));
                top.truncate(k);
            }
        }
    }
    TokenLogprob {
        id,
        logprob: lp(logits[id as usize]),
        top: top.into_iter().map(|(i, v)| (i, lp(v))).collect(),
    }
}

impl<'a> LlmDecoder<'a> {
    /// Checks the settings and the prompt's length; returns the decoder and the tokens to feed
    /// first (the prompt).
    pub fn new(
        model: &Llama,
        tokenizer: &'a LlmTokenizer,
        prompt: &[u32],
        s: &Sampling,
    ) -> Result<(Self, Vec<u32>)> {
        Self::with_cache(model, tokenizer, prompt, s, LlamaCache::new(&model.config))
    }

    /// As [`LlmDecoder::new`] with a cache that already holds the first `cache.len()` prompt
    /// positions (a shared prefix): only the rest of the prompt is fed.
    pub fn with_cache(
        model: &Llama,
        tokenizer: &'a LlmTokenizer,
        prompt: &[u32],
        s: &Sampling,
        cache: LlamaCache,
    ) -> Result<(Self, Vec<u32>)> {
        s.validate()?;
        if cache.len() >= prompt.len() {
            bail!(
                "the cache holds {} positions of a {}-token prompt: at least one must be fed",
                cache.len(),
                prompt.len()
            );
        }
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
        let feed = prompt[cache.len()..].to_vec();
        let decoder = LlmDecoder {
            cache,
            tokenizer,
            sampling: s.clone(),
            rng: Rng::new(s.seed),
            stream: tokenizer.stream(),
            ids: Vec::new(),
            text: String::new(),
            prompt_tokens: prompt.len(),
            context,
            finish: Finish::Length,
            started: Instant::now(),
            first_step: None,
            top_logprobs: None,
            logprobs: Vec::new(),
            constraint: None,
        };
        Ok((decoder, feed))
    }

    /// Records each generated token's log-probability and its `top` most likely alternatives.
    pub fn with_logprobs(mut self, top: usize) -> Self {
        self.top_logprobs = Some(top);
        self
    }

    /// Samples only tokens `constraint` allows; the generation stops when its document is
    /// complete.
    pub fn with_constraint(mut self, constraint: TokenConstraint) -> Self {
        self.constraint = Some(constraint);
        self
    }

    /// The log-probabilities recorded so far (see [`LlmDecoder::with_logprobs`]).
    pub fn logprobs(&self) -> &[TokenLogprob] {
        &self.logprobs
    }

    /// Takes the logits after the last fed token: samples the next token and passes any whole
    /// new characters to `on_text` (false from it stops). Returns the tokens to feed next, or
    /// `None` when the generation is over.
    pub fn step(
        &mut self,
        logits: &[f32],
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Option<Vec<u32>>> {
        self.first_step.get_or_insert_with(Instant::now);
        let s = &self.sampling;
        let next = match &mut self.constraint {
            Some(c) => {
                let mut masked = logits.to_vec();
                c.mask(&mut masked)?;
                let next = sample(&masked, s, &mut self.rng);
                c.accept(next)?;
                next
            }
            None => sample(logits, s, &mut self.rng),
        };
        if self.tokenizer.is_end_of_turn(next) {
            self.finish = Finish::Stop;
            return Ok(None);
        }
        self.ids.push(next);
        if let Some(k) = self.top_logprobs {
            self.logprobs.push(token_logprob(logits, next, k));
        }
        // Whole characters only: a byte-level token may end inside one.
        let piece = self.stream.push(next)?;
        if !piece.is_empty() {
            let before = self.text.len();
            self.text.push_str(&piece);
            if let Some(stop) = s.stop.iter().find(|st| self.text.contains(st.as_str())) {
                let cut = self.text.find(stop.as_str()).expect("contains");
                if cut > before {
                    on_text(&self.text[before..cut]);
                }
                self.text.truncate(cut);
                self.finish = Finish::Stop;
                return Ok(None);
            }
            if !on_text(&piece) {
                self.finish = Finish::Stop;
                return Ok(None);
            }
        }
        if self.constraint.as_ref().is_some_and(|c| c.is_stopped()) {
            self.finish = Finish::Stop;
            return Ok(None);
        }
        if self.ids.len() == s.max_tokens || self.cache.len() + 1 >= self.context {
            self.finish = Finish::Length;
            return Ok(None);
        }
        Ok(Some(vec![next]))
    }

    /// The generation so far (a cancelled one included).
    pub fn finish(self) -> LlmGeneration {
        let first = self.first_step.unwrap_or_else(Instant::now);
        LlmGeneration {
            text: self.text,
            ids: self.ids,
            prompt_tokens: self.prompt_tokens,
            finish: self.finish,
            prompt_secs: (first - self.started).as_secs_f64(),
            gen_secs: first.elapsed().as_secs_f64(),
            logprobs: self.logprobs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_logprobs_are_log_softmax_with_the_top_alternatives_in_order() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        let z: f64 = logits.iter().map(|&v| (v as f64).exp()).sum();
        let t = token_logprob(&logits, 2, 2);
        assert!((t.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(t.top.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2]);
        assert!((t.top[0].1 as f64 - (3.0 - z.ln())).abs() < 1e-6);
        assert!(token_logprob(&logits, 0, 0).top.is_empty());
        assert_eq!(token_logprob(&logits, 0, 9).top.len(), 4);
    }
}
