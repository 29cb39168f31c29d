//! Constrained decoding for structured output: at each step the tokens that cannot continue a
//! document valid under a JSON Schema are masked out of the logits (`llguidance`, the engine
//! vLLM, SGLang, llama.cpp and mistral.rs use), so a generation that stops by itself has
//! produced a valid document. One [`JsonConstraints`] per model (its vocabulary as bytes, in a
//! token trie); one [`TokenConstraint`] per request.

use crate::data::llm_tokenizer::LlmTokenizer;
use crate::{Error, Result};
use llguidance::api::TopLevelGrammar;
use llguidance::earley::SlicedBiasComputer;
use llguidance::toktrie::{ApproximateTokEnv, InferenceCapabilities, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;
use std::sync::Arc;

/// A model's vocabulary ready for grammars.
pub struct JsonConstraints {
    factory: ParserFactory,
    vocab: usize,
}

impl JsonConstraints {
    /// The token trie of `tokenizer` (token bytes from its `tokenizer.json` form), for a model
    /// of `vocab` logits; the first end-of-turn token is the one a finished document allows.
    pub fn new(tokenizer: &LlmTokenizer, vocab: usize) -> Result<Self> {
        let bad = |e: String| Error::Invalid(format!("structured output: {e}"));
        let json = tokenizer
            .tokenizer
            .to_string(false)
            .map_err(|e| bad(e.to_string()))?;
        let value: Value = serde_json::from_str(&json).map_err(|e| bad(e.to_string()))?;
        let mut words =
            llguidance::token_bytes_from_tokenizer_json(&value).map_err(|e| bad(e.to_string()))?;
        if words.len() > vocab {
            return Err(bad(format!(
                "the tokenizer has {} tokens, the model {vocab} logits",
                words.len()
            )));
        }
        words.resize(vocab, Vec::new());
        let end = tokenizer
            .eot
            .first()
            .copied()
            .or(tokenizer.eos)
            .ok_or_else(|| bad("the tokenizer has no end-of-turn or EOS token".into()))?;
        let trie = TokTrie::from(&TokRxInfo::new(vocab as u32, end), &words);
        let env: llguidance::toktrie::TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new(
            &env,
            InferenceCapabilities::default(),
            &SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| bad(e.to_string()))?;
        factory.quiet();
        Ok(JsonConstraints { factory, vocab })
    }

    /// A constraint to documents valid under `schema`; an invalid or unsupported schema is an
    /// error with llguidance's message (it names the keyword).
    pub fn for_schema(&self, schema: &Value) -> Result<TokenConstraint> {
        // Separators ", " and ": " and no other whitespace between tokens (unless the schema
        // sets its own `x-guidance`): a model cannot wander off into endless blank space.
        let mut schema = schema.clone();
        if let Value::Object(o) = &mut schema {
            o.entry("x-guidance").or_insert_with(|| {
                serde_json::json!({"whitespace_flexible": false, "item_separator": ", ",
                                   "key_separator": ": "})
            });
        }
        let grammar = TopLevelGrammar::from_json_schema(schema);
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| Error::Invalid(format!("the JSON schema: {e}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::Invalid(format!("the JSON schema: {e}")));
        }
        Ok(TokenConstraint {
            matcher,
            vocab: self.vocab,
        })
    }
}

/// One generation's constraint: [`TokenConstraint::mask`] before sampling,
/// [`TokenConstraint::accept`] after.
pub struct TokenConstraint {
    matcher: Matcher,
    vocab: usize,
}

impl TokenConstraint {
    /// Sets the logits of every token that cannot come next to −∞.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let allowed = self
            .matcher
            .compute_mask()
            .map_err(|e| Error::Invalid(format!("structured output: {e}")))?;
        for (id, l) in logits.iter_mut().enumerate().take(self.vocab) {
            if !allowed.is_allowed(id as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances past the sampled token.
    pub fn accept(&mut self, id: u32) -> Result<()> {
        self.matcher
            .consume_token(id)
            .map_err(|e| Error::Invalid(format!("structured output: {e}")))
    }

    /// Whether the document is complete (nothing may follow).
    pub fn is_stopped(&self) -> bool {
        self.matcher.is_stopped()
    }
}
