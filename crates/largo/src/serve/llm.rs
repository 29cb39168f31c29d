//! Pretrained LLMs in `largo serve`: `POST /v1/chat/completions` (the model's own chat
//! template; OpenAI's request fields, response and streamed chunk formats, log-probabilities)
//! and `/v1/completions`. One worker thread per model advances every active generation in one
//! batched forward pass per step (continuous batching): a new request's prompt joins as its
//! prefill, a finished or cancelled one leaves. The quantised kernels give each row the same
//! bits whatever else is in the batch, so a greedy answer is the same alone or batched.

use super::api::{bool_field, integer_field, number_field, strings_field, ApiError};
use super::batching::{BatchStats, BATCH_BUCKETS};
use super::{
    admit, model_named, rand_seed, unix_time, within_timeout, wrong_route, Served, Shared,
};
use crate::data::chat_template::{ChatMessage, ChatTemplate};
use crate::data::llm_tokenizer::LlmTokenizer;
use crate::generate::constrained::{JsonConstraints, TokenConstraint};
use crate::generate::llm::{Finish, LlmDecoder, LlmGeneration, TokenLogprob};
use crate::generate::Sampling;
use crate::models::llama::{Llama, LlamaConfig};
use crate::models::llama_cache::{KvPool, KvType, LlamaCache, SharedBlocks, BLOCK_TOKENS};
use crate::models::llama_load::LlmFiles;
use crate::Result;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use tokio::sync::{mpsc::UnboundedSender, oneshot};

/// A pretrained decoder with its tokenizer and chat template.
pub struct LlmServed {
    pub model: Llama,
    pub tokenizer: LlmTokenizer,
    pub template: Option<ChatTemplate>,
    /// Structured output (`response_format`), or why this tokenizer cannot have it.
    pub constraints: std::result::Result<JsonConstraints, String>,
}

impl LlmServed {
    /// Loads the model (quantised GGUF weights stay quantised) and its tokenizer and template.
    pub fn load(files: &LlmFiles) -> Result<Self> {
        let model = files.load(false)?;
        let tokenizer = files.load_tokenizer()?;
        let template = match &tokenizer.chat_template {
            Some(source) => Some(ChatTemplate::with_name(
                format!("the chat template of {}", files.path().display()),
                source.clone(),
            )?),
            None => None,
        };
        let constraints =
            JsonConstraints::new(&tokenizer, model.config.vocab_size).map_err(|e| e.to_string());
        Ok(LlmServed {
            model,
            tokenizer,
            template,
            constraints,
        })
    }
}

/// New text of a generation, with the log-probabilities of the tokens it completes (when
/// asked for).
pub struct Piece {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
}

/// A generation request handed to a model's worker: the prompt already tokenised.
pub struct LlmJob {
    pub prompt: Vec<u32>,
    pub sampling: Sampling,
    /// Some(k): record each token's log-probability and its k most likely alternatives.
    pub top_logprobs: Option<usize>,
    /// Structured output: the document the answer must be.
    pub constraint: Option<TokenConstraint>,
    /// Text pieces as they are produced, for a streamed request.
    pub pieces: Option<UnboundedSender<Piece>>,
    /// Set when the client went away or the request timed out: the worker drops the job.
    pub cancel: Arc<AtomicBool>,
    pub done: oneshot::Sender<std::result::Result<LlmGeneration, String>>,
}

struct Active<'a> {
    job: LlmJob,
    decoder: LlmDecoder<'a>,
    feed: Vec<u32>,
    /// Log-probabilities already sent with a piece.
    sent: usize,
    /// Pool blocks set aside for this generation's own positions (its worst case), and the
    /// positions it found in the prefix cache.
    reserved: usize,
    reused: usize,
    /// The prompt, until its prefill is done (its full blocks are offered to the prefix
    /// cache chunk by chunk).
    prompt: Option<Vec<u32>>,
    /// Prompt tokens not fed yet.
    pending: Vec<u32>,
    /// Arrival order: prompts are fed oldest first.
    order: u64,
}

impl Active<'_> {
    /// Reserved blocks not allocated yet.
    fn outstanding(&self, cfg: &LlamaConfig) -> usize {
        let own = KvPool::blocks_for(cfg, self.decoder.cache.len())
            - KvPool::blocks_for(cfg, self.reused);
        self.reserved.saturating_sub(own)
    }
}

/// Full prompt blocks kept after their sequence is done, found again by the hash of the
/// tokens up to their end: a shared system prompt or a conversation's earlier turns are not
/// recomputed. Entries hold blocks in the pool and are evicted least recently used first.
#[derive(Default)]
struct PrefixCache {
    entries: std::collections::HashMap<u64, PrefixEntry>,
    clock: u64,
}

struct PrefixEntry {
    parent: u64,
    tokens: Vec<u32>,
    blocks: Vec<SharedBlocks>,
    depth: usize,
    last_used: u64,
}

/// The chained hash of block `b` of `tokens` given its parent's.
fn block_hash(parent: u64, block: &[u32]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    block.hash(&mut h);
    h.finish()
}

