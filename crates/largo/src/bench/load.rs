//! The load generator behind `largo bench serve`: `clients` threads, each on its own
//! keep-alive HTTP/1.1 connection, send OpenAI-shaped requests back to back until a deadline,
//! against any server with `/v1/embeddings`, `/v1/completions` or `/v1/chat/completions`
//! (largo's or another, e.g. llama.cpp's `llama-server`). Chat requests stream, so that time
//! to first token and the time between tokens are measured as a client sees them.
//!
//! The HTTP client is a minimal hand-written one over `TcpStream` (Content-Length and chunked
//! bodies), so the bench needs no client library and measures the server, not a client stack.

use crate::{Error, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest wait for one response before the request counts as an I/O error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Pause after a failed request, so a refused or 429-ing server is not hammered in a hot loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// Largest response head or body the client accepts (a guard against a broken server).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Embeddings,
    Completions,
    /// Streamed chat completions with a system prompt shared by every request.
    Chat,
}

impl Workload {
    /// The name used on the command line, in output, and as the `capability` in `/v1/models`.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Embeddings => "embeddings",
            Workload::Completions => "completions",
            Workload::Chat => "chat.completions",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Workload::Embeddings => "/v1/embeddings",
            Workload::Completions => "/v1/completions",
            Workload::Chat => "/v1/chat/completions",
        }
    }

    /// What the tokens/s figure counts.
    pub fn token_kind(self) -> &'static str {
        match self {
            Workload::Embeddings => "prompt tokens",
            Workload::Completions | Workload::Chat => "completion tokens",
        }
    }
}

pub struct LoadConfig {
    /// `host:port` of the server.
    pub addr: String,
    pub workload: Workload,
    pub model: String,
    pub clients: usize,
    pub duration: Duration,
    /// Request texts, used round-robin across all clients.
    pub texts: Vec<String>,
    /// Texts per embeddings request.
    pub inputs_per_request: usize,
    /// `max_tokens` of each completion.
    pub max_tokens: usize,
    /// Chat: the system prompt every request starts with (user messages come from `texts`).
    pub system: String,
}

pub struct LoadReport {
    pub workload: Workload,
    pub model: String,
    pub addr: String,
    pub clients: usize,
    pub seconds: f64,
    pub inputs_per_request: usize,
    pub max_tokens: usize,
    /// 2xx answers with a well-formed body, completed before the deadline.
    pub requests: u64,
    /// Everything else completed before the deadline, by kind ("HTTP 429", "I/O: …", …).
    pub errors: BTreeMap<String, u64>,
    /// Requests still in flight at the deadline: finished, but counted neither way.
    pub late: u64,
    /// Prompt tokens (embeddings) or completion tokens (completions), from `usage`.
    pub tokens: u64,
    /// Milliseconds of the successful requests: p50, p90, p99, max (0 when there are none).
    pub latency_ms: [f64; 4],
    /// Chat: milliseconds to the first token, p50, p90, p99, max.
    pub ttft_ms: Option<[f64; 4]>,
    /// Chat: milliseconds between tokens (each request's mean gap), p50, p90, p99, max.
    pub itl_ms: Option<[f64; 4]>,
    /// Prompt tokens per request, as the server counted them (mean).
    pub prompt_tokens: f64,
    /// Peak resident set size of the server, when known (set by the caller).
    pub server_peak_rss_mb: Option<f64>,
}

impl LoadReport {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn requests_per_s(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds
    }

