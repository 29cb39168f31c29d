//! `largo serve`: an OpenAI-compatible HTTP server (axum/tokio) over loaded models.
//!
//! Each served model has one worker thread (`batching`): concurrent generations share batched
//! decode steps (continuous batching, up to `max_concurrent` at once) and concurrent embedding
//! requests share batches within a token budget. At most `max_concurrent + max_queue` model
//! requests are admitted at a time; past that a request gets 429 with Retry-After instead of
//! growing memory. A streamed generation stops when its client disconnects.

pub mod api;
pub mod batching;
pub mod llm;

use crate::data::image::{digit_from_bytes, digit_from_pixels, Invert};
use crate::data::mnist::Normalization;
use crate::generate::Sampling;
use crate::models::llama::KvType;
use crate::models::sentence::{is_hf_dir, SentenceEncoder};
use crate::models::store::{load_classifier, load_info, load_lm, resolve_model_dir};
use crate::models::{ImageClassifier, ModelKind, TransformerLm};
use crate::nn::{Forward, Module};
use crate::tensor::argmax;
use crate::{Error, Result};
use api::{
    bool_field, constant_time_eq, integer_field, number_field, parse_object, string_field,
    strings_field, ApiError,
};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use batching::{spawn_decoder, spawn_embedder, BatchStats, EmbedJob, GenerationJob, BATCH_BUCKETS};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A model the server holds, by what it can do.
pub enum Served {
    Lm {
        model: TransformerLm,
        tokenizer: tokenizers::Tokenizer,
    },
    Embedder(SentenceEncoder),
    /// A pretrained Llama-family decoder (GGUF or Hugging Face), with its chat template.
    Llm(Box<llm::LlmServed>),
    /// A digit classifier: its forward pass keeps activations, hence the lock (it is small
    /// and fast; requests take turns).
    Classifier {
        model: Mutex<Box<dyn ImageClassifier>>,
        norm: Normalization,
        side: usize,
    },
}