impl PrefixCache {
    /// The cached blocks of the longest run of `prompt`'s full blocks from its start, leaving
    /// at least its last token to run.
    fn lookup(&mut self, prompt: &[u32]) -> Vec<Vec<SharedBlocks>> {
        self.clock += 1;
        let mut out = Vec::new();
        let mut parent = 0;
        for (b, block) in prompt.chunks_exact(BLOCK_TOKENS).enumerate() {
            if (b + 1) * BLOCK_TOKENS >= prompt.len() {
                break;
            }
            let h = block_hash(parent, block);
            match self.entries.get_mut(&h) {
                Some(e) if e.parent == parent && e.tokens == block => {
                    e.last_used = self.clock;
                    out.push(e.blocks.clone());
                }
                _ => break,
            }
            parent = h;
        }
        out
    }

    /// Offers the full blocks of `prompt` that `cache` holds.
    fn insert(&mut self, prompt: &[u32], cache: &LlamaCache) {
        self.clock += 1;
        let mut parent = 0;
        for (b, block) in prompt.chunks_exact(BLOCK_TOKENS).enumerate() {
            let Some(blocks) = cache.full_block(b) else {
                break;
            };
            let h = block_hash(parent, block);
            let clock = self.clock;
            self.entries.entry(h).or_insert_with(|| PrefixEntry {
                parent,
                tokens: block.to_vec(),
                blocks,
                depth: b,
                last_used: clock,
            });
            parent = h;
        }
    }

    /// Drops the least recently used entry (the deepest of equals first); false when empty.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .entries
            .iter()
            .min_by_key(|(_, e)| (e.last_used, std::cmp::Reverse(e.depth)))
            .map(|(&h, _)| h);
        victim.is_some_and(|h| self.entries.remove(&h).is_some())
    }
}

/// Prompt tokens fed per step at most (all sequences together; one chunk always goes).
const PREFILL_BUDGET: usize = 512;
/// Prompts are fed in chunks ending at multiples of this many positions.
const PREFILL_CHUNK: usize = 256;

/// Starts the generation worker of a pretrained LLM (`Served::Llm`) with a KV-cache pool of
/// `kv_bytes`; jobs go into the returned sender. The worker ends when every sender is dropped
/// and its last generation is done.
pub fn spawn_llm_decoder(
    served: Arc<Served>,
    max_batch: usize,
    kv_bytes: usize,
    kv_type: KvType,
    stats: Arc<BatchStats>,
) -> Sender<LlmJob> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Served::Llm(llm) = served.as_ref() {
            let pool = KvPool::new(&llm.model.config, kv_bytes, kv_type);
            stats
                .kv_capacity_bytes
                .store((pool.capacity * pool.block_bytes) as u64, Ordering::Relaxed);
            decode_loop(llm, &rx, max_batch.max(1), &pool, &stats);
        }
    });
    tx
}

