//! The server's model workers: one thread per served model, so concurrent requests share
//! forward passes instead of taking turns.
//!
//! - Generation (continuous batching): every step feeds one batched forward with the next
//!   tokens of all active generations — a new request's prompt joins as its prefill, a finished
//!   or cancelled one leaves — each with its own KV cache and sampler.
//! - Embeddings (token-budget batching): requests that arrive while a batch runs are packed
//!   into the next one, up to a budget of tokens.

use super::Served;
use crate::generate::{Decoder, Generation, Sampling};
use crate::models::TransformerLm;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use tokenizers::Tokenizer;
use tokio::sync::{mpsc::UnboundedSender, oneshot};

/// Batch sizes seen by the workers, for /metrics: histograms over `BATCH_BUCKETS`.
#[derive(Default)]
pub struct BatchStats {
    /// Generations per decode step.
    pub decode: Histogram,
    /// Texts per embedding batch.
    pub embed: Histogram,
    /// Requests being worked on now (in a decode batch or an embedding batch).
    pub running: AtomicU64,
    /// Pretrained LLMs: prompt tokens looked up in the prefix cache, and those found there
    /// (not recomputed).
    pub prefix_lookup_tokens: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    /// The KV-cache pool: bytes of blocks alive, the most there have been, and its budget.
    pub kv_used_bytes: AtomicU64,
    pub kv_peak_bytes: AtomicU64,
    pub kv_capacity_bytes: AtomicU64,
}

pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

#[derive(Default)]
pub struct Histogram(Mutex<(Vec<u64>, f64, u64)>);

impl Histogram {
    pub fn observe(&self, value: f64, buckets: &[f64]) {
        let mut h = self.0.lock().expect("histogram");
        if h.0.is_empty() {
            h.0 = vec![0; buckets.len()];
        }
        if let Some(i) = buckets.iter().position(|&le| value <= le) {
            h.0[i] += 1;
        }
        h.1 += value;
        h.2 += 1;
    }

    /// Prometheus text lines for `name` (cumulative buckets, sum, count).
    pub fn render(&self, name: &str, buckets: &[f64], out: &mut String) {
        let h = self.0.lock().expect("histogram");
        out.push_str(&format!("# TYPE {name} histogram\n"));
        let mut cum = 0;
        for (i, le) in buckets.iter().enumerate() {
            cum += h.0.get(i).copied().unwrap_or(0);
            out.push_str(&format!("{name}_bucket{{le=\"{le}\"}} {cum}\n"));
        }
        out.push_str(&format!(
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}\n",
            h.2, h.1, h.2
        ));
    }
}

/// A generation request handed to a model's worker.
pub struct GenerationJob {
    pub prompt: String,
    pub sampling: Sampling,
    /// Text pieces as they are produced, for a streamed request.
    pub pieces: Option<UnboundedSender<String>>,
    /// Set when the client went away or the request timed out: the worker drops the job.
    pub cancel: Arc<AtomicBool>,
    pub done: oneshot::Sender<Result<Generation, String>>,
}

struct Active {
    job: GenerationJob,
    decoder: Decoder,
    feed: Vec<u32>,
}

/// Starts the generation worker of a language model (`Served::Lm`); jobs go into the returned
/// sender. The worker ends when every sender is dropped and its last generation is done.
pub fn spawn_decoder(
    served: Arc<Served>,
    max_batch: usize,
    stats: Arc<BatchStats>,
) -> Sender<GenerationJob> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Served::Lm { model, tokenizer } = served.as_ref() {
            decode_loop(model, tokenizer, &rx, max_batch.max(1), &stats);
        }
    });
    tx
}