impl Served {
    /// Loads a largo language-model directory or a Hugging Face / sentence-transformers one;
    /// `adapter` (a PEFT directory or fine-tuning run) goes on a pretrained LLM, unmerged.
    pub fn load(path: &Path, adapter: Option<&Path>) -> Result<Self> {
        let found = crate::models::llama_load::LlmFiles::find_with_adapter(path, adapter)?;
        if let Some(files) = found {
            return Ok(Served::Llm(Box::new(llm::LlmServed::load(&files)?)));
        }
        if is_hf_dir(path) {
            return Ok(Served::Embedder(SentenceEncoder::load(path)?));
        }
        let dir = resolve_model_dir(path)?;
        let info = load_info(&dir)?;
        match info.model {
            ModelKind::Mlp(_) | ModelKind::Cnn(_) | ModelKind::ResNet(_) => {
                let (mut model, _, norm) = load_classifier(&dir)?;
                let [c, h, w] = model.input();
                if c != 1 || h != w {
                    return Err(Error::format(
                        &dir,
                        format!(
                            "the classifier takes {c}×{h}×{w} inputs, not one square grey image: /v1/classify serves digit classifiers"
                        ),
                    ));
                }
                model.drop_grads();
                Ok(Served::Classifier {
                    model: Mutex::new(model),
                    norm,
                    side: h,
                })
            }
            // LlmFiles::find took fine-tuned models above; a base it could not find is an error
            // there.
            ModelKind::Llama(_) => Err(Error::format(
                &dir,
                "a fine-tuned model whose base was not found",
            )),
            ModelKind::Gpt(_) | ModelKind::EncoderLm(_) => {
                let (mut model, _, tokenizer) = load_lm(&dir)?;
                model.drop_grads();
                Ok(Served::Lm { model, tokenizer })
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// Bearer key required on /v1/ routes when set.
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    pub max_tokens: u64,
    /// Texts per embeddings request.
    pub max_batch: usize,
    /// Generations decoded together in one batch.
    pub max_concurrent: usize,
    /// Admitted requests waiting beyond those being worked on.
    pub max_queue: usize,
    /// Tokens per embedding batch (requests that arrive together are packed up to this).
    pub batch_tokens: usize,
    pub request_timeout: Duration,
    /// Pretrained LLMs: the KV-cache pool every generation's blocks come from, MiB.
    pub kv_cache_mb: f64,
    /// Pretrained LLMs: how that pool stores keys and values.
    pub kv_cache_type: KvType,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            max_body_bytes: 1 << 20,
            max_tokens: 2048,
            max_batch: 256,
            max_concurrent: 32,
            max_queue: 64,
            batch_tokens: 8192,
            request_timeout: Duration::from_secs(120),
            kv_cache_mb: 256.0,
            kv_cache_type: KvType::F16,
        }
    }
}

/// Prometheus counters and histograms, rendered by hand in the text format.
#[derive(Default)]
struct Metrics {
    /// (route, status) → count
    requests: BTreeMap<(String, u16), u64>,
    /// route → (bucket counts, sum of seconds, count)
    latency: BTreeMap<String, (Vec<u64>, f64, u64)>,
    tokens_generated: u64,
    texts_embedded: u64,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    fn render(&self, queued: u64, in_flight: u64, batches: &BatchStats) -> String {
        let mut out = String::new();
        out.push_str("# TYPE largo_requests_total counter\n");
        for ((route, status), n) in &self.requests {
            out.push_str(&format!(
                "largo_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}\n"
            ));
        }
        out.push_str("# TYPE largo_request_seconds histogram\n");
        for (route, (buckets, sum, count)) in &self.latency {
            let mut cum = 0;
            for (le, n) in LATENCY_BUCKETS.iter().zip(buckets) {
                cum += n;
                out.push_str(&format!(
                    "largo_request_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cum}\n"
                ));
            }
            out.push_str(&format!(
                "largo_request_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}\n"
            ));
            out.push_str(&format!(
                "largo_request_seconds_sum{{route=\"{route}\"}} {sum}\n"
            ));
            out.push_str(&format!(
                "largo_request_seconds_count{{route=\"{route}\"}} {count}\n"
            ));
        }
        out.push_str(&format!(
            "# TYPE largo_queue_depth gauge\nlargo_queue_depth {queued}\n\
             # TYPE largo_in_flight gauge\nlargo_in_flight {in_flight}\n\
             # TYPE largo_tokens_generated_total counter\nlargo_tokens_generated_total {}\n\
             # TYPE largo_texts_embedded_total counter\nlargo_texts_embedded_total {}\n",
            self.tokens_generated, self.texts_embedded
        ));
        batches
            .decode
            .render("largo_decode_batch_sequences", BATCH_BUCKETS, &mut out);
        batches
            .embed
            .render("largo_embedding_batch_texts", BATCH_BUCKETS, &mut out);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (looked, hit) = (
            get(&batches.prefix_lookup_tokens),
            get(&batches.prefix_hit_tokens),
        );
        out.push_str(&format!(
            "# TYPE largo_prefix_cache_lookup_tokens_total counter\nlargo_prefix_cache_lookup_tokens_total {looked}\n\
             # TYPE largo_prefix_cache_hit_tokens_total counter\nlargo_prefix_cache_hit_tokens_total {hit}\n\
             # TYPE largo_prefix_cache_hit_rate gauge\nlargo_prefix_cache_hit_rate {}\n\
             # TYPE largo_kv_cache_used_bytes gauge\nlargo_kv_cache_used_bytes {}\n\
             # TYPE largo_kv_cache_peak_bytes gauge\nlargo_kv_cache_peak_bytes {}\n\
             # TYPE largo_kv_cache_capacity_bytes gauge\nlargo_kv_cache_capacity_bytes {}\n",
            if looked > 0 { hit as f64 / looked as f64 } else { 0.0 },
            get(&batches.kv_used_bytes),
            get(&batches.kv_peak_bytes),
            get(&batches.kv_capacity_bytes),
        ));
        out
    }
}

struct AppState {
    models: BTreeMap<String, Arc<Served>>,
    /// The worker of each language model and each encoder, by model name.
    decoders: BTreeMap<String, Sender<GenerationJob>>,
    llm_decoders: BTreeMap<String, Sender<llm::LlmJob>>,
    embedders: BTreeMap<String, Sender<EmbedJob>>,
    cfg: ServeConfig,
    /// One permit per admitted model request, running or waiting.
    admission: Arc<Semaphore>,
    batches: Arc<BatchStats>,
    metrics: Mutex<Metrics>,
    next_id: AtomicU64,
}

type Shared = Arc<AppState>;

/// Admits a model request, or refuses with 429 when `max_concurrent + max_queue` are already
/// in. The permit travels with the request and is released when its answer is complete.
fn admit(st: &Shared) -> Result<OwnedSemaphorePermit, ApiError> {
    Arc::clone(&st.admission).try_acquire_owned().map_err(|_| {
        let mut e = ApiError::status(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "the server is busy: the request queue is full, retry later",
        );
        e.retry_after = Some(1);
        e
    })
}

fn admitted(st: &Shared) -> u64 {
    let capacity = st.cfg.max_concurrent.max(1) + st.cfg.max_queue.max(1);
    (capacity - st.admission.available_permits()) as u64
}

fn model_named<'a>(
    st: &'a Shared,
    o: &serde_json::Map<String, Value>,
) -> Result<(String, &'a Arc<Served>), ApiError> {
    let name = match o.get("model") {
        None | Some(Value::Null) if st.models.len() == 1 => {
            st.models.keys().next().cloned().expect("one model")
        }
        _ => string_field(o, "model")?,
    };
    match st.models.get(&name) {
        Some(m) => Ok((name, m)),
        None => {
            let mut e = ApiError::status(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "the model '{name}' does not exist; served: {}",
                    st.models.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
            e.param = Some("model".into());
            Err(e)
        }
    }
}

/// The error for a model asked for something it does not do, naming the route it serves.
fn wrong_route(name: &str, served: &Served) -> ApiError {
    let what = match served {
        Served::Lm { .. } => "a language model: use /v1/completions",
        Served::Llm(_) => "a pretrained LLM: use /v1/chat/completions or /v1/completions",
        Served::Embedder(_) => "an embedding model: use /v1/embeddings",
        Served::Classifier { .. } => "an image classifier: use /v1/classify",
    };
    ApiError::invalid(format!("the model '{name}' is {what}"), Some("model"))
}

fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn completions(State(st): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let o = parse_object(&body)?;
    let (name, served) = model_named(&st, &o)?;
    if let Served::Llm(model) = served.as_ref() {
        return llm::completions(Arc::clone(&st), name, model, &o).await;
    }
    let Served::Lm { .. } = served.as_ref() else {
        return Err(wrong_route(&name, served));
    };
    let prompt = match strings_field(&o, "prompt")? {
        Some(p) if p.len() == 1 => p.into_iter().next().expect("one"),
        Some(_) => {
            return Err(ApiError::invalid(
                "'prompt' must be one string",
                Some("prompt"),
            ))
        }
        None => return Err(ApiError::invalid("'prompt' is required", Some("prompt"))),
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid("'prompt' is empty", Some("prompt")));
    }
    let sampling = Sampling {
        max_tokens: integer_field(&o, "max_tokens", 16, 1, st.cfg.max_tokens)? as usize,
        temperature: number_field(&o, "temperature", 1.0, 0.0, 2.0)? as f32,
        top_k: 0,
        top_p: number_field(&o, "top_p", 1.0, 0.0, 1.0)? as f32,
        seed: integer_field(&o, "seed", rand_seed(), 0, u64::MAX)?,
        stop: strings_field(&o, "stop")?.unwrap_or_default(),
    };
    if sampling.top_p == 0.0 {
        return Err(ApiError::invalid("'top_p' must be > 0", Some("top_p")));
    }
    let stream = bool_field(&o, "stream")?;
    let permit = admit(&st)?;
    let id = format!("cmpl-{}", st.next_id.fetch_add(1, Ordering::Relaxed));
    let created = unix_time();
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let job = GenerationJob {
        prompt,
        sampling,
        // Only a streamed request listens for pieces; a plain one just waits for the result.
        pieces: stream.then_some(tx),
        cancel: Arc::clone(&cancel),
        done: done_tx,
    };
    st.decoders[&name].send(job).map_err(|_| {
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
            Ok(Err(e)) => Err(ApiError::invalid(e, Some("prompt"))),
            Err(_) => Err(ApiError::status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the generation ended without a result",
            )),
        }
    };
    let usage = |g: &crate::generate::Generation| {
        json!({"prompt_tokens": g.prompt_tokens, "completion_tokens": g.new_tokens,
               "total_tokens": g.prompt_tokens + g.new_tokens})
    };
    let finish = |g: &crate::generate::Generation| match &g.stopped_by {
        Some(s) if !s.is_empty() => "stop",
        _ => "length",
    };
    if !stream {
        drop(rx);
        let g = within_timeout(&st, &cancel, task).await?;
        st.metrics.lock().expect("metrics").tokens_generated += g.new_tokens as u64;
        return Ok(Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": name,
            "choices": [{"text": g.text, "index": 0, "logprobs": null, "finish_reason": finish(&g)}],
            "usage": usage(&g),
        }))
        .into_response());
    }
    // Server-sent events: one chunk per piece of text, then the final chunk with usage.
    let (ev_tx, ev_rx) = tokio::sync::mpsc::channel::<Result<Event, std::convert::Infallible>>(64);
    let st3 = Arc::clone(&st);
    tokio::spawn(async move {
        let mut rx = rx;
        let chunk = |text: &str, finish: Value, usage: Value| {
            Event::default().data(
                json!({"id": id, "object": "text_completion", "created": created, "model": name,
                       "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}],
                       "usage": usage})
                .to_string(),
            )
        };
        while let Some(piece) = rx.recv().await {
            if ev_tx
                .send(Ok(chunk(&piece, Value::Null, Value::Null)))
                .await
                .is_err()
            {
                cancel.store(true, Ordering::Relaxed);
                return;
            }
        }
        let last = match task.await {
            Ok(g) => {
                st3.metrics.lock().expect("metrics").tokens_generated += g.new_tokens as u64;
                chunk("", json!(finish(&g)), usage(&g))
            }
            Err(e) => Event::default()
                .data(json!({"error": {"message": e.message, "type": e.kind}}).to_string()),
        };
        let _ = ev_tx.send(Ok(last)).await;
        let _ = ev_tx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(ev_rx);
    Ok(Sse::new(stream).into_response())
}

/// A generation's result, or 504 after the server's request timeout (the worker is told to
/// drop the job through `cancel`).
async fn within_timeout<T>(
    st: &Shared,
    cancel: &AtomicBool,
    task: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(st.cfg.request_timeout, task).await {
        Ok(r) => r,
        Err(_) => {
            cancel.store(true, Ordering::Relaxed);
            Err(ApiError::status(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the generation took longer than the server's request timeout",
            ))
        }
    }
}

fn rand_seed() -> u64 {
    unix_time() ^ ((std::process::id() as u64) << 32)
}

async fn embeddings(State(st): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let o = parse_object(&body)?;
    let (name, served) = model_named(&st, &o)?;
    let Served::Embedder(_) = served.as_ref() else {
        return Err(wrong_route(&name, served));
    };
    let texts = strings_field(&o, "input")?
        .ok_or_else(|| ApiError::invalid("'input' is required", Some("input")))?;
    if texts.is_empty() {
        return Err(ApiError::invalid("'input' is an empty list", Some("input")));
    }
    if texts.len() > st.cfg.max_batch {
        return Err(ApiError::invalid(
            format!(
                "'input' has {} texts; at most {} per request",
                texts.len(),
                st.cfg.max_batch
            ),
            Some("input"),
        ));
    }
    if let Some(Value::String(f)) = o.get("encoding_format") {
        if f != "float" {
            return Err(ApiError::invalid(
                "only encoding_format \"float\" is supported",
                Some("encoding_format"),
            ));
        }
    }
    let permit = admit(&st)?;
    let n = texts.len();
    let served = Arc::clone(served);
    let worker = st.embedders[&name].clone();
    let server_error =
        |e: String| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "server_error", e);
    let work = async move {
        // Tokenising is CPU work too: off the async threads, then into the model's batches.
        let ids = tokio::task::spawn_blocking(move || match served.as_ref() {
            Served::Embedder(enc) => {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                enc.tokenize(&refs).map_err(|e| e.to_string())
            }
            _ => Err("not an embedding model".to_string()),
        })
        .await
        .map_err(|e| server_error(e.to_string()))?
        .map_err(|e| ApiError::invalid(e, Some("input")))?;
        let tokens: usize = ids.iter().map(Vec::len).sum();
        let (done, result) = tokio::sync::oneshot::channel();
        worker
            .send(EmbedJob { ids, done })
            .map_err(|_| server_error("the model's worker has stopped".into()))?;
        let embs = result
            .await
            .map_err(|_| server_error("the batch ended without a result".into()))?
            .map_err(|e| ApiError::invalid(e, Some("input")))?;
        drop(permit);
        Ok::<_, ApiError>((embs, tokens))
    };
    let (embs, tokens) = match tokio::time::timeout(st.cfg.request_timeout, work).await {
        Err(_) => {
            return Err(ApiError::status(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the request took longer than the server's timeout",
            ))
        }
        Ok(r) => r?,
    };
    st.metrics.lock().expect("metrics").texts_embedded += n as u64;
    let data: Vec<Value> = embs
        .into_iter()
        .enumerate()
        .map(|(i, e)| json!({"object": "embedding", "index": i, "embedding": e}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data, "model": name,
                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response())
}

/// `{"image": "<base64 PNG or JPEG, data: URL allowed>"}` or `{"pixels": [side² values 0–255]}`,
/// optional `"top_k"` (default 3) → the classes by probability.
async fn classify(State(st): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    use base64::Engine;
    let o = parse_object(&body)?;
    let (name, served) = model_named(&st, &o)?;
    let Served::Classifier { norm, side, model } = served.as_ref() else {
        return Err(wrong_route(&name, served));
    };
    let classes = model.lock().expect("classifier").classes();
    let top_k = integer_field(&o, "top_k", 3, 1, classes as u64)? as usize;
    let x = match (o.get("image"), o.get("pixels")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "give either 'image' or 'pixels', not both",
                Some("image"),
            ))
        }
        (Some(_), None) => {
            let text = string_field(&o, "image")?;
            // A data URL from a canvas carries a header before the comma.
            let payload = match text.strip_prefix("data:") {
                Some(rest) => rest.split_once(',').map_or("", |(_, b)| b),
                None => text.as_str(),
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(payload.trim())
                .map_err(|e| {
                    ApiError::invalid(format!("'image' is not valid base64: {e}"), Some("image"))
                })?;
            digit_from_bytes(&bytes, *side as u32, Invert::Auto, norm)
                .map_err(|e| ApiError::invalid(format!("'image': {e}"), Some("image")))?
        }
        (None, Some(Value::Array(values))) => {
            let want = side * side;
            if values.len() != want {
                return Err(ApiError::invalid(
                    format!(
                        "'pixels' has {} values; the model takes {want} ({side}×{side})",
                        values.len()
                    ),
                    Some("pixels"),
                ));
            }
            let px = values
                .iter()
                .map(|v| match v.as_f64() {
                    Some(p) if (0.0..=255.0).contains(&p) => Ok(p.round() as u8),
                    _ => Err(ApiError::invalid(
                        format!("'pixels' must be numbers from 0 to 255, got {v}"),
                        Some("pixels"),
                    )),
                })
                .collect::<Result<Vec<u8>, _>>()?;
            digit_from_pixels(&px, *side, Invert::No, norm)
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "'pixels' must be a list of numbers",
                Some("pixels"),
            ))
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "'image' (base64 PNG or JPEG) or 'pixels' is required",
                Some("image"),
            ))
        }
    };
    let logits = model
        .lock()
        .expect("classifier")
        .forward(&x, Forward::eval(1, 1))
        .map_err(|e| ApiError::invalid(e.to_string(), None))?
        .to_vec();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let z: f32 = exps.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| exps[b].total_cmp(&exps[a]));
    let predictions: Vec<Value> = order[..top_k]
        .iter()
        .map(|&c| json!({"class": c, "probability": exps[c] / z}))
        .collect();
    Ok(Json(json!({"object": "classification", "model": name,
                   "label": argmax(&logits), "predictions": predictions}))
    .into_response())
}