fn decode_loop<'a>(
    llm: &'a LlmServed,
    rx: &Receiver<LlmJob>,
    max_batch: usize,
    pool: &Arc<KvPool>,
    stats: &BatchStats,
) {
    let (model, tokenizer) = (&llm.model, &llm.tokenizer);
    let cfg = &model.config;
    let mut active: Vec<Active<'a>> = Vec::new();
    let mut waiting: std::collections::VecDeque<LlmJob> = Default::default();
    let mut prefixes = PrefixCache::default();
    let mut arrivals = 0u64;
    let mb = |blocks: usize| (blocks * pool.block_bytes) as f64 / 1e6;
    loop {
        // Idle: sleep until a request comes. Busy: take what has arrived.
        if active.is_empty() && waiting.is_empty() {
            match rx.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            waiting.push_back(job);
        }
        waiting.retain(|j| !j.cancel.load(Ordering::Relaxed));
        // Start waiting jobs in order while the batch and the pool have room: each sets aside
        // its worst case (prompt + max_tokens) less what it finds in the prefix cache.
        while active.len() < max_batch {
            let Some(job) = waiting.front() else { break };
            let positions =
                (job.prompt.len() + job.sampling.max_tokens).min(cfg.max_position_embeddings);
            let need_all = KvPool::blocks_for(cfg, positions);
            if need_all > pool.capacity {
                let job = waiting.pop_front().expect("front");
                let _ = job.done.send(Err(format!(
                    "the request needs {:.1} MB of KV cache ({positions} positions), more than the server's pool of {:.1} MB (--kv-cache-mb): lower max_tokens or shorten the prompt",
                    mb(need_all),
                    mb(pool.capacity)
                )));
                continue;
            }
            let prefix = prefixes.lookup(&job.prompt);
            let reused = prefix.len() * BLOCK_TOKENS;
            let need = need_all - KvPool::blocks_for(cfg, reused);
            let outstanding: usize = active.iter().map(|a| a.outstanding(cfg)).sum();
            if outstanding + need > pool.free_blocks() {
                // Cached prefixes give way first; then the job waits for running ones.
                drop(prefix);
                if prefixes.evict_one() {
                    continue;
                }
                break;
            }
            let job = waiting.pop_front().expect("front");
            stats
                .prefix_lookup_tokens
                .fetch_add(job.prompt.len() as u64, Ordering::Relaxed);
            stats
                .prefix_hit_tokens
                .fetch_add(reused as u64, Ordering::Relaxed);
            let cache = LlamaCache::with_prefix(cfg, pool, &prefix);
            match LlmDecoder::with_cache(model, tokenizer, &job.prompt, &job.sampling, cache) {
                Ok((decoder, feed)) => {
                    let decoder = match job.top_logprobs {
                        Some(k) => decoder.with_logprobs(k),
                        None => decoder,
                    };
                    let mut job = job;
                    let decoder = match job.constraint.take() {
                        Some(c) => decoder.with_constraint(c),
                        None => decoder,
                    };
                    let prompt = Some(job.prompt.clone());
                    active.push(Active {
                        job,
                        decoder,
                        feed: Vec::new(),
                        sent: 0,
                        reserved: need,
                        reused,
                        prompt,
                        pending: feed,
                        order: arrivals,
                    });
                    arrivals += 1;
                }
                Err(e) => {
                    let _ = job.done.send(Err(e.to_string()));
                }
            }
        }
        // Cancelled generations leave with what they have.
        let (gone, kept): (Vec<Active>, Vec<Active>) = active
            .drain(..)
            .partition(|a| a.job.cancel.load(Ordering::Relaxed));
        active = kept;
        for a in gone {
            let _ = a.job.done.send(Ok(a.decoder.finish()));
        }
        if active.is_empty() {
            if !waiting.is_empty() {
                // Nothing runs and the first waiting job still does not fit: only cached
                // prefixes can be holding the pool, and they were evicted above; wait for news.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            continue;
        }
        stats.running.store(active.len() as u64, Ordering::Relaxed);
        // Every decoding sequence advances; prompts advance a chunk at a time within a budget
        // of prompt tokens per step (oldest first), so a wave of new requests does not stall
        // the others for a whole prefill. Chunks end at fixed positions (multiples of
        // PREFILL_CHUNK), so a sequence is computed the same way whatever runs beside it.
        let mut budget = PREFILL_BUDGET;
        for a in active.iter_mut().filter(|a| !a.pending.is_empty()) {
            if budget == 0 {
                break;
            }
            if a.decoder.cache.len() == a.reused {
                // Not started yet: an earlier prompt may have cached more of this one since.
                let prompt = a.prompt.as_deref().unwrap_or_default();
                let prefix = prefixes.lookup(prompt);
                let hit = prefix.len() * BLOCK_TOKENS;
                if hit > a.reused {
                    a.decoder.cache = LlamaCache::with_prefix(cfg, pool, &prefix);
                    a.pending = prompt[hit..].to_vec();
                    stats
                        .prefix_hit_tokens
                        .fetch_add((hit - a.reused) as u64, Ordering::Relaxed);
                    a.reused = hit;
                }
            }
            let at = a.decoder.cache.len();
            let take = ((at / PREFILL_CHUNK + 1) * PREFILL_CHUNK - at).min(a.pending.len());
            if take > budget && budget < PREFILL_BUDGET {
                continue;
            }
            budget = budget.saturating_sub(take);
            a.feed = a.pending.drain(..take).collect();
        }
        let (mut running, idle): (Vec<Active>, Vec<Active>) =
            active.drain(..).partition(|a| !a.feed.is_empty());
        stats.decode.observe(running.len() as f64, BATCH_BUCKETS);
        let feeds: Vec<Vec<u32>> = running
            .iter_mut()
            .map(|a| std::mem::take(&mut a.feed))
            .collect();
        let seqs: Vec<&[u32]> = feeds.iter().map(Vec::as_slice).collect();
        let mut caches: Vec<&mut LlamaCache> =
            running.iter_mut().map(|a| &mut a.decoder.cache).collect();
        let logits = match model.forward_batch(&seqs, &mut caches, false) {
            Ok(l) => l,
            Err(e) => {
                for a in running.into_iter().chain(idle) {
                    let _ = a.job.done.send(Err(e.to_string()));
                }
                continue;
            }
        };
        let mut next = idle;
        for (mut a, logits) in running.into_iter().zip(logits) {
            if let Some(prompt) = &a.prompt {
                prefixes.insert(prompt, &a.decoder.cache);
                if !a.pending.is_empty() {
                    // More of the prompt to feed before anything is sampled.
                    next.push(a);
                    continue;
                }
                a.prompt = None;
            }
            let (pieces, cancel) = (a.job.pieces.as_ref(), &a.job.cancel);
            let mut texts = Vec::new();
            // A closed stream means the client went away: stop generating for it.
            let on_text = |piece: &str| {
                texts.push(piece.to_string());
                pieces.is_none_or(|tx| !tx.is_closed()) && !cancel.load(Ordering::Relaxed)
            };
            let stepped = a.decoder.step(&logits, on_text);
            if let Some(tx) = pieces {
                for text in texts {
                    let logprobs = a.decoder.logprobs()[a.sent..].to_vec();
                    a.sent += logprobs.len();
                    let _ = tx.send(Piece { text, logprobs });
                }
            }
            match stepped {
                Ok(Some(feed)) => {
                    a.feed = feed;
                    next.push(a);
                }
                Ok(None) => {
                    let _ = a.job.done.send(Ok(a.decoder.finish()));
                }
                Err(e) => {
                    let _ = a.job.done.send(Err(e.to_string()));
                }
            }
        }
        next.sort_by_key(|a| a.order);
        active = next;
        stats.running.store(active.len() as u64, Ordering::Relaxed);
        let used = (pool.used() * pool.block_bytes) as u64;
        stats.kv_used_bytes.store(used, Ordering::Relaxed);
        stats.kv_peak_bytes.fetch_max(used, Ordering::Relaxed);
    }
}

/// An invalid-request error whose `param` is built (e.g. `messages[2].role`).
fn invalid_at(message: impl Into<String>, param: impl Into<String>) -> ApiError {
    let mut e = ApiError::invalid(message, None);
    e.param = Some(param.into());
    e
}

/// The roles a chat message may have (`developer` is taken as `system`, as OpenAI does).
const ROLES: &str = "system, developer, user, assistant, tool";

/// `messages`: a non-empty list of `{role, content}`, content a string or a list of
/// `{"type": "text", "text": …}` parts (an assistant's may be null).
fn parse_messages(o: &Map<String, Value>) -> std::result::Result<Vec<ChatMessage>, ApiError> {
    let list = match o.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "'messages' is required",
                Some("messages"),
            ))
        }
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid("'messages' is empty", Some("messages")))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "'messages' must be a list of {role, content} objects",
                Some("messages"),
            ))
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Value::Object(m) = m else {
            return Err(invalid_at(
                format!("{at} must be an object with 'role' and 'content'"),
                at,
            ));
        };
        let role = match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => "system",
            Some("user") => "user",
            Some("assistant") => "assistant",
            Some("tool") => "tool",
            Some(other) => {
                return Err(invalid_at(
                    format!("{at}.role '{other}' is not supported: use one of {ROLES}"),
                    format!("{at}.role"),
                ))
            }
            None => {
                return Err(invalid_at(
                    format!("{at}.role must be a string: one of {ROLES}"),
                    format!("{at}.role"),
                ))
            }
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            // An assistant turn that called tools: the calls, as the model wrote them.
            None | Some(Value::Null) if role == "assistant" => m
                .get("tool_calls")
                .and_then(Value::as_array)
                .map(|calls| {
                    calls
                        .iter()
                        .map(|c| {
                            let f = &c["function"];
                            let args: Value = f["arguments"]
                                .as_str()
                                .and_then(|a| serde_json::from_str(a).ok())
                                .unwrap_or(Value::Null);
                            json!({"name": f["name"], "arguments": args}).to_string()
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => text.push_str(t),
                        _ => {
                            return Err(invalid_at(
                                format!(
                                    "{at}.content[{j}] must be {{\"type\": \"text\", \"text\": …}}: only text parts are supported"
                                ),
                                format!("{at}.content"),
                            ))
                        }
                    }
                }
                text
            }
            _ => {
                return Err(invalid_at(
                    format!("{at}.content must be a string or a list of text parts"),
                    format!("{at}.content"),
                ))
            }
        };
        out.push(ChatMessage::new(role, content));
    }
    Ok(out)
}