    pub fn render(&self) -> String {
        let [p50, p90, p99, max] = self.latency_ms;
        let shape = match self.workload {
            Workload::Embeddings => format!("{} input(s)/request", self.inputs_per_request),
            Workload::Completions | Workload::Chat => format!("max_tokens {}", self.max_tokens),
        };
        let streamed = match (self.ttft_ms, self.itl_ms) {
            (Some([t50, t90, t99, tmax]), Some([i50, i90, i99, imax])) => format!(
                "first token ms:  p50 {t50:.1}  p90 {t90:.1}  p99 {t99:.1}  max {tmax:.1} (every request sent, unfinished ones too)\n\
                 between tokens:  p50 {i50:.1}  p90 {i90:.1}  p99 {i99:.1}  max {imax:.1} ms\n\
                 prompt tokens:   {:.0} per request\n",
                self.prompt_tokens
            ),
            _ => String::new(),
        };
        let errors = if self.errors.is_empty() {
            "0".to_string()
        } else {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            format!("{} ({})", self.error_count(), kinds.join(", "))
        };
        let rss = self
            .server_peak_rss_mb
            .map_or("n/a".to_string(), |mb| format!("{mb:.0} MB"));
        format!(
            "== {workload} (model {model}, http://{addr}, {shape})\n\
             clients:         {clients}\n\
             duration:        {secs:.1} s\n\
             requests:        {requests} (+{late} unfinished at the deadline: not in requests, tokens or latency)\n\
             errors:          {errors}\n\
             requests/s:      {rps:.1}\n\
             tokens/s:        {tps:.1} ({kind})\n\
             latency ms:      p50 {p50:.1}  p90 {p90:.1}  p99 {p99:.1}  max {max:.1}\n\
             {streamed}\
             server peak RSS: {rss}\n",
            workload = self.workload.name(),
            model = self.model,
            addr = self.addr,
            clients = self.clients,
            secs = self.seconds,
            requests = self.requests,
            late = self.late,
            rps = self.requests_per_s(),
            tps = self.tokens_per_s(),
            kind = self.workload.token_kind(),
        )
    }

    pub fn to_json(&self) -> Value {
        let [p50, p90, p99, max] = self.latency_ms;
        json!({
            "workload": self.workload.name(),
            "model": self.model,
            "url": format!("http://{}", self.addr),
            "clients": self.clients,
            "seconds": self.seconds,
            "inputs_per_request": self.inputs_per_request,
            "max_tokens": self.max_tokens,
            "requests": self.requests,
            "errors": self.error_count(),
            "error_kinds": self.errors,
            "late": self.late,
            "requests_per_s": self.requests_per_s(),
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s(),
            "token_kind": self.workload.token_kind(),
            "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "max": max},
            "ttft_ms": self.ttft_ms.map(|[a, b, c, d]| json!({"p50": a, "p90": b, "p99": c, "max": d})),
            "itl_ms": self.itl_ms.map(|[a, b, c, d]| json!({"p50": a, "p90": b, "p99": c, "max": d})),
            "prompt_tokens_per_request": self.prompt_tokens,
            "server_peak_rss_mb": self.server_peak_rss_mb,
        })
    }
}

