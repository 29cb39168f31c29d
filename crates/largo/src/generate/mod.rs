//! Text generation with a KV cache: temperature, top-k and top-p (nucleus) sampling, stop
//! strings, and text streamed as it is produced.

pub mod constrained;
pub mod llm;

use crate::data::text::{decode, encode};
use crate::models::TransformerLm;
use crate::nn::KvCache;
use crate::rng::Rng;
use crate::{bail, Result};
use tokenizers::Tokenizer;

#[derive(Clone, Debug)]
pub struct Sampling {
    pub max_tokens: usize,
    /// 0 means greedy (always the most likely token).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: all).
    pub top_p: f32,
    pub seed: u64,
    /// Stop (and cut the text) when one of these appears in the generated text.
    pub stop: Vec<String>,
}

impl Sampling {
    pub fn validate(&self) -> Result<()> {
        if self.max_tokens == 0 {
            bail!("--max-tokens must be ≥ 1");
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            bail!(
                "--temperature must be a number ≥ 0, got {}",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {}", self.top_p);
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// Tokens dropped from the front of a prompt longer than the context.
    pub truncated: usize,
    /// The stop string that ended the text; empty when `on_text` asked to stop.
    pub stopped_by: Option<String>,
}

/// Samples a token id from logits according to `s`. Without a nucleus (top_p = 1) the draw
/// walks the tokens in id order (no sort: any order draws from the same distribution); with
/// one, from the most likely down (ties: the lower id first), sorting only the few likely
/// tokens unless they do not decide.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut Rng) -> u32 {
    if s.temperature == 0.0 {
        return crate::tensor::argmax(logits) as u32;
    }
    let before = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = 1.0 / s.temperature;
    // Unnormalised probabilities; 0 outside the top k.
    let mut weights: Vec<f32> = logits
        .iter()
        .map(|&l| crate::backend::math::exp_fast((l - max) * inv_t))
        .collect();
    if s.top_k > 0 && s.top_k < logits.len() {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.select_nth_unstable_by(s.top_k - 1, before);
        for &i in &order[s.top_k..] {
            weights[i] = 0.0;
        }
    }
    let total = crate::backend::math::lanes_sum(&weights, |w| w);
    let u = rng.uniform();
    if s.top_p >= 1.0 {
        let target = u * total;
        let mut acc = 0.0;
        for (i, &w) in weights.iter().enumerate() {
            acc += w;
            if target < acc {
                return i as u32;
            }
        }
        // Rounding left the draw past the end: the last token that can be drawn.
        let last = weights.iter().rposition(|&w| w > 0.0);
        return last.unwrap_or_else(|| crate::tensor::argmax(logits)) as u32;
    }
    // The nucleus is nearly always among the tokens near the most likely one: those above
    // the cut are the head of the order.
    let cut = (-12f32).exp();
    let mut likely: Vec<usize> = (0..logits.len()).filter(|&i| weights[i] > cut).collect();
    if likely.len() < logits.len() {
        likely.sort_unstable_by(before);
        if let Some(i) = draw_sorted(&likely, false, &weights, total, s.top_p, u) {
            return i as u32;
        }
    }
    let mut order: Vec<usize> = (0..logits.len()).filter(|&i| weights[i] > 0.0).collect();
    if order.is_empty() {
        return crate::tensor::argmax(logits) as u32;
    }
    order.sort_unstable_by(before);
    draw_sorted(&order, true, &weights, total, s.top_p, u).expect("a complete order decides") as u32
}

/// The token the draw `u` picks walking `order` (the most likely first; `complete` when it
/// holds every candidate, whose weights sum to `total`): the nucleus is the shortest head
/// whose share reaches `top_p`. None when an incomplete head cannot decide.
fn draw_sorted(
    order: &[usize],
    complete: bool,
    weights: &[f32],
    total: f32,
    top_p: f32,
    u: f32,
) -> Option<usize> {
    let (mut kept, mut kept_sum) = (order.len(), total);
    let mut acc = 0.0;
    match order.iter().position(|&i| {
        acc += weights[i];
        acc >= top_p * total
    }) {
        Some(k) => (kept, kept_sum) = (k + 1, acc),
        None if !complete => return None,
        None => {}
    }
    let target = u * kept_sum;
    let mut acc = 0.0;
    for &i in &order[..kept] {
        acc += weights[i];
        if target < acc {
            return Some(i);
        }
    }
    // Rounding left the draw past the last kept token: it is the one.
    (kept > 0).then(|| order[kept - 1])
}

/// Generates after `prompt`, calling `on_text` with each new piece of text.
pub fn generate(
    model: &TransformerLm,
    tokenizer: &Tokenizer,
    prompt: &str,
    s: &Sampling,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation> {
    let (mut dec, mut feed) = Decoder::new(model, tokenizer, prompt, s)?;
    loop {
        let logits = model.forward_cached(&feed, &mut dec.cache)?;
        match dec.step(model, tokenizer, &logits, &mut on_text)? {
            Some(next) => feed = next,
            None => return Ok(dec.finish()),
        }
    }
}

/// One generation in progress: its sampler, tokens, text so far and KV cache. `generate` drives
/// one; the server drives many, feeding all of them through one batched forward per step.
pub struct Decoder {
    sampling: Sampling,
    rng: Rng,
    /// Prompt and generated tokens of the current context window.
    ids: Vec<u32>,
    generated: Vec<u32>,
    text: String,
    stopped_by: Option<String>,
    pub cache: Vec<KvCache>,
    prompt_tokens: usize,
    truncated: usize,
}

impl Decoder {
    /// Checks the settings, encodes the prompt (left-truncated to leave room for one new token)
    /// and returns the decoder with the tokens to feed first.
    pub fn new(
        model: &TransformerLm,
        tokenizer: &Tokenizer,
        prompt: &str,
        s: &Sampling,
    ) -> Result<(Self, Vec<u32>)> {
        s.validate()?;
        if prompt.is_empty() {
            bail!("the prompt is empty: give at least one character");
        }
        let mut ids = encode(tokenizer, prompt)?;
        if ids.is_empty() {
            bail!("the prompt encodes to no tokens");
        }
        let context = model.spec.block_size;
        let truncated = ids.len().saturating_sub(context - 1);
        ids.drain(..truncated);
        let feed = ids.clone();
        let dec = Decoder {
            sampling: s.clone(),
            rng: Rng::new(s.seed),
            prompt_tokens: ids.len(),
            ids,
            generated: Vec::new(),
            text: String::new(),
            stopped_by: None,
            cache: model.new_cache(),
            truncated,
        };
        Ok((dec, feed))
    }

    /// Takes the logits after the last fed token: samples the next token and passes any whole
    /// new characters to `on_text` (false from it stops the generation). Returns the tokens to
    /// feed next, or `None` when the generation is over.
    pub fn step(
        &mut self,
        model: &TransformerLm,
        tokenizer: &Tokenizer,
        logits: &[f32],
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Option<Vec<u32>>> {
        let s = &self.sampling;
        let next = sample(logits, s, &mut self.rng);
        self.generated.push(next);
        let full = decode(tokenizer, &self.generated)?;
        // Emit only whole characters (a byte-level token may end inside one).
        if full.len() > self.text.len() && !full.ends_with('\u{fffd}') {
            if let Some(stop) = s.stop.iter().find(|st| full.contains(st.as_str())) {
                let cut = full.find(stop.as_str()).expect("contains");
                if cut > self.text.len() {
                    on_text(&full[self.text.len()..cut]);
                }
                self.text = full[..cut].to_string();
                self.stopped_by = Some(stop.clone());
                return Ok(None);
            }
            let go_on = on_text(&full[self.text.len()..]);
            self.text = full;
            if !go_on {
                self.stopped_by = Some(String::new());
                return Ok(None);
            }
        }
        if self.generated.len() == s.max_tokens {
            return Ok(None);
        }
        self.ids.push(next);
        let context = model.spec.block_size;
        if self.cache[0].len >= context {
            // Context full: start a new cache from the last half of the window.
            let keep = context / 2;
            self.ids.drain(..self.ids.len() - keep);
            self.cache = model.new_cache();
            return Ok(Some(self.ids.clone()));
        }
        Ok(Some(vec![next]))
    }

    pub fn new_tokens(&self) -> usize {
        self.generated.len()
    }

    pub fn finish(self) -> Generation {
        Generation {
            text: self.text,
            prompt_tokens: self.prompt_tokens,
            new_tokens: self.generated.len(),
            truncated: self.truncated,
            stopped_by: self.stopped_by,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f32, top_k: usize, top_p: f32) -> Sampling {
        Sampling {
            max_tokens: 1,
            temperature,
            top_k,
            top_p,
            seed: 0,
            stop: vec![],
        }
    }

    #[test]
    fn sampling_respects_greedy_top_k_and_top_p() {
        let logits = [1.0, 3.0, 2.0, 0.5];
        let mut rng = Rng::new(1);
        assert_eq!(sample(&logits, &cfg(0.0, 0, 1.0), &mut rng), 1);
        for _ in 0..200 {
            let k2 = sample(&logits, &cfg(1.0, 2, 1.0), &mut rng);
            assert!(k2 == 1 || k2 == 2);
            // p(1) ≈ 0.61 alone reaches 0.5: nucleus of one token.
            assert_eq!(sample(&logits, &cfg(1.0, 0, 0.5), &mut rng), 1);
        }
        let counts = (0..4000).fold([0usize; 4], |mut c, _| {
            c[sample(&logits, &cfg(1.0, 0, 1.0), &mut rng) as usize] += 1;
            c
        });
        assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
        assert!(counts[1] > counts[2] && counts[2] > counts[0] && counts[0] > counts[3]);
    }

    #[test]
    fn sampling_a_large_vocabulary_follows_the_softmax_and_the_nucleus() {
        // 2,000 tokens: two likely ones and a long flat tail, which holds 0.3 % of the mass at
        // temperature 1 (below the sorting cut: drawn by the full sort) and 65 % at 2.
        let mut logits = vec![-13.0f32; 2000];
        logits[700] = 0.0;
        logits[3] = -1.0;
        let mut rng = Rng::new(9);
        for t in [1.0f32, 2.0] {
            let w = |l: f32| ((l as f64) / t as f64).exp();
            let z = w(0.0) + w(-1.0) + 1998.0 * w(-13.0);
            let n = 40_000;
            let mut c = [0usize; 3];
            for _ in 0..n {
                match sample(&logits, &cfg(t, 0, 1.0), &mut rng) {
                    700 => c[0] += 1,
                    3 => c[1] += 1,
                    _ => c[2] += 1,
                }
            }
            for (got, want) in c
                .iter()
                .zip([w(0.0) / z, w(-1.0) / z, 1998.0 * w(-13.0) / z])
            {
                let got = *got as f64 / n as f64;
                assert!(
                    (got - want).abs() < 0.01,
                    "temperature {t}: {got} vs {want}"
                );
            }
        }
        // A nucleus of 0.9 at temperature 1 keeps the two likely tokens only.
        for _ in 0..500 {
            let i = sample(&logits, &cfg(1.0, 0, 0.9), &mut rng);
            assert!(i == 700 || i == 3, "{i}");
        }
    }

    #[test]
    fn bad_sampling_settings_are_rejected() {
        let mut s = cfg(0.8, 0, 0.9);
        s.max_tokens = 0;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--max-tokens"));
        assert!(cfg(f32::NAN, 0, 1.0).validate().is_err());
        assert!(cfg(-1.0, 0, 1.0).validate().is_err());
        assert!(cfg(1.0, 0, 0.0).validate().is_err());
    }
}