/// The sampling fields shared by both routes; `max_tokens` (or `max_completion_tokens`)
/// defaults to the server's limit.
fn parse_sampling(
    o: &Map<String, Value>,
    max_tokens: u64,
    default_max: u64,
) -> std::result::Result<Sampling, ApiError> {
    let key = if o.get("max_completion_tokens").is_some_and(|v| !v.is_null()) {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let sampling = Sampling {
        max_tokens: integer_field(o, key, default_max, 1, max_tokens)? as usize,
        temperature: number_field(o, "temperature", 1.0, 0.0, 2.0)? as f32,
        top_k: 0,
        top_p: number_field(o, "top_p", 1.0, 0.0, 1.0)? as f32,
        seed: integer_field(o, "seed", rand_seed(), 0, u64::MAX)?,
        stop: strings_field(o, "stop")?.unwrap_or_default(),
    };
    if sampling.top_p == 0.0 {
        return Err(ApiError::invalid("'top_p' must be > 0", Some("top_p")));
    }
    if sampling.stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "'stop' strings must not be empty",
            Some("stop"),
        ));
    }
    match o.get("n") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64() == Some(1) => {}
        Some(v) => {
            return Err(ApiError::invalid(
                format!("'n' = {v}: only one choice per request (n = 1) is supported"),
                Some("n"),
            ))
        }
    }
    Ok(sampling)
}

/// `logprobs` (bool) and `top_logprobs` (0–20, needs `logprobs`).
fn parse_logprobs(o: &Map<String, Value>) -> std::result::Result<Option<usize>, ApiError> {
    let on = bool_field(o, "logprobs")?;
    let top = integer_field(o, "top_logprobs", 0, 0, 20)? as usize;
    if top > 0 && !on {
        return Err(ApiError::invalid(
            "'top_logprobs' needs 'logprobs': true",
            Some("top_logprobs"),
        ));
    }
    Ok(on.then_some(top))
}