/// `http://host:port[/]` (or a bare `host:port`) → `host:port`.
pub fn parse_url(url: &str) -> Result<String> {
    if url.starts_with("https://") {
        crate::bail!("{url}: only plain http:// is supported");
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let hostport = rest.trim_end_matches('/');
    if hostport.contains('/') || !hostport.contains(':') {
        crate::bail!("{url}: expected http://HOST:PORT");
    }
    Ok(hostport.to_string())
}

/// The first model `/v1/models` lists for `workload` (by its `capability`; a server that
/// reports none is taken to serve the workload with its first model). None when it lists none.
pub fn discover_model(addr: &str, workload: Workload) -> Result<Option<String>> {
    let mut conn = Connection::new(addr);
    let resp = conn
        .request("GET", "/v1/models", b"")
        .map_err(|e| Error::Invalid(format!("cannot reach the server at http://{addr}: {e}")))?;
    if !(200..300).contains(&resp.status) {
        crate::bail!("GET http://{addr}/v1/models answered HTTP {}", resp.status);
    }
    let listing: Value = serde_json::from_slice(&resp.body)
        .map_err(|e| Error::Invalid(format!("GET http://{addr}/v1/models: bad JSON: {e}")))?;
    let models = listing["data"].as_array().cloned().unwrap_or_default();
    let capable = models.iter().find(|m| {
        m["capability"]
            .as_str()
            .is_none_or(|c| c == workload.name())
    });
    Ok(capable.and_then(|m| m["id"].as_str().map(str::to_string)))
}

/// Runs the load: one probe request (a server that cannot be reached or rejects the request is
/// an error), then `clients` threads until the deadline. Requests/s and tokens/s count only
/// requests that completed before the deadline, over exactly `duration`.
pub fn run_load(cfg: &LoadConfig) -> Result<LoadReport> {
    if cfg.texts.is_empty() || cfg.clients == 0 || cfg.inputs_per_request == 0 {
        crate::bail!("the load needs texts, ≥ 1 client and ≥ 1 input per request");
    }
    let mut probe = Connection::new(&cfg.addr);
    let resp = probe
        .request("POST", cfg.workload.path(), &request_body(cfg, 0))
        .map_err(|e| {
            Error::Invalid(format!(
                "cannot reach the server at http://{}: {e}",
                cfg.addr
            ))
        })?;
    if let Err(kind) = check_response(cfg, &resp) {
        crate::bail!(
            "the probe {} request to http://{} failed ({kind}): {}",
            cfg.workload.name(),
            cfg.addr,
            String::from_utf8_lossy(&resp.body)
        );
    }
    drop(probe);

    let next_text = AtomicUsize::new(1);
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let tallies: Vec<ClientTally> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cfg.clients)
            .map(|_| s.spawn(|| run_client(cfg, deadline, &next_text)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a client thread panicked"))
            .collect()
    });

    let mut total = ClientTally::default();
    for t in tallies {
        total.latencies_ms.extend(t.latencies_ms);
        total.ttft_ms.extend(t.ttft_ms);
        total.itl_ms.extend(t.itl_ms);
        total.prompt_tokens += t.prompt_tokens;
        total.tokens += t.tokens;
        total.late += t.late;
        for (kind, n) in t.errors {
            *total.errors.entry(kind).or_insert(0) += n;
        }
    }
    total.latencies_ms.sort_by(f64::total_cmp);
    total.ttft_ms.sort_by(f64::total_cmp);
    total.itl_ms.sort_by(f64::total_cmp);
    let spread = |v: &[f64]| {
        [
            percentile(v, 50.0),
            percentile(v, 90.0),
            percentile(v, 99.0),
            v.last().copied().unwrap_or(0.0),
        ]
    };
    let streamed = cfg.workload == Workload::Chat;
    let lat = &total.latencies_ms;
    Ok(LoadReport {
        workload: cfg.workload,
        model: cfg.model.clone(),
        addr: cfg.addr.clone(),
        clients: cfg.clients,
        seconds: cfg.duration.as_secs_f64(),
        inputs_per_request: cfg.inputs_per_request,
        max_tokens: cfg.max_tokens,
        requests: lat.len() as u64,
        errors: total.errors,
        late: total.late,
        tokens: total.tokens,
        latency_ms: [
            percentile(lat, 50.0),
            percentile(lat, 90.0),
            percentile(lat, 99.0),
            lat.last().copied().unwrap_or(0.0),
        ],
        server_peak_rss_mb: None,
        ttft_ms: streamed.then(|| spread(&total.ttft_ms)),
        itl_ms: streamed.then(|| spread(&total.itl_ms)),
        prompt_tokens: total.prompt_tokens as f64 / lat.len().max(1) as f64,
    })
}

#[derive(Default)]
struct ClientTally {
    latencies_ms: Vec<f64>,
    ttft_ms: Vec<f64>,
    itl_ms: Vec<f64>,
    prompt_tokens: u64,
    tokens: u64,
    errors: BTreeMap<String, u64>,
    late: u64,
}