async fn list_models(State(st): State<Shared>) -> Json<Value> {
    let data: Vec<Value> = st
        .models
        .iter()
        .map(|(name, m)| {
            let kind = match m.as_ref() {
                Served::Lm { .. } => "completions",
                Served::Llm(_) => "chat.completions",
                Served::Embedder(_) => "embeddings",
                Served::Classifier { .. } => "classify",
            };
            json!({"id": name, "object": "model", "owned_by": "largo", "capability": kind})
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// The playground: one static page in the binary, talking to the API above.
async fn playground() -> Response {
    (
        [
            ("content-type", "text/html; charset=utf-8"),
            ("cache-control", "no-cache"),
        ],
        include_str!("playground.html"),
    )
        .into_response()
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(st): State<Shared>) -> Response {
    let in_flight = admitted(&st);
    let running = st.batches.running.load(Ordering::Relaxed).min(in_flight);
    let text =
        st.metrics
            .lock()
            .expect("metrics")
            .render(in_flight - running, in_flight, &st.batches);
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

/// Bearer-key check (constant time) on /v1/ routes, and request counting and timing for all.
async fn guard(State(st): State<Shared>, headers: HeaderMap, req: Request, next: Next) -> Response {
    let route = req.uri().path().to_string();
    let start = Instant::now();
    let resp = match (&st.cfg.api_key, route.starts_with("/v1/")) {
        (Some(key), true) => {
            let given = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if constant_time_eq(given.as_bytes(), key.as_bytes()) {
                next.run(req).await
            } else {
                ApiError::status(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request_error",
                    "missing or wrong API key: send 'Authorization: Bearer <key>'",
                )
                .into_response()
            }
        }
        _ => next.run(req).await,
    };
    let known = [
        "/",
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/classify",
        "/v1/models",
        "/health",
        "/metrics",
    ];
    let label = if known.contains(&route.as_str()) {
        route
    } else {
        "other".into()
    };
    let secs = start.elapsed().as_secs_f64();
    let mut m = st.metrics.lock().expect("metrics");
    *m.requests
        .entry((label.clone(), resp.status().as_u16()))
        .or_insert(0) += 1;
    let entry = m
        .latency
        .entry(label)
        .or_insert_with(|| (vec![0; LATENCY_BUCKETS.len()], 0.0, 0));
    if let Some(i) = LATENCY_BUCKETS.iter().position(|&le| secs <= le) {
        entry.0[i] += 1;
    }
    entry.1 += secs;
    entry.2 += 1;
    resp
}

async fn not_found() -> ApiError {
    ApiError::status(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such route",
    )
}

/// The router over loaded models (used by `run` and by tests).
pub fn router(models: BTreeMap<String, Arc<Served>>, cfg: ServeConfig) -> Router {
    let batches = Arc::new(BatchStats::default());
    let (mut decoders, mut embedders) = (BTreeMap::new(), BTreeMap::new());
    let mut llm_decoders = BTreeMap::new();
    for (name, served) in &models {
        let worker = Arc::clone(served);
        match served.as_ref() {
            Served::Lm { .. } => {
                let tx = spawn_decoder(worker, cfg.max_concurrent, Arc::clone(&batches));
                decoders.insert(name.clone(), tx);
            }
            Served::Embedder(_) => {
                let tx = spawn_embedder(worker, cfg.batch_tokens, Arc::clone(&batches));
                embedders.insert(name.clone(), tx);
            }
            Served::Llm(_) => {
                let tx = llm::spawn_llm_decoder(
                    worker,
                    cfg.max_concurrent,
                    (cfg.kv_cache_mb * 1048576.0) as usize,
                    cfg.kv_cache_type,
                    Arc::clone(&batches),
                );
                llm_decoders.insert(name.clone(), tx);
            }
            Served::Classifier { .. } => {}
        }
    }
    let st: Shared = Arc::new(AppState {
        models,
        decoders,
        llm_decoders,
        embedders,
        admission: Arc::new(Semaphore::new(
            cfg.max_concurrent.max(1) + cfg.max_queue.max(1),
        )),
        batches,
        metrics: Mutex::new(Metrics::default()),
        next_id: AtomicU64::new(1),
        cfg: cfg.clone(),
    });
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(llm::chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/classify", post(classify))
        .route("/v1/models", get(list_models))
        .route("/", get(playground))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(st.clone(), guard))
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .with_state(st)
}

/// A model to serve under `name`: a directory or file, and for a pretrained LLM optionally a
/// LoRA adapter applied on it.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub name: String,
    pub path: PathBuf,
    pub adapter: Option<PathBuf>,
}

/// Loads `models`, binds and serves until SIGTERM or Ctrl-C, then lets in-flight requests
/// finish. `on_listen` receives the bound address (port 0 picks one).
pub fn run(
    models: &[ModelSpec],
    cfg: ServeConfig,
    on_listen: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let mut loaded = BTreeMap::new();
    for m in models {
        if loaded.contains_key(&m.name) {
            return Err(Error::Invalid(format!("two models are named '{}'", m.name)));
        }
        let served = Served::load(&m.path, m.adapter.as_deref())?;
        loaded.insert(m.name.clone(), Arc::new(served));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::Invalid(format!("cannot listen on {addr}: {e}")))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::Invalid(format!("{addr}: {e}")))?;
        // Handlers are installed before the address is announced, so a SIGTERM sent at any
        // point after that drains and exits 0.
        let shutdown = shutdown_signal()?;
        on_listen(bound);
        let app = router(loaded, cfg);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::Invalid(format!("server: {e}")))
    })
}

fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let handler = |kind: SignalKind| {
        signal(kind).map_err(|e| Error::Invalid(format!("cannot handle signals: {e}")))
    };
    let (mut term, mut int) = (
        handler(SignalKind::terminate())?,
        handler(SignalKind::interrupt())?,
    );
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}