/// `response_format`: `{"type": "text"}` (or absent), `{"type": "json_object"}`, or
/// `{"type": "json_schema", "json_schema": {"schema": {…}}}`.
fn parse_response_format(
    o: &Map<String, Value>,
    llm: &LlmServed,
) -> std::result::Result<Option<TokenConstraint>, ApiError> {
    let schema = match o.get("response_format") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(f)) => match f.get("type").and_then(Value::as_str) {
            Some("text") => return Ok(None),
            Some("json_object") => json!({"type": "object"}),
            Some("json_schema") => match f.get("json_schema").and_then(|j| j.get("schema")) {
                Some(s @ (Value::Object(_) | Value::Bool(_))) => s.clone(),
                _ => {
                    return Err(invalid_at(
                        "response_format.json_schema.schema must be a JSON Schema object",
                        "response_format.json_schema.schema",
                    ))
                }
            },
            _ => {
                return Err(invalid_at(
                    "response_format.type must be \"text\", \"json_object\" or \"json_schema\"",
                    "response_format.type",
                ))
            }
        },
        Some(_) => {
            return Err(ApiError::invalid(
                "'response_format' must be an object",
                Some("response_format"),
            ))
        }
    };
    let constraints = llm.constraints.as_ref().map_err(|why| {
        ApiError::invalid(
            format!("structured output is not available for this model: {why}"),
            Some("response_format"),
        )
    })?;
    constraints
        .for_schema(&schema)
        .map(Some)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("response_format")))
}

/// OpenAI's `logprobs.content` entries for these tokens.
fn logprobs_json(tokenizer: &LlmTokenizer, lps: &[TokenLogprob]) -> Value {
    let token = |id: u32| {
        let text = tokenizer.decode(&[id]).unwrap_or_default();
        let bytes: Vec<u8> = text.as_bytes().to_vec();
        (text, bytes)
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|t| {
            let (text, bytes) = token(t.id);
            let top: Vec<Value> = t
                .top
                .iter()
                .map(|&(id, lp)| {
                    let (text, bytes) = token(id);
                    json!({"token": text, "logprob": lp, "bytes": bytes})
                })
                .collect();
            json!({"token": text, "logprob": t.logprob, "bytes": bytes, "top_logprobs": top})
        })
        .collect();
    json!({ "content": content })
}

/// A chat answer: text, or tool calls (OpenAI's `tool_calls` entries).
enum Answer {
    Text,
    Calls(Vec<Value>),
}

/// Whether `g` is a call of one of `tools` (a forced call always is, unless cut short).
fn answer(tools: &Option<Tools>, g: &LlmGeneration, id: &str) -> Answer {
    let Some((name, args)) = tools.as_ref().and_then(|t| t.call_in(&g.text)) else {
        return Answer::Text;
    };
    Answer::Calls(vec![json!({
        "id": format!("call_{}", id.rsplit('-').next().unwrap_or("0")),
        "type": "function",
        "function": {"name": name, "arguments": args.to_string()},
    })])
}

fn finish_reason(g: &LlmGeneration) -> &'static str {
    match g.finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

fn usage(g: &LlmGeneration) -> Value {
    json!({"prompt_tokens": g.prompt_tokens, "completion_tokens": g.ids.len(),
           "total_tokens": g.prompt_tokens + g.ids.len()})
}

/// Which route a request came by (the response shapes differ), with a chat's tools.
enum Route {
    Chat(Option<Tools>),
    Completions,
}

/// A request's tools (`tools` + `tool_choice`).
struct Tools {
    /// The `tools` list as given (each `{"type": "function", "function": {name, …}}`).
    list: Vec<Value>,
    names: Vec<String>,
    /// None: the model may answer in text ("auto"); Some: it must call this tool, or any of
    /// them (`None` inside).
    forced: Option<Option<String>>,
}

/// `tools` and `tool_choice` ("none", "auto", "required", or `{"type": "function",
/// "function": {"name": …}}`).
fn parse_tools(o: &Map<String, Value>) -> std::result::Result<Option<Tools>, ApiError> {
    let list =
        match o.get("tools") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(l)) if !l.is_empty() => l.clone(),
            Some(_) => return Err(ApiError::invalid(
                "'tools' must be a non-empty list of {\"type\": \"function\", \"function\": {…}}",
                Some("tools"),
            )),
        };
    let mut names = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let f = &t["function"];
        let name = f["name"].as_str().filter(|n| !n.is_empty());
        match (t["type"].as_str(), name) {
            (Some("function"), Some(n)) => names.push(n.to_string()),
            _ => {
                return Err(invalid_at(
                    format!("tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": …, \"parameters\": …}}}}"),
                    format!("tools[{i}]"),
                ))
            }
        }
        if !matches!(f.get("parameters"), None | Some(Value::Object(_))) {
            return Err(invalid_at(
                format!("tools[{i}].function.parameters must be a JSON Schema object"),
                format!("tools[{i}].function.parameters"),
            ));
        }
    }
    let forced = match o.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) if c == "auto" => None,
        Some(Value::String(c)) if c == "none" => return Ok(None),
        Some(Value::String(c)) if c == "required" => Some(None),
        Some(Value::Object(c)) => match c.get("function").and_then(|f| f["name"].as_str()) {
            Some(n) if names.iter().any(|m| m == n) => Some(Some(n.to_string())),
            Some(n) => {
                return Err(ApiError::invalid(
                    format!("tool_choice names '{n}', which is not in 'tools'"),
                    Some("tool_choice"),
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    "tool_choice must be {\"type\": \"function\", \"function\": {\"name\": …}}",
                    Some("tool_choice"),
                ))
            }
        },
        Some(_) => {
            return Err(ApiError::invalid(
                "tool_choice must be \"none\", \"auto\", \"required\" or a named function",
                Some("tool_choice"),
            ))
        }
    };
    Ok(Some(Tools {
        list,
        names,
        forced,
    }))
}