fn run_client(cfg: &LoadConfig, deadline: Instant, next_text: &AtomicUsize) -> ClientTally {
    let mut conn = Connection::new(&cfg.addr);
    let mut tally = ClientTally::default();
    let per_request = match cfg.workload {
        Workload::Embeddings => cfg.inputs_per_request,
        Workload::Completions | Workload::Chat => 1,
    };
    while Instant::now() < deadline {
        let first = next_text.fetch_add(per_request, Ordering::Relaxed);
        let body = request_body(cfg, first);
        let sent = Instant::now();
        // Streamed answers: when each event carrying text arrives.
        let mut pieces: Vec<Instant> = Vec::new();
        let mut carry = String::new();
        let mut on_chunk = |chunk: &[u8]| {
            carry.push_str(&String::from_utf8_lossy(chunk));
            while let Some(end) = carry.find("\n\n") {
                let event: String = carry.drain(..end + 2).collect();
                if event_has_text(&event) {
                    pieces.push(Instant::now());
                }
            }
        };
        let outcome = conn.request_with("POST", cfg.workload.path(), &body, &mut on_chunk);
        let done = Instant::now();
        let checked = match outcome {
            Ok(resp) => check_response(cfg, &resp),
            Err(e) => Err(format!("I/O: {}", e.kind())),
        };
        if done > deadline {
            // Not counted in requests, tokens or latency, but its time to first token is:
            // leaving out the requests still queued at the end would favour a server that
            // keeps many waiting.
            if let (Ok(_), Some(first)) = (&checked, pieces.first()) {
                tally.ttft_ms.push((*first - sent).as_secs_f64() * 1e3);
            }
            tally.late += 1;
            break;
        }
        match checked {
            Ok((tokens, prompt)) => {
                tally.latencies_ms.push((done - sent).as_secs_f64() * 1e3);
                tally.tokens += tokens;
                tally.prompt_tokens += prompt;
                if let (Some(first), Some(last)) = (pieces.first(), pieces.last()) {
                    tally.ttft_ms.push((*first - sent).as_secs_f64() * 1e3);
                    if pieces.len() > 1 {
                        let gap = (*last - *first).as_secs_f64() / (pieces.len() - 1) as f64;
                        tally.itl_ms.push(gap * 1e3);
                    }
                }
            }
            Err(kind) => {
                *tally.errors.entry(kind).or_insert(0) += 1;
                std::thread::sleep(ERROR_BACKOFF);
            }
        }
    }
    tally
}

/// The JSON body of request `first`: texts `first…` (round-robin over the text set).
fn request_body(cfg: &LoadConfig, first: usize) -> Vec<u8> {
    let text = |i: usize| cfg.texts[i % cfg.texts.len()].as_str();
    let body = match cfg.workload {
        Workload::Embeddings if cfg.inputs_per_request == 1 => {
            json!({"model": cfg.model, "input": text(first)})
        }
        Workload::Embeddings => {
            let inputs: Vec<&str> = (first..first + cfg.inputs_per_request).map(text).collect();
            json!({"model": cfg.model, "input": inputs})
        }
        Workload::Completions => json!({
            "model": cfg.model, "prompt": text(first), "max_tokens": cfg.max_tokens,
            "temperature": 1.0, "seed": first,
        }),
        Workload::Chat => json!({
            "model": cfg.model,
            "messages": [{"role": "system", "content": cfg.system},
                         {"role": "user", "content": text(first)}],
            "max_tokens": cfg.max_tokens, "temperature": 1.0, "seed": first,
            "stream": true, "stream_options": {"include_usage": true},
        }),
    };
    body.to_string().into_bytes()
}

/// Whether a server-sent event carries generated text (a chat chunk's `delta.content`).
fn event_has_text(event: &str) -> bool {
    event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .any(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
}

/// (completion or embedded tokens, prompt tokens) a successful answer reports, or the kind of
/// failure.
fn check_response(
    cfg: &LoadConfig,
    resp: &HttpResponse,
) -> std::result::Result<(u64, u64), String> {
    if !(200..300).contains(&resp.status) {
        return Err(format!("HTTP {}", resp.status));
    }
    if cfg.workload == Workload::Chat {
        // Server-sent events: the usage chunk, then [DONE].
        let text = String::from_utf8_lossy(&resp.body);
        if !text.contains("[DONE]") {
            return Err("stream without [DONE]".into());
        }
        let usage = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find_map(|v| v.get("usage").filter(|u| u.is_object()).cloned())
            .ok_or("no usage chunk")?;
        return Ok((
            usage["completion_tokens"].as_u64().unwrap_or(0),
            usage["prompt_tokens"].as_u64().unwrap_or(0),
        ));
    }
    let v: Value = serde_json::from_slice(&resp.body).map_err(|_| "bad JSON".to_string())?;
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    match cfg.workload {
        Workload::Embeddings => {
            let data = v["data"].as_array().ok_or("no data")?;
            let complete = data.len() == cfg.inputs_per_request
                && data
                    .iter()
                    .all(|d| d["embedding"].as_array().is_some_and(|e| !e.is_empty()));
            if !complete {
                return Err("wrong embeddings".into());
            }
            Ok((prompt, prompt))
        }
        Workload::Completions => {
            if v["choices"][0]["text"].as_str().is_none() {
                return Err("no completion text".into());
            }
            Ok((
                v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
                prompt,
            ))
        }
        Workload::Chat => unreachable!("answered above"),
    }
}

/// Nearest-rank percentile of ascending `sorted` (0 when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
    /// False when the server said `Connection: close` or ended the body by closing.
    pub keep_alive: bool,
}