fn decode_loop(
    model: &TransformerLm,
    tokenizer: &Tokenizer,
    rx: &Receiver<GenerationJob>,
    max_batch: usize,
    stats: &BatchStats,
) {
    let mut active: Vec<Active> = Vec::new();
    let start = |job: GenerationJob, active: &mut Vec<Active>| match Decoder::new(
        model,
        tokenizer,
        &job.prompt,
        &job.sampling,
    ) {
        Ok((decoder, feed)) => active.push(Active { job, decoder, feed }),
        Err(e) => {
            let _ = job.done.send(Err(e.to_string()));
        }
    };
    loop {
        // Idle: sleep until a request comes. Busy: take what has arrived, up to the batch size.
        if active.is_empty() {
            match rx.recv() {
                Ok(job) => start(job, &mut active),
                Err(_) => return,
            }
        }
        while active.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => start(job, &mut active),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
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
            continue;
        }
        stats.running.store(active.len() as u64, Ordering::Relaxed);
        stats.decode.observe(active.len() as f64, BATCH_BUCKETS);
        let feeds: Vec<Vec<u32>> = active
            .iter_mut()
            .map(|a| std::mem::take(&mut a.feed))
            .collect();
        let seqs: Vec<&[u32]> = feeds.iter().map(Vec::as_slice).collect();
        let mut caches: Vec<&mut [crate::nn::KvCache]> = active
            .iter_mut()
            .map(|a| a.decoder.cache.as_mut_slice())
            .collect();
        let logits = match model.forward_cached_batch(&seqs, &mut caches) {
            Ok(l) => l,
            Err(e) => {
                for a in active.drain(..) {
                    let _ = a.job.done.send(Err(e.to_string()));
                }
                continue;
            }
        };
        let mut next = Vec::with_capacity(active.len());
        for (mut a, logits) in active.drain(..).zip(logits) {
            let (pieces, cancel) = (a.job.pieces.as_ref(), &a.job.cancel);
            // A closed stream means the client went away: stop generating for it.
            let on_text = |piece: &str| {
                pieces.is_none_or(|tx| tx.send(piece.to_string()).is_ok())
                    && !cancel.load(Ordering::Relaxed)
            };
            match a.decoder.step(model, tokenizer, &logits, on_text) {
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
        active = next;
        stats.running.store(active.len() as u64, Ordering::Relaxed);
    }
}

/// An embedding request: its texts already tokenised.
pub struct EmbedJob {
    pub ids: Vec<Vec<u32>>,
    pub done: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// Starts the embedding worker of an encoder (`Served::Embedder`). Each batch takes the
/// requests waiting at that moment while their tokens stay within `token_budget` (a larger
/// request runs alone).
pub fn spawn_embedder(
    served: Arc<Served>,
    token_budget: usize,
    stats: Arc<BatchStats>,
) -> Sender<EmbedJob> {
    let (tx, rx) = std::sync::mpsc::channel::<EmbedJob>();
    std::thread::spawn(move || {
        let Served::Embedder(encoder) = served.as_ref() else {
            return;
        };
        let tokens = |j: &EmbedJob| j.ids.iter().map(Vec::len).sum::<usize>();
        let mut carried: Option<EmbedJob> = None;
        loop {
            let first = match carried.take() {
                Some(j) => j,
                None => match rx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                },
            };
            let mut total = tokens(&first);
            let mut jobs = vec![first];
            while let Ok(j) = rx.try_recv() {
                let t = tokens(&j);
                if total + t > token_budget {
                    carried = Some(j);
                    break;
                }
                total += t;
                jobs.push(j);
            }
            let counts: Vec<usize> = jobs.iter().map(|j| j.ids.len()).collect();
            let mut all = Vec::with_capacity(counts.iter().sum());
            let mut replies = Vec::with_capacity(jobs.len());
            for j in jobs {
                all.extend(j.ids);
                replies.push(j.done);
            }
            stats.running.store(replies.len() as u64, Ordering::Relaxed);
            stats.embed.observe(all.len() as f64, BATCH_BUCKETS);
            match encoder.embed_tokenized(&all, 32) {
                Ok(embs) => {
                    let mut embs = embs.into_iter();
                    for (done, n) in replies.into_iter().zip(counts) {
                        let _ = done.send(Ok(embs.by_ref().take(n).collect()));
                    }
                }
                Err(e) => {
                    for done in replies {
                        let _ = done.send(Err(e.to_string()));
                    }
                }
            }
            stats.running.store(0, Ordering::Relaxed);
        }
    });
    tx
}