impl Tools {
    /// The JSON Schema of a call: `{"name": …, "arguments": {…}}` for the forced tool, or for
    /// any of them.
    fn call_schema(&self) -> Value {
        let one = |t: &Value| {
            let f = &t["function"];
            let params = f
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            json!({"type": "object",
                   "properties": {"name": {"const": f["name"]}, "arguments": params},
                   "required": ["name", "arguments"], "additionalProperties": false})
        };
        match &self.forced {
            Some(Some(name)) => one(self
                .list
                .iter()
                .find(|t| t["function"]["name"] == name.as_str())
                .expect("checked in parse_tools")),
            _ => json!({"anyOf": self.list.iter().map(one).collect::<Vec<_>>()}),
        }
    }

    /// The system preamble for a template without a `tools` variable.
    fn preamble(&self) -> String {
        let listed: Vec<String> = self
            .list
            .iter()
            .map(|t| t["function"].to_string())
            .collect();
        format!(
            "You can call these functions. To call one, answer with only a JSON object \
             {{\"name\": <function name>, \"arguments\": <its arguments>}}.\n{}",
            listed.join("\n")
        )
    }

    /// The call in `text`, when it is one (`{"name": <a tool>, "arguments": {…}}`).
    fn call_in(&self, text: &str) -> Option<(String, Value)> {
        let v: Value = serde_json::from_str(text.trim()).ok()?;
        let name = v["name"].as_str()?;
        let args = v.get("arguments").filter(|a| a.is_object())?;
        self.names
            .iter()
            .any(|n| n == name)
            .then(|| (name.to_string(), args.clone()))
    }
}

/// `POST /v1/chat/completions`.
pub(super) async fn chat_completions(
    State(st): State<Shared>,
    body: Bytes,
) -> std::result::Result<Response, ApiError> {
    let o = super::api::parse_object(&body)?;
    let (name, served) = model_named(&st, &o)?;
    let Served::Llm(llm) = served.as_ref() else {
        return Err(wrong_route(&name, served));
    };
    let mut messages = parse_messages(&o)?;
    let tools = parse_tools(&o)?;
    let Some(template) = &llm.template else {
        return Err(ApiError::invalid(
            format!("the model '{name}' has no chat template: use /v1/completions"),
            Some("model"),
        ));
    };
    let tk = &llm.tokenizer;
    let bos = tk.bos_token().unwrap_or_default();
    let eos = tk.eos_token().unwrap_or_default();
    let text = match &tools {
        // The template's own way of showing tools.
        Some(t) if template.uses("tools") => template.render_value(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(&messages)),
            tools => minijinja::Value::from(minijinja::value::Serde(&t.list)),
            add_generation_prompt => true,
            bos_token => bos.as_str(),
            eos_token => eos.as_str(),
        }),
        Some(t) => {
            // A system preamble listing them, before (or merged into) the system message.
            match messages.first_mut() {
                Some(m) if m.role == "system" => {
                    m.content = format!("{}\n\n{}", m.content, t.preamble())
                }
                _ => messages.insert(0, ChatMessage::new("system", t.preamble())),
            }
            template.render(&messages, true, &bos, &eos)
        }
        None => template.render(&messages, true, &bos, &eos),
    }
    .map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?;
    let prompt = tk
        .encode(&text, false)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?;
    generate(
        st.clone(),
        name,
        llm,
        &o,
        prompt,
        "messages",
        Route::Chat(tools),
    )
    .await
}

/// `POST /v1/completions` for a pretrained LLM: the prompt as given (with BOS when the
/// tokenizer adds one).
pub(super) async fn completions(
    st: Shared,
    name: String,
    llm: &LlmServed,
    o: &Map<String, Value>,
) -> std::result::Result<Response, ApiError> {
    let prompt = match strings_field(o, "prompt")? {
        Some(p) if p.len() == 1 && !p[0].is_empty() => p.into_iter().next().expect("one"),
        Some(p) if p.len() == 1 => {
            return Err(ApiError::invalid("'prompt' is empty", Some("prompt")))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "'prompt' must be one string",
                Some("prompt"),
            ))
        }
        None => return Err(ApiError::invalid("'prompt' is required", Some("prompt"))),
    };
    let ids = llm
        .tokenizer
        .encode(&prompt, true)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("prompt")))?;
    generate(st, name, llm, o, ids, "prompt", Route::Completions).await
}