/// One keep-alive connection, reopened when it breaks or the server closes it.
struct Connection {
    addr: String,
    stream: Option<BufReader<TcpStream>>,
}

impl Connection {
    fn new(addr: &str) -> Self {
        Connection {
            addr: addr.to_string(),
            stream: None,
        }
    }

    fn connect(&self) -> io::Result<BufReader<TcpStream>> {
        let sock = self
            .addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        let stream = TcpStream::connect_timeout(&sock, Duration::from_secs(10))?;
        // Requests go out in one write; Nagle would only add delay.
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        Ok(BufReader::new(stream))
    }

    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<HttpResponse> {
        self.request_with(method, path, body, &mut |_| {})
    }

    /// [`Connection::request`], calling `on_chunk` with each piece of a chunked body as it
    /// arrives.
    fn request_with(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
        on_chunk: &mut dyn FnMut(&[u8]),
    ) -> io::Result<HttpResponse> {
        let reused = self.stream.is_some();
        match self.try_request(method, path, body, on_chunk) {
            // A reused connection may have been closed by the server while idle (keep-alive
            // timeout): that is not the server failing the request, so retry once on a new one.
            Err(e) if reused && is_stale_connection(&e) => {
                self.try_request(method, path, body, on_chunk)
            }
            other => other,
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
        on_chunk: &mut dyn FnMut(&[u8]),
    ) -> io::Result<HttpResponse> {
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => self.connect()?,
        };
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Accept: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        stream.get_mut().write_all(&req)?;
        let resp = read_response_with(&mut stream, on_chunk)?;
        if resp.keep_alive {
            self.stream = Some(stream);
        }
        Ok(resp)
    }
}

fn is_stale_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

fn bad_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one line ending in CRLF (or LF), without the line ending; EOF before any byte is
/// `UnexpectedEof`.
fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(MAX_RESPONSE_BYTES as u64)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if line.last() != Some(&b'\n') {
        return Err(bad_data("truncated line"));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| bad_data("a non-UTF-8 header line"))
}

/// Reads one HTTP/1.1 response: status line, headers, then a Content-Length, chunked, or
/// read-until-close body. 1xx interim responses are skipped.
pub fn read_response(r: &mut impl BufRead) -> io::Result<HttpResponse> {
    read_response_with(r, &mut |_| {})
}

/// [`read_response`], calling `on_chunk` with each chunk of a chunked body as it arrives.
pub fn read_response_with(
    r: &mut impl BufRead,
    on_chunk: &mut dyn FnMut(&[u8]),
) -> io::Result<HttpResponse> {
    loop {
        let status_line = read_line(r)?;
        let mut parts = status_line.split_whitespace();
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(bad_data(format!("not an HTTP response: {status_line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad_data(format!("bad status line: {status_line:?}")))?;
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        let mut keep_alive = version != "HTTP/1.0";
        loop {
            let line = read_line(r)?;
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(bad_data(format!("bad header: {line:?}")));
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    content_length =
                        Some(value.parse().map_err(|_| bad_data("bad Content-Length"))?)
                }
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "connection" => {
                    let v = value.to_ascii_lowercase();
                    if v.contains("close") {
                        keep_alive = false;
                    } else if v.contains("keep-alive") {
                        keep_alive = true;
                    }
                }
                _ => {}
            }
        }
        if (100..200).contains(&status) {
            continue;
        }
        let body = if status == 204 || status == 304 {
            Vec::new()
        } else if chunked {
            read_chunked(r, on_chunk)?
        } else if let Some(n) = content_length {
            if n > MAX_RESPONSE_BYTES {
                return Err(bad_data("response body too large"));
            }
            let mut body = vec![0; n];
            r.read_exact(&mut body)?;
            body
        } else {
            // No length: the body runs until the server closes the connection.
            keep_alive = false;
            let mut body = Vec::new();
            (&mut *r)
                .take(MAX_RESPONSE_BYTES as u64)
                .read_to_end(&mut body)?;
            body
        };
        return Ok(HttpResponse {
            status,
            body,
            keep_alive,
        });
    }
}

fn read_chunked(r: &mut impl BufRead, on_chunk: &mut dyn FnMut(&[u8])) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size_line = read_line(r)?;
        let hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16)
            .map_err(|_| bad_data(format!("bad chunk size: {size_line:?}")))?;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            while !read_line(r)?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_RESPONSE_BYTES {
            return Err(bad_data("response body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        on_chunk(&body[start..]);
        if !read_line(r)?.is_empty() {
            return Err(bad_data("chunk not followed by CRLF"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn reads_content_length_responses_back_to_back() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}\
                    HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 2\r\n\r\n{}";
        let mut r = Cursor::new(&raw[..]);
        let first = read_response(&mut r).unwrap();
        assert_eq!(first.status, 200);
        assert_eq!(first.body, b"{\"a\":1}");
        assert!(first.keep_alive);
        let second = read_response(&mut r).unwrap();
        assert_eq!(second.status, 429);
        assert_eq!(second.body, b"{}");
        assert_eq!(
            read_response(&mut r).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn reads_chunked_responses_with_extensions_and_trailers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: y\r\n\r\n\
                    HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        let mut r = Cursor::new(&raw[..]);
        let first = read_response(&mut r).unwrap();
        assert_eq!(first.status, 200);
        assert_eq!(
            String::from_utf8(first.body).unwrap(),
            "Wikipedia in\r\n\r\nchunks."
        );
        let second = read_response(&mut r).unwrap();
        assert!(second.body.is_empty());
    }

    #[test]
    fn connection_close_and_unframed_bodies_end_keep_alive() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
        let resp = read_response(&mut Cursor::new(&raw[..])).unwrap();
        assert!(!resp.keep_alive);
        assert_eq!(resp.body, b"ok");
        let raw = b"HTTP/1.0 200 OK\r\n\r\nuntil close";
        let resp = read_response(&mut Cursor::new(&raw[..])).unwrap();
        assert!(!resp.keep_alive);
        assert_eq!(resp.body, b"until close");
    }

    #[test]
    fn skips_interim_responses_and_rejects_garbage() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        let resp = read_response(&mut Cursor::new(&raw[..])).unwrap();
        assert_eq!(resp.status, 201);
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(read_response(&mut Cursor::new(bad)).is_err());
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 90.0), 90.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[3.0, 7.0], 50.0), 3.0);
        assert_eq!(percentile(&[3.0, 7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn urls_become_host_port() {
        assert_eq!(
            parse_url("http://127.0.0.1:8000/").unwrap(),
            "127.0.0.1:8000"
        );
        assert_eq!(parse_url("localhost:9").unwrap(), "localhost:9");
        assert!(parse_url("https://x:1").is_err());
        assert!(parse_url("http://x:1/v1").is_err());
        assert!(parse_url("http://x").is_err());
    }

    #[test]
    fn request_bodies_are_openai_shaped() {
        let mut cfg = LoadConfig {
            addr: "x:1".into(),
            workload: Workload::Embeddings,
            model: "m".into(),
            clients: 1,
            duration: Duration::from_secs(1),
            texts: vec!["a".into(), "b".into(), "c".into()],
            inputs_per_request: 1,
            max_tokens: 8,
            system: "be brief".into(),
        };
        let body = |cfg: &LoadConfig, i| -> Value {
            serde_json::from_slice(&request_body(cfg, i)).unwrap()
        };
        assert_eq!(body(&cfg, 4)["input"], "b");
        cfg.inputs_per_request = 2;
        assert_eq!(body(&cfg, 2)["input"], json!(["c", "a"]));
        cfg.workload = Workload::Completions;
        let v = body(&cfg, 0);
        assert_eq!(
            (v["prompt"].as_str(), v["max_tokens"].as_u64()),
            (Some("a"), Some(8))
        );
        cfg.workload = Workload::Chat;
        let v = body(&cfg, 1);
        assert_eq!(v["messages"][0]["content"], "be brief");
        assert_eq!(v["messages"][1]["content"], "b");
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn chat_events_with_text_are_told_apart() {
        assert!(event_has_text(
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"
        ));
        assert!(!event_has_text(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"
        ));
        assert!(!event_has_text("data: [DONE]\n\n"));
    }
}