/// Hands a tokenised prompt to the model's worker and answers as one JSON body or as
/// server-sent events.
async fn generate(
    st: Shared,
    name: String,
    llm: &LlmServed,
    o: &Map<String, Value>,
    prompt: Vec<u32>,
    prompt_param: &'static str,
    route: Route,
) -> std::result::Result<Response, ApiError> {
    let context = llm.model.config.max_position_embeddings;
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            "the prompt encodes to no tokens",
            Some(prompt_param),
        ));
    }
    if prompt.len() >= context {
        return Err(ApiError::invalid(
            format!(
                "the prompt is {} tokens, the model's context is {context}: shorten it",
                prompt.len()
            ),
            Some(prompt_param),
        ));
    }
    let (is_chat, tools) = match route {
        Route::Chat(tools) => (true, tools),
        Route::Completions => (false, None),
    };
    let default_max = if is_chat { st.cfg.max_tokens } else { 16 };
    let sampling = parse_sampling(o, st.cfg.max_tokens, default_max)?;
    let top_logprobs = parse_logprobs(o)?;
    let mut constraint = parse_response_format(o, llm)?;
    if let Some(t) = tools.as_ref().filter(|t| t.forced.is_some()) {
        // A call must come: its name and arguments are constrained like a JSON schema.
        if constraint.is_some() {
            return Err(ApiError::invalid(
                "'response_format' and a required tool call cannot both constrain the answer",
                Some("tool_choice"),
            ));
        }
        let schema = t.call_schema();
        let c = llm.constraints.as_ref().map_err(|why| {
            ApiError::invalid(
                format!("tool calls are not available for this model: {why}"),
                Some("tool_choice"),
            )
        })?;
        constraint = Some(
            c.for_schema(&schema)
                .map_err(|e| ApiError::invalid(e.to_string(), Some("tools")))?,
        );
    }
    let stream = bool_field(o, "stream")?;
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => bool_field(so, "include_usage")
            .map_err(|e| invalid_at(e.message, "stream_options.include_usage"))?,
        Some(_) => {
            return Err(ApiError::invalid(
                "'stream_options' must be an object",
                Some("stream_options"),
            ))
        }
    };
    let permit = admit(&st)?;
    let (prefix, object, chunk_object) = if is_chat {
        ("chatcmpl", "chat.completion", "chat.completion.chunk")
    } else {
        ("cmpl", "text_completion", "text_completion")
    };
    let id = format!(
        "{prefix}-{}",
        st.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let created = unix_time();
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Piece>();
    let (done_tx, done_rx) = oneshot::channel();
    let job = LlmJob {
        prompt,
        sampling,
        top_logprobs,
        constraint,
        pieces: stream.then_some(tx),
        cancel: Arc::clone(&cancel),
        done: done_tx,
    };
    st.llm_decoders[&name].send(job).map_err(|_| {
        ApiError::status(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the model's worker has stopped",
        )
    })?;
    let task = async move {
        let r = done_rx.await;
        drop(permit);
        match r {
            Ok(Ok(g)) => Ok(g),
            Ok(Err(e)) => Err(ApiError::invalid(e, Some(prompt_param))),
            Err(_) => Err(ApiError::status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the generation ended without a result",
            )),
        }
    };
    if !stream {
        drop(rx);
        let g = within_timeout(&st, &cancel, task).await?;
        st.metrics.lock().expect("metrics").tokens_generated += g.ids.len() as u64;
        let logprobs = match top_logprobs {
            Some(_) => logprobs_json(&llm.tokenizer, &g.logprobs),
            None => Value::Null,
        };
        let choice = match (is_chat, answer(&tools, &g, &id)) {
            (true, Answer::Calls(calls)) => json!({"index": 0,
                "message": {"role": "assistant", "content": null, "tool_calls": calls},
                "logprobs": logprobs, "finish_reason": "tool_calls"}),
            (true, Answer::Text) => json!({"index": 0,
                "message": {"role": "assistant", "content": g.text},
                "logprobs": logprobs, "finish_reason": finish_reason(&g)}),
            (false, _) => json!({"index": 0, "text": g.text,
                "logprobs": logprobs, "finish_reason": finish_reason(&g)}),
        };
        return Ok(Json(json!({
            "id": id, "object": object, "created": created, "model": name,
            "choices": [choice], "usage": usage(&g),
        }))
        .into_response());
    }
    // Server-sent events: (chat) a first chunk with the role, one chunk per piece of text, a
    // last one with the finish reason, the usage when asked for, then [DONE].
    let (ev_tx, ev_rx) =
        tokio::sync::mpsc::channel::<std::result::Result<Event, std::convert::Infallible>>(64);
    let st2 = Arc::clone(&st);
    // The stream outlives this call: it holds the model by its Arc.
    let served = Arc::clone(&st.models[&name]);
    tokio::spawn(async move {
        let Served::Llm(llm) = served.as_ref() else {
            return;
        };
        let mut rx = rx;
        let chunk = |delta: Value, logprobs: Value, finish: Value| {
            let choice = if is_chat {
                json!({"index": 0, "delta": delta, "logprobs": logprobs,
                       "finish_reason": finish})
            } else {
                json!({"index": 0,
                    "text": delta.get("content").cloned().unwrap_or(json!("")),
                    "logprobs": logprobs, "finish_reason": finish})
            };
            Event::default().data(
                json!({"id": id, "object": chunk_object, "created": created, "model": name,
                       "choices": [choice]})
                .to_string(),
            )
        };
        let send = |ev: Event| ev_tx.send(Ok(ev));
        if is_chat
            && send(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
                Value::Null,
            ))
            .await
            .is_err()
        {
            cancel.store(true, Ordering::Relaxed);
            return;
        }
        // With tools the answer may be a call: it is sent whole at the end.
        let buffered = tools.is_some();
        while let Some(piece) = rx.recv().await {
            if buffered {
                continue;
            }
            let lp = match top_logprobs {
                Some(_) => logprobs_json(&llm.tokenizer, &piece.logprobs),
                None => Value::Null,
            };
            if send(chunk(json!({"content": piece.text}), lp, Value::Null))
                .await
                .is_err()
            {
                cancel.store(true, Ordering::Relaxed);
                return;
            }
        }
        match task.await {
            Ok(g) => {
                st2.metrics.lock().expect("metrics").tokens_generated += g.ids.len() as u64;
                let finish = match (buffered, answer(&tools, &g, &id)) {
                    (true, Answer::Calls(calls)) => {
                        let calls: Vec<Value> = calls
                            .into_iter()
                            .enumerate()
                            .map(|(i, mut c)| {
                                c["index"] = json!(i);
                                c
                            })
                            .collect();
                        let _ = send(chunk(
                            json!({"tool_calls": calls}),
                            Value::Null,
                            Value::Null,
                        ))
                        .await;
                        json!("tool_calls")
                    }
                    (true, Answer::Text) => {
                        let _ =
                            send(chunk(json!({"content": g.text}), Value::Null, Value::Null)).await;
                        json!(finish_reason(&g))
                    }
                    (false, _) => json!(finish_reason(&g)),
                };
                let _ = send(chunk(json!({}), Value::Null, finish)).await;
                if include_usage {
                    let _ = send(
                        Event::default().data(
                            json!({"id": id, "object": chunk_object, "created": created,
                               "model": name, "choices": [], "usage": usage(&g)})
                            .to_string(),
                        ),
                    )
                    .await;
                }
            }
            Err(e) => {
                let _ = send(
                    Event::default().data(
                        json!({"error": {"message": e.message, "type": e.kind, "param": e.param}})
                            .to_string(),
                    ),
                )
                .await;
            }
        }
        let _ = send(Event::default().data("[DONE]")).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(ev_rx);
    Ok(Sse::new(stream).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().expect("an object").clone()
    }

    #[test]
    fn messages_are_checked_field_by_field() {
        let ok = parse_messages(&obj(json!({"messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": null},
        ]})))
        .unwrap();
        assert_eq!(
            ok,
            [
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "Hi there"),
                ChatMessage::new("assistant", ""),
            ]
        );
        let param = |v: Value| parse_messages(&obj(v)).unwrap_err().param.unwrap();
        assert_eq!(param(json!({})), "messages");
        assert_eq!(param(json!({"messages": "hi"})), "messages");
        assert_eq!(param(json!({"messages": []})), "messages");
        assert_eq!(param(json!({"messages": [7]})), "messages[0]");
        assert_eq!(
            param(
                json!({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]})
            ),
            "messages[1].role"
        );
        assert_eq!(
            param(json!({"messages": [{"role": "user", "content": 5}]})),
            "messages[0].content"
        );
        assert_eq!(
            param(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})),
            "messages[0].content"
        );
        let e = parse_messages(&obj(
            json!({"messages": [{"role": "function", "content": "x"}]}),
        ))
        .unwrap_err();
        assert!(
            e.message.contains("'function' is not supported"),
            "{}",
            e.message
        );
        // A tool round: the assistant's call (as the JSON it wrote) and the tool's answer.
        let round = parse_messages(&obj(json!({"messages": [
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ]})))
        .unwrap();
        assert_eq!(
            round,
            [
                ChatMessage::new(
                    "assistant",
                    r#"{"name":"get_weather","arguments":{"city":"Rome"}}"#
                ),
                ChatMessage::new("tool", "sunny"),
            ]
        );
    }

    #[test]
    fn sampling_fields_are_checked() {
        let s = parse_sampling(
            &obj(json!({"max_completion_tokens": 7, "temperature": 0, "stop": "x", "seed": 3})),
            100,
            50,
        )
        .unwrap();
        assert_eq!((s.max_tokens, s.temperature, s.seed), (7, 0.0, 3));
        assert_eq!(s.stop, ["x"]);
        assert_eq!(
            parse_sampling(&obj(json!({})), 100, 50).unwrap().max_tokens,
            50
        );
        let param = |v: Value| parse_sampling(&obj(v), 100, 50).unwrap_err().param.unwrap();
        assert_eq!(param(json!({"n": 2})), "n");
        assert_eq!(param(json!({"max_tokens": 101})), "max_tokens");
        assert_eq!(param(json!({"temperature": 3})), "temperature");
        assert_eq!(param(json!({"top_p": 0})), "top_p");
        assert_eq!(param(json!({"stop": [1]})), "stop");
        assert_eq!(
            parse_logprobs(&obj(json!({"top_logprobs": 2})))
                .unwrap_err()
                .param
                .unwrap(),
            "top_logprobs"
        );
        assert_eq!(
            parse_logprobs(&obj(json!({"logprobs": true, "top_logprobs": 2}))).unwrap(),
            Some(2)
        );
    }
}
