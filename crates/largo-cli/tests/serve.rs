//! `largo serve` through the real binary: a tiny GPT trained here and the tiny BERT fixture,
//! spoken to over plain HTTP/1.1 (no client library), including every bad request.

mod common;
mod support;
use common::{largo, ok, repo, train_digit_classifier};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use support::webdriver::Browser;

struct Server {
    child: Child,
    addr: String,
    /// Kept open: the server prints again when it stops.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, models: &[&str], key: Option<&str>) -> Server {
    start_with(dir, models, key, &["--max-tokens", "64"])
}

fn start_with(dir: &Path, models: &[&str], key: Option<&str>, extra: &[&str]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_largo"));
    cmd.current_dir(dir)
        .args(["--threads", "2", "serve", "--port", "0"])
        .args(extra)
        .env("LARGO_API_KEY", key.unwrap_or(""))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for m in models {
        cmd.args(["--model", m]);
    }
    let mut child = cmd.spawn().expect("start largo serve");
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    Server {
        child,
        addr,
        _stdout: stdout,
    }
}

/// (status, headers, body) of one request on a fresh connection.
fn request(
    s: &Server,
    method: &str,
    path: &str,
    body: &[u8],
    key: Option<&str>,
) -> (u16, String, String) {
    let mut c = TcpStream::connect(&s.addr).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(body).unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_lowercase(), body.to_string())
}

fn post(s: &Server, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = request(s, "POST", path, body.as_bytes(), None);
    let v = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    (status, v)
}

/// A tiny GPT trained on a corner of the bundled corpus.
fn tiny_lm(dir: &Path) {
    let src = repo().join("data/shakespeare/hamlet_gut.txt");
    let text = std::fs::read_to_string(src).unwrap();
    std::fs::create_dir_all(dir.join("corpus")).unwrap();
    std::fs::write(dir.join("corpus/a.txt"), &text[..8000]).unwrap();
    std::fs::write(dir.join("corpus/b.txt"), &text[8000..12000]).unwrap();
    ok(&largo(
        dir,
        &[
            "train",
            "--set",
            "data.path=corpus",
            "--set",
            "run.name=lm",
            "--set",
            "gpt.n_layer=1",
            "--set",
            "gpt.n_head=2",
            "--set",
            "gpt.n_embd=32",
            "--set",
            "gpt.ff=64",
            "--set",
            "gpt.block_size=32",
            "--set",
            "train.batch_size=4",
            "--set",
            "train.max_steps=10",
            "--set",
            "train.eval_every=10",
            "--set",
            "train.eval_batches=1",
            "--set",
            "schedule.warmup_steps=2",
        ],
    ));
}

#[test]
fn completions_embeddings_models_health_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_lm(tmp.path());
    let bert = repo().join("crates/largo/tests/fixtures/tiny-bert/mean");
    let s = start(
        tmp.path(),
        &["lm=runs/lm", &format!("emb={}", bert.display())],
        None,
    );
    let (status, _, body) = request(&s, "GET", "/health", b"", None);
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, _, body) = request(&s, "GET", "/v1/models", b"", None);
    assert_eq!(status, 200);
    assert!(
        body.contains(r#""id":"emb""#) && body.contains(r#""id":"lm""#),
        "{body}"
    );

    let (status, v) = post(
        &s,
        "/v1/completions",
        r#"{"model": "lm", "prompt": "HAMLET", "max_tokens": 12, "temperature": 0.8, "seed": 3}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // The same seed gives the same text.
    let (_, again) = post(
        &s,
        "/v1/completions",
        r#"{"model": "lm", "prompt": "HAMLET", "max_tokens": 12, "temperature": 0.8, "seed": 3}"#,
    );
    assert_eq!(again["choices"][0]["text"], v["choices"][0]["text"]);

    // Streamed: server-sent events, chunks that add up to the whole text, then [DONE].
    let (status, head, body) = request(
        &s,
        "POST",
        "/v1/completions",
        br#"{"model": "lm", "prompt": "HAMLET", "max_tokens": 12, "temperature": 0.8, "seed": 3, "stream": true}"#,
        None,
    );
    assert_eq!(status, 200);
    assert!(head.contains("text/event-stream"), "{head}");
    let mut streamed = String::new();
    for line in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            break;
        }
        let chunk: serde_json::Value = serde_json::from_str(line).unwrap();
        streamed.push_str(chunk["choices"][0]["text"].as_str().unwrap());
    }
    assert!(body.contains("data: [DONE]"), "{body}");
    assert_eq!(streamed, v["choices"][0]["text"].as_str().unwrap());

    let (status, v) = post(
        &s,
        "/v1/embeddings",
        r#"{"model": "emb", "input": ["hello there", "good night"]}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 32);
    let (_, one) = post(
        &s,
        "/v1/embeddings",
        r#"{"model": "emb", "input": "hello there"}"#,
    );
    let (a, b) = (&one["data"][0]["embedding"], &v["data"][0]["embedding"]);
    for (x, y) in a.as_array().unwrap().iter().zip(b.as_array().unwrap()) {
        assert!(
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-5,
            "{a} vs {b}"
        );
    }

    let (status, _, text) = request(&s, "GET", "/metrics", b"", None);
    assert_eq!(status, 200);
    assert!(
        text.contains(r#"largo_requests_total{route="/v1/completions",status="200"} 3"#),
        "{text}"
    );
    assert!(text.contains("largo_request_seconds_bucket"), "{text}");
    assert!(text.contains("largo_tokens_generated_total 36"), "{text}");
}

#[test]
fn bad_requests_get_openai_errors_and_the_next_good_request_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    let bert = repo().join("crates/largo/tests/fixtures/tiny-bert/mean");
    let s = start(
        tmp.path(),
        &[&format!("emb={}", bert.display())],
        Some("s3cret"),
    );
    let good = br#"{"model": "emb", "input": "fine"}"#;
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"{not json", 400, "malformed JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 400, "expected a JSON object"),
        (b"\xff\xfe{}", 400, "UTF-8"),
        (br#"{"model": "emb"}"#, 400, "'input' is required"),
        (
            br#"{"model": "emb", "input": 7}"#,
            400,
            "'input' must be a string or a list",
        ),
        (br#"{"model": "emb", "input": []}"#, 400, "empty list"),
        (
            br#"{"model": "nope", "input": "x"}"#,
            404,
            "the model 'nope' does not exist",
        ),
        (
            br#"{"model": 5, "input": "x"}"#,
            400,
            "'model' must be a string",
        ),
    ];
    for (body, want, needle) in cases {
        let (status, _, text) = request(&s, "POST", "/v1/embeddings", body, Some("s3cret"));
        assert_eq!(status, want, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg} lacks {needle}");
        assert!(v["error"]["type"].is_string());
        // …and the server still answers a good request.
        let (status, _, _) = request(&s, "POST", "/v1/embeddings", good, Some("s3cret"));
        assert_eq!(status, 200);
    }
    // Completions asked of an embedding model, wrong key, no key, a body over the limit.
    let (status, _, text) = request(
        &s,
        "POST",
        "/v1/completions",
        br#"{"model": "emb", "prompt": "x"}"#,
        Some("s3cret"),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("embedding model"), "{text}");
    let (status, _, text) = request(&s, "POST", "/v1/embeddings", good, Some("wrong"));
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("API key"), "{text}");
    let (status, _, _) = request(&s, "POST", "/v1/embeddings", good, None);
    assert_eq!(status, 401);
    let big = vec![b' '; 2 << 20];
    let (status, _, _) = request(&s, "POST", "/v1/embeddings", &big, Some("s3cret"));
    assert_eq!(status, 413);
    // /health needs no key.
    let (status, _, _) = request(&s, "GET", "/health", b"", None);
    assert_eq!(status, 200);
}

#[test]
fn completion_parameters_are_validated() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_lm(tmp.path());
    let s = start(tmp.path(), &["runs/lm"], None);
    for (body, needle) in [
        (
            r#"{"prompt": "A", "max_tokens": 0}"#,
            "'max_tokens' must be an integer between 1 and 64",
        ),
        (
            r#"{"prompt": "A", "max_tokens": 100000}"#,
            "'max_tokens' must be an integer between 1 and 64",
        ),
        (
            r#"{"prompt": "A", "temperature": -1}"#,
            "'temperature' must be between 0 and 2",
        ),
        (
            r#"{"prompt": "A", "temperature": "hot"}"#,
            "'temperature' must be a number",
        ),
        (r#"{"prompt": ""}"#, "'prompt' is empty"),
        (r#"{"max_tokens": 3}"#, "'prompt' is required"),
        (
            r#"{"prompt": "A", "stop": 3}"#,
            "'stop' must be a string or a list",
        ),
        (
            r#"{"prompt": "A", "stream": "yes"}"#,
            "'stream' must be true or false",
        ),
    ] {
        let (status, v) = post(&s, "/v1/completions", body);
        assert_eq!(status, 400, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    // One model served: "model" may be left out.
    let (status, v) = post(&s, "/v1/completions", r#"{"prompt": "A", "max_tokens": 2}"#);
    assert_eq!(status, 200, "{v}");
}

#[test]
fn sigterm_stops_the_server_with_exit_code_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let bert = repo().join("crates/largo/tests/fixtures/tiny-bert/mean");
    let mut s = start(tmp.path(), &[bert.to_str().unwrap()], None);
    let (status, _, _) = request(&s, "GET", "/health", b"", None);
    assert_eq!(status, 200);
    // SAFETY: sending SIGTERM to the child process this test started.
    unsafe {
        libc::kill(s.child.id() as i32, libc::SIGTERM);
    }
    let code = s.child.wait().unwrap();
    assert!(code.success(), "{code:?}");
}

/// The value of an unlabelled metric line such as `name 12`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn concurrent_requests_share_batches_and_give_the_same_answers_as_single_ones() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_lm(tmp.path());
    let bert = repo().join("crates/largo/tests/fixtures/tiny-bert/mean");
    let s = start_with(
        tmp.path(),
        &["lm=runs/lm", &format!("emb={}", bert.display())],
        None,
        &["--max-tokens", "2000"],
    );
    // Eight generations at once (different seeds, long enough to overlap), then each alone.
    let bodies: Vec<String> = (0..8)
        .map(|i| {
            format!(r#"{{"model": "lm", "prompt": "KING", "max_tokens": 600, "temperature": 0.8, "seed": {i}}}"#)
        })
        .collect();
    let together: Vec<(u16, serde_json::Value)> = std::thread::scope(|sc| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|b| sc.spawn(|| post(&s, "/v1/completions", b)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (body, (status, v)) in bodies.iter().zip(&together) {
        assert_eq!(*status, 200, "{v}");
        let (_, alone) = post(&s, "/v1/completions", body);
        assert_eq!(
            v["choices"][0]["text"], alone["choices"][0]["text"],
            "{body}"
        );
        assert_eq!(v["usage"]["completion_tokens"], 600);
    }
    // Embeddings: sixteen requests at once, each equal to the same text embedded alone.
    let texts: Vec<String> = (0..16)
        .map(|i| format!("sentence number {i} of many"))
        .collect();
    let batched: Vec<serde_json::Value> = std::thread::scope(|sc| {
        let handles: Vec<_> = texts
            .iter()
            .map(|t| {
                let s = &s;
                sc.spawn(move || {
                    post(
                        s,
                        "/v1/embeddings",
                        &format!(r#"{{"model": "emb", "input": "{t}"}}"#),
                    )
                    .1
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (t, v) in texts.iter().zip(&batched) {
        let (_, alone) = post(
            &s,
            "/v1/embeddings",
            &format!(r#"{{"model": "emb", "input": "{t}"}}"#),
        );
        let (a, b) = (&v["data"][0]["embedding"], &alone["data"][0]["embedding"]);
        for (x, y) in a.as_array().unwrap().iter().zip(b.as_array().unwrap()) {
            assert!(
                (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-5,
                "{t}"
            );
        }
    }
    let (_, _, text) = request(&s, "GET", "/metrics", b"", None);
    // Some decode step carried more than one generation.
    let (sum, count) = (
        metric(&text, "largo_decode_batch_sequences_sum"),
        metric(&text, "largo_decode_batch_sequences_count"),
    );
    assert!(sum > count, "no step was shared: sum {sum}, count {count}");
    assert_eq!(metric(&text, "largo_embedding_batch_texts_sum"), 32.0);
    assert_eq!(metric(&text, "largo_queue_depth"), 0.0);
}

#[test]
fn a_full_queue_answers_429_and_a_client_that_leaves_frees_its_place() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_lm(tmp.path());
    let s = start_with(
        tmp.path(),
        &["lm=runs/lm"],
        None,
        &[
            "--max-tokens",
            "1000000",
            "--max-concurrent",
            "1",
            "--max-queue",
            "1",
        ],
    );
    // Two endless streamed generations fill the one running place and the one queue place.
    let open_stream = || {
        let mut c = TcpStream::connect(&s.addr).unwrap();
        let body = br#"{"prompt": "KING", "max_tokens": 1000000, "stream": true}"#;
        let head = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(body).unwrap();
        c
    };
    let first = open_stream();
    let mut reader = BufReader::new(first.try_clone().unwrap());
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    assert!(status_line.contains("200"), "{status_line}");
    let second = open_stream();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (status, head, body) = request(
        &s,
        "POST",
        "/v1/completions",
        br#"{"prompt": "KING", "max_tokens": 5}"#,
        None,
    );
    assert_eq!(status, 429, "{body}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(body.contains("rate_limit_error"), "{body}");
    // Both clients hang up: their generations stop and the next request is served.
    drop((reader, first, second));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, v) = post(
            &s,
            "/v1/completions",
            r#"{"prompt": "KING", "max_tokens": 5}"#,
        );
        if status == 200 {
            assert_eq!(v["usage"]["completion_tokens"], 5);
            break;
        }
        assert_eq!(status, 429, "{v}");
        assert!(
            std::time::Instant::now() < deadline,
            "places were not freed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn digits_are_classified_from_png_or_pixels() {
    use base64::Engine;
    let tmp = tempfile::tempdir().unwrap();
    train_digit_classifier(tmp.path(), "mnist-mlp", 2);
    let s = start(tmp.path(), &["digits=runs/mnist-mlp"], None);
    let png = std::fs::read(repo().join("data/digits/3.png")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let (status, v) = post(
        &s,
        "/v1/classify",
        &format!(r#"{{"image": "{b64}", "top_k": 2}}"#),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "classification");
    assert_eq!(v["predictions"].as_array().unwrap().len(), 2);
    let label = v["label"].as_u64().unwrap();
    assert_eq!(v["predictions"][0]["class"].as_u64(), Some(label));
    // The same image as a canvas data URL.
    let (status, v2) = post(
        &s,
        "/v1/classify",
        &format!(r#"{{"image": "data:image/png;base64,{b64}"}}"#),
    );
    assert_eq!((status, &v2["label"]), (200, &v["label"]));
    // 784 raw pixel values.
    let img = image::open(repo().join("data/digits/3.png"))
        .unwrap()
        .into_luma8();
    let img = image::imageops::resize(&img, 28, 28, image::imageops::FilterType::Triangle);
    // MNIST polarity (light digit on dark), as the image path's automatic inversion gives.
    let raw = img.into_raw();
    let border: Vec<u8> = (0..28)
        .flat_map(|i| [raw[i], raw[27 * 28 + i], raw[i * 28], raw[i * 28 + 27]])
        .collect();
    let light = border.iter().map(|&p| p as f64).sum::<f64>() / border.len() as f64 > 127.0;
    let pixels: Vec<String> = raw
        .iter()
        .map(|&p| if light { 255 - p } else { p }.to_string())
        .collect();
    let (status, v3) = post(
        &s,
        "/v1/classify",
        &format!(r#"{{"pixels": [{}]}}"#, pixels.join(",")),
    );
    assert_eq!((status, &v3["label"]), (200, &v["label"]), "{v3}");

    let bad: Vec<(String, &str)> = vec![
        (
            r#"{"pixels": [1, 2, 3]}"#.into(),
            "'pixels' has 3 values; the model takes 784 (28×28)",
        ),
        (
            format!(r#"{{"pixels": [{}300]}}"#, "0,".repeat(783)),
            "'pixels' must be numbers from 0 to 255, got 300",
        ),
        (
            r#"{"pixels": "many"}"#.into(),
            "'pixels' must be a list of numbers",
        ),
        (r#"{"image": "@@@"}"#.into(), "'image' is not valid base64"),
        (
            r#"{"image": "aGVsbG8="}"#.into(),
            "'image': cannot decode image",
        ),
        (
            format!(r#"{{"image": "{b64}", "pixels": []}}"#),
            "either 'image' or 'pixels'",
        ),
        (
            r#"{}"#.into(),
            "'image' (base64 PNG or JPEG) or 'pixels' is required",
        ),
        (
            format!(r#"{{"image": "{b64}", "top_k": 11}}"#),
            "'top_k' must be an integer between 1 and 10",
        ),
    ];
    for (body, needle) in &bad {
        let (status, v) = post(&s, "/v1/classify", body);
        assert_eq!(status, 400, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    }
    let (status, v) = post(&s, "/v1/completions", r#"{"prompt": "x"}"#);
    assert_eq!(status, 400);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("image classifier: use /v1/classify"));
}

/// Polls `script` (returning a value) until `done` accepts it, or fails after 30 s.
fn wait_for(
    b: &Browser,
    script: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let v = b.execute(script, vec![]).unwrap();
        if done(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {script}: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn the_playground_streams_a_generation_compares_texts_and_classifies_a_drawing() {
    let Some(browser) = Browser::start_or_skip("playground") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    tiny_lm(tmp.path());
    train_digit_classifier(tmp.path(), "mnist-mlp", 1);
    let bert = repo().join("crates/largo/tests/fixtures/tiny-bert/mean");
    let s = start_with(
        tmp.path(),
        &[
            "lm=runs/lm",
            &format!("emb={}", bert.display()),
            "digits=runs/mnist-mlp",
        ],
        None,
        &["--max-tokens", "2000"],
    );
    browser.navigate(&format!("http://{}/", s.addr)).unwrap();
    assert_eq!(browser.title().unwrap(), "largo playground");
    wait_for(
        &browser,
        "return document.getElementById('status').textContent",
        |v| v.as_str().is_some_and(|t| t.starts_with("serving")),
    );

    // Type a prompt and generate; record every length the output goes through as it streams.
    browser
        .execute(
            "document.getElementById('prompt').value = '';
             document.getElementById('max_tokens').value = '1500';
             document.getElementById('seed').value = '3';
             window.lengths = [];
             new MutationObserver(() => window.lengths.push(document.getElementById('output').textContent.length))
                 .observe(document.getElementById('output'), {childList: true, characterData: true, subtree: true});",
            vec![],
        )
        .unwrap();
    let prompt = browser.find_element("#prompt").unwrap();
    browser.send_keys(&prompt, "KING").unwrap();
    browser
        .click(&browser.find_element("#generate").unwrap())
        .unwrap();
    wait_for(
        &browser,
        "return document.getElementById('usage').textContent",
        |v| v.as_str().is_some_and(|t| t.contains("tokens")),
    );
    let shown = browser
        .execute(
            "return document.getElementById('output').textContent",
            vec![],
        )
        .unwrap();
    let (status, direct) = post(
        &s,
        "/v1/completions",
        r#"{"model": "lm", "prompt": "KING", "max_tokens": 1500, "temperature": 0.8, "top_p": 0.95, "seed": 3}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(
        shown.as_str().unwrap(),
        format!("KING{}", direct["choices"][0]["text"].as_str().unwrap()),
        "the page shows the prompt and the whole generation"
    );
    let lengths = browser.execute("return window.lengths", vec![]).unwrap();
    let final_len = shown.as_str().unwrap().chars().count() as u64;
    let partial = lengths
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l.as_u64().is_some_and(|l| l > 4 && l < final_len))
        .count();
    assert!(
        partial >= 2,
        "text appeared in pieces, not at once: {lengths}"
    );

    // Similarity of two texts with the embedding model.
    browser
        .click(&browser.find_element("#compare").unwrap())
        .unwrap();
    let sim = wait_for(
        &browser,
        "return document.getElementById('similarity').textContent",
        |v| v.as_str().is_some_and(|t| !t.is_empty()),
    );
    assert!(
        sim.as_str().unwrap().starts_with("cosine similarity "),
        "{sim}"
    );

    // Draw a stroke on the pad and classify it.
    browser
        .execute(
            "const pad = document.getElementById('pad'); const ctx = pad.getContext('2d');
             ctx.strokeStyle = '#fff'; ctx.lineWidth = 20; ctx.beginPath();
             ctx.moveTo(140, 40); ctx.lineTo(140, 240); ctx.stroke();",
            vec![],
        )
        .unwrap();
    browser
        .click(&browser.find_element("#classify").unwrap())
        .unwrap();
    let label = wait_for(
        &browser,
        "return document.getElementById('prediction').textContent",
        |v| v.as_str().is_some_and(|t| !t.is_empty()),
    );
    assert!(label.as_str().unwrap().starts_with("it is a "), "{label}");

    let severe: Vec<serde_json::Value> = browser
        .browser_log()
        .unwrap()
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(severe.is_empty(), "console errors: {severe:?}");
}

/// The tiny random Llama GGUF with a tokenizer and chat template (tools/gen_chat_fixture.py).
fn tiny_chat_model() -> String {
    let p = repo().join("crates/largo/tests/fixtures/llama/tiny-chat.gguf");
    format!("chat={}", p.display())
}

/// The `data:` payloads of a server-sent-events body, up to (not including) `[DONE]`; panics
/// when `[DONE]` is missing.
fn sse_events(body: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for line in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            return out;
        }
        out.push(serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")));
    }
    panic!("no [DONE] in {body}");
}

/// A streamed chat's text (the deltas' contents) and its events.
fn streamed_chat(s: &Server, body: &str) -> (String, Vec<serde_json::Value>) {
    let (status, head, raw) = request(s, "POST", "/v1/chat/completions", body.as_bytes(), None);
    assert_eq!(status, 200, "{raw}");
    assert!(head.contains("text/event-stream"), "{head}");
    let events = sse_events(&raw);
    let text = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    (text, events)
}

#[test]
fn a_pretrained_llm_serves_chat_completions_streamed_or_not() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start_with(
        tmp.path(),
        &[&tiny_chat_model()],
        None,
        &["--max-tokens", "64"],
    );
    let (status, _, body) = request(&s, "GET", "/v1/models", b"", None);
    assert_eq!(status, 200);
    assert!(
        body.contains(r#""capability":"chat.completions""#),
        "{body}"
    );

    let ask = r#"{"model": "chat", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}], "temperature": 0, "max_tokens": 12}"#;
    let (status, v) = post(&s, "/v1/chat/completions", ask);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"), "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let text = choice["message"]["content"].as_str().unwrap().to_string();
    let used = v["usage"]["completion_tokens"].as_u64().unwrap();
    // Random weights: the reply ends at max_tokens, or earlier at the end-of-turn token.
    let finish = if used == 12 { "length" } else { "stop" };
    assert_eq!(choice["finish_reason"], finish, "{v}");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 5, "{v}");
    // Content as a list of text parts renders the same prompt.
    let parts = ask.replace(
        r#""content": "hello there""#,
        r#""content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]"#,
    );
    let (_, same) = post(&s, "/v1/chat/completions", &parts);
    assert_eq!(same["choices"][0]["message"]["content"], text.as_str());

    // Streamed: a first chunk with the role, deltas that add up to the same text (with their
    // tokens' log-probabilities), the finish reason, the usage, then [DONE].
    let streamed = ask.replace(
        r#""max_tokens": 12"#,
        r#""max_tokens": 12, "stream": true, "stream_options": {"include_usage": true}, "logprobs": true, "top_logprobs": 2"#,
    );
    let (got, events) = streamed_chat(&s, &streamed);
    assert_eq!(got, text);
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let tokens: usize = events
        .iter()
        .filter_map(|e| e["choices"][0]["logprobs"]["content"].as_array())
        .map(|c| {
            for t in c {
                assert!(t["logprob"].as_f64().unwrap() <= 0.0, "{t}");
                assert_eq!(t["top_logprobs"].as_array().unwrap().len(), 2, "{t}");
            }
            c.len()
        })
        .sum();
    assert!(tokens as u64 <= used && tokens > 0, "{tokens} of {used}");
    let last = &events[events.len() - 2];
    assert_eq!(last["choices"][0]["finish_reason"], finish);
    let usage = &events[events.len() - 1];
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], used);

    // A stop string cuts the text where it first appears, and the reason is "stop".
    let cut: String = text.chars().skip(1).take(2).collect();
    if !cut.is_empty() {
        let with_stop = ask.replace(
            r#""max_tokens": 12"#,
            &format!(
                r#""max_tokens": 12, "stop": [{}]"#,
                serde_json::to_string(&cut).unwrap()
            ),
        );
        let (status, v) = post(&s, "/v1/chat/completions", &with_stop);
        assert_eq!(status, 200, "{v}");
        let got = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(got, &text[..text.find(&cut).unwrap()], "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }
    // /v1/completions serves the same model.
    let (status, v) = post(
        &s,
        "/v1/completions",
        r#"{"model": "chat", "prompt": "hello", "max_tokens": 8, "temperature": 0}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    let (status, _, text) = request(&s, "GET", "/metrics", b"", None);
    assert_eq!(status, 200);
    assert!(
        text.contains(r#"largo_requests_total{route="/v1/chat/completions",status="200"}"#),
        "{text}"
    );
}

#[test]
fn concurrent_streamed_chats_each_get_the_text_they_get_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start_with(
        tmp.path(),
        &[&tiny_chat_model()],
        None,
        &["--max-tokens", "64"],
    );
    let bodies: Vec<String> = (0..32)
        .map(|i| {
            format!(
                r#"{{"messages": [{{"role": "user", "content": "question number {i}"}}], "temperature": 0, "max_tokens": 40, "stream": true}}"#
            )
        })
        .collect();
    let together: Vec<String> = std::thread::scope(|sc| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|b| sc.spawn(|| streamed_chat(&s, b).0))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (body, text) in bodies.iter().zip(&together) {
        assert_eq!(*text, streamed_chat(&s, body).0, "{body}");
    }
    let (_, _, text) = request(&s, "GET", "/metrics", b"", None);
    let (sum, count) = (
        metric(&text, "largo_decode_batch_sequences_sum"),
        metric(&text, "largo_decode_batch_sequences_count"),
    );
    assert!(sum > count, "no step was shared: sum {sum}, count {count}");
}

#[test]
fn bad_chat_requests_name_the_field_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start_with(
        tmp.path(),
        &[&tiny_chat_model()],
        None,
        &["--max-tokens", "64"],
    );
    let long = "word ".repeat(400);
    for (body, param, says) in [
        (
            r#"{"messages": "hi"}"#.to_string(),
            "messages",
            "must be a list",
        ),
        (r#"{"messages": []}"#.to_string(), "messages", "is empty"),
        (
            r#"{"messages": [{"role": "wizard", "content": "hi"}]}"#.to_string(),
            "messages[0].role",
            "'wizard' is not supported",
        ),
        (
            r#"{"messages": [{"role": "user", "content": 42}]}"#.to_string(),
            "messages[0].content",
            "must be a string or a list of text parts",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "n": 2}"#.to_string(),
            "n",
            "only one choice",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 65}"#.to_string(),
            "max_tokens",
            "between 1 and 64",
        ),
        (
            format!(r#"{{"messages": [{{"role": "user", "content": "{long}"}}]}}"#),
            "messages",
            "the model's context is 1024",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}"#.to_string(),
            "top_logprobs",
            "needs 'logprobs'",
        ),
    ] {
        let (status, v) = post(&s, "/v1/chat/completions", &body);
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{body}: {msg}");
    }
    let (status, v) = post(
        &s,
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}"#,
    );
    assert_eq!(status, 200, "{v}");
}

#[test]
fn a_shared_prompt_prefix_is_computed_once_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start_with(
        tmp.path(),
        &[&tiny_chat_model()],
        None,
        &["--max-tokens", "64"],
    );
    // A system prompt of about 500 tokens (this tokenizer is small) shared by every request.
    let system = "you are a helpful assistant who answers briefly and well ".repeat(12);
    let ask = |q: &str| {
        format!(
            r#"{{"messages": [{{"role": "system", "content": "{system}"}}, {{"role": "user", "content": "{q}"}}], "temperature": 0, "max_tokens": 6, "logprobs": true, "top_logprobs": 3}}"#
        )
    };
    let (status, cold) = post(&s, "/v1/chat/completions", &ask("first question"));
    assert_eq!(status, 200, "{cold}");
    let (_, _, m) = request(&s, "GET", "/metrics", b"", None);
    assert_eq!(metric(&m, "largo_prefix_cache_hit_tokens_total"), 0.0);
    let prompt_tokens = cold["usage"]["prompt_tokens"].as_f64().unwrap();
    assert!(prompt_tokens > 500.0, "{cold}");
    // The same conversation again: its full blocks come from the cache, and the answer and its
    // log-probabilities are the cold run's.
    let (_, warm) = post(&s, "/v1/chat/completions", &ask("first question"));
    let (_, _, m) = request(&s, "GET", "/metrics", b"", None);
    let hit = metric(&m, "largo_prefix_cache_hit_tokens_total");
    assert!(
        hit >= 480.0 && hit < prompt_tokens,
        "hit {hit} of {prompt_tokens}"
    );
    assert_eq!(
        warm["choices"][0]["message"]["content"],
        cold["choices"][0]["message"]["content"]
    );
    let lps = |v: &serde_json::Value| -> Vec<f64> {
        v["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|t| t["top_logprobs"].as_array().unwrap().clone())
            .map(|t| t["logprob"].as_f64().unwrap())
            .collect()
    };
    let (a, b) = (lps(&cold), lps(&warm));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-3, "cold {x} vs warm {y}");
    }
    // Another question under the same system prompt reuses the system prompt's blocks: the
    // ~500 tokens are computed once.
    let (status, _) = post(&s, "/v1/chat/completions", &ask("another one"));
    assert_eq!(status, 200);
    let (_, _, m) = request(&s, "GET", "/metrics", b"", None);
    assert!(metric(&m, "largo_prefix_cache_hit_tokens_total") >= hit + 448.0);
    assert!(metric(&m, "largo_prefix_cache_hit_rate") > 0.3);
}

#[test]
fn the_kv_pool_holds_requests_back_instead_of_growing() {
    let tmp = tempfile::tempdir().unwrap();
    // 0.1 MiB of f32: 25 blocks of 4 KiB; a request of ≤ 64 positions takes 8 (2 layers ×
    // keys and values × 2 blocks), so three run at a time.
    let s = start_with(
        tmp.path(),
        &[&tiny_chat_model()],
        None,
        &[
            "--max-tokens",
            "64",
            "--kv-cache-mb",
            "0.1",
            "--kv-cache-type",
            "f32",
        ],
    );
    let bodies: Vec<String> = (0..8)
        .map(|i| {
            format!(
                r#"{{"messages": [{{"role": "user", "content": "q{i}"}}], "temperature": 0, "max_tokens": 40}}"#
            )
        })
        .collect();
    let together: Vec<(u16, serde_json::Value)> = std::thread::scope(|sc| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|b| sc.spawn(|| post(&s, "/v1/chat/completions", b)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (body, (status, v)) in bodies.iter().zip(&together) {
        assert_eq!(*status, 200, "{v}");
        let (_, alone) = post(&s, "/v1/chat/completions", body);
        assert_eq!(v["choices"][0]["message"], alone["choices"][0]["message"]);
    }
    let (_, _, m) = request(&s, "GET", "/metrics", b"", None);
    let capacity = metric(&m, "largo_kv_cache_capacity_bytes");
    assert_eq!(capacity, 25.0 * 4096.0);
    let peak = metric(&m, "largo_kv_cache_peak_bytes");
    assert!(peak > 0.0 && peak <= capacity, "peak {peak} of {capacity}");
    // A request whose worst case exceeds the whole pool is refused, naming the option: about
    // 160 prompt tokens + 64 = 7 blocks of positions, 28 blocks.
    let long = "word ".repeat(50);
    let (status, v) = post(
        &s,
        "/v1/chat/completions",
        &format!(r#"{{"messages": [{{"role": "user", "content": "{long}"}}], "max_tokens": 64}}"#),
    );
    assert_eq!(status, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("--kv-cache-mb"), "{msg}");
}

#[test]
fn the_playground_chats_with_a_pretrained_llm_over_several_turns() {
    let Some(browser) = Browser::start_or_skip("playground chat") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let s = start_with(
        tmp.path(),
        &[&tiny_chat_model()],
        None,
        &["--max-tokens", "64"],
    );
    browser.navigate(&format!("http://{}/", s.addr)).unwrap();
    wait_for(
        &browser,
        "return document.getElementById('status').textContent",
        |v| v.as_str().is_some_and(|t| t.starts_with("serving")),
    );
    let hidden = browser
        .execute(
            "return [document.getElementById('chat_box').hidden, document.getElementById('complete').hidden]",
            vec![],
        )
        .unwrap();
    assert_eq!(
        hidden,
        serde_json::json!([false, true]),
        "only the chat view shows"
    );
    browser
        .execute(
            "document.getElementById('system').value = 'Be brief.';
             document.getElementById('chat_max_tokens').value = '12';
             document.getElementById('chat_temperature').value = '0';",
            vec![],
        )
        .unwrap();
    let say = |text: &str, turn: u64| {
        let message = browser.find_element("#message").unwrap();
        browser.send_keys(&message, text).unwrap();
        browser
            .click(&browser.find_element("#send").unwrap())
            .unwrap();
        wait_for(
            &browser,
            "return [document.querySelectorAll('#transcript .assistant').length, document.getElementById('chat_usage').textContent]",
            |v| v[0].as_u64() == Some(turn) && v[1].as_str().is_some_and(|t| t.contains("tokens")),
        );
        browser
            .execute(
                "const r = document.querySelectorAll('#transcript .assistant'); return r[r.length - 1].textContent",
                vec![],
            )
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = say("hello there", 1);
    let ask = |messages: serde_json::Value| {
        let body = serde_json::json!({"messages": messages, "max_tokens": 12, "temperature": 0, "top_p": 0.95});
        post(&s, "/v1/chat/completions", &body.to_string()).1["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut messages = serde_json::json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ]);
    assert_eq!(first, ask(messages.clone()));
    // The second turn carries the first.
    let second = say("and then?", 2);
    let turns = messages.as_array_mut().unwrap();
    turns.push(serde_json::json!({"role": "assistant", "content": first}));
    turns.push(serde_json::json!({"role": "user", "content": "and then?"}));
    assert_eq!(second, ask(messages));
    // A new chat empties the view.
    browser
        .click(&browser.find_element("#reset").unwrap())
        .unwrap();
    let left = browser
        .execute(
            "return document.querySelectorAll('#transcript .msg').length",
            vec![],
        )
        .unwrap();
    assert_eq!(left, 0);
}

/// The official `openai` Python client (installed by .ci/run) against the server: a chat, a
/// streamed chat, a json_schema answer that validates, a tool call, and errors that surface as
/// the client's exceptions. Skips, saying so, only when Python or the package is missing.
#[test]
fn the_openai_python_client_chats_streams_and_gets_its_exceptions() {
    let has_client = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_client {
        println!(
            "skipped: python3 with the `openai` package is not installed (pip install openai)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = start_with(
        tmp.path(),
        &[&tiny_chat_model()],
        None,
        &["--max-tokens", "64"],
    );
    let out = Command::new("python3")
        .arg(repo().join("tools/openai_client_check.py"))
        .args([format!("http://{}/v1", s.addr).as_str(), "chat"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (_, direct) = post(
        &s,
        "/v1/chat/completions",
        r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}], "temperature": 0, "max_tokens": 12}"#,
    );
    assert_eq!(
        v["plain"], direct["choices"][0]["message"]["content"],
        "{v}"
    );
    assert_eq!(v["streamed"], v["plain"], "{v}");
    assert_eq!(v["streamed_finish"], v["plain_finish"], "{v}");
    assert_eq!(v["streamed_tokens"], v["plain_tokens"], "{v}");
    assert_eq!(
        v["errors"],
        serde_json::json!([
            {"status": 400, "param": "messages[0].role"},
            {"status": 400, "param": "n"}
        ])
    );
    assert_eq!(v["missing_model"], 404);
    assert_eq!(v["models"], serde_json::json!(["chat"]));
    // A json_schema answer that validates, and a tool call whose arguments do.
    let answer = v["structured"]["answer"].as_str();
    assert!(answer.is_some_and(|a| ["yes", "no"].contains(&a)), "{v}");
    assert_eq!(v["structured"].as_object().map(|o| o.len()), Some(1), "{v}");
    assert_eq!(v["call"]["name"], "get_weather", "{v}");
    let city = v["call"]["arguments"]["city"].as_str();
    assert!(city.is_some_and(|c| ["Paris", "Rome"].contains(&c)), "{v}");
}

#[test]
fn json_schema_answers_parse_and_validate_and_bad_schemas_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start_with(
        tmp.path(),
        &[&tiny_chat_model()],
        None,
        &["--max-tokens", "64"],
    );
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "answer": {"type": "string", "enum": ["yes", "no"]},
            "n": {"type": "integer", "minimum": 0, "maximum": 9},
        },
        "required": ["answer", "n"],
        "additionalProperties": false,
    });
    // Random weights, several seeds: whatever the model prefers, the mask keeps it valid.
    let mut stopped = 0;
    for seed in 0..6 {
        let body = serde_json::json!({
            "messages": [{"role": "user", "content": format!("question {seed}")}],
            "max_tokens": 64, "temperature": 1.0, "seed": seed,
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        });
        let (status, v) = post(&s, "/v1/chat/completions", &body.to_string());
        assert_eq!(status, 200, "{v}");
        if v["choices"][0]["finish_reason"] != "stop" {
            continue;
        }
        stopped += 1;
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        let doc: serde_json::Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let obj = doc.as_object().unwrap();
        assert_eq!(obj.len(), 2, "{doc}");
        assert!(
            ["yes", "no"].contains(&doc["answer"].as_str().unwrap()),
            "{doc}"
        );
        assert!(doc["n"].as_u64().is_some_and(|n| n <= 9), "{doc}");
    }
    assert!(stopped >= 3, "only {stopped} of 6 answers finished");
    // json_object: any object.
    let (status, v) = post(
        &s,
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64, "temperature": 0, "response_format": {"type": "json_object"}}"#,
    );
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.trim_start().starts_with('{'), "{text}");
    if v["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<serde_json::Value>(text)
            .unwrap()
            .is_object());
    }
    for (format, param, says) in [
        (
            r#"{"type": "json_schema", "json_schema": {"schema": {"type": "object", "unevaluatedProperties": false}}}"#,
            "response_format",
            "unevaluatedProperties",
        ),
        (r#"{"type": "xml"}"#, "response_format.type", "must be"),
        (
            r#"{"type": "json_schema", "json_schema": {"name": "x"}}"#,
            "response_format.json_schema.schema",
            "must be a JSON Schema",
        ),
    ] {
        let body = format!(
            r#"{{"messages": [{{"role": "user", "content": "hi"}}], "response_format": {format}}}"#
        );
        let (status, v) = post(&s, "/v1/chat/completions", &body);
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["param"], param, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{v}"
        );
    }
}

#[test]
fn a_required_tool_call_comes_back_as_tool_calls_with_valid_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start_with(
        tmp.path(),
        &[&tiny_chat_model()],
        None,
        &["--max-tokens", "64"],
    );
    let tools = serde_json::json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                        "required": ["city"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time",
         "parameters": {"type": "object", "properties": {"zone": {"type": "integer", "minimum": 0, "maximum": 9}},
                        "required": ["zone"], "additionalProperties": false}}},
    ]);
    let mut called = 0;
    for (seed, choice) in [
        (0, serde_json::json!("required")),
        (1, serde_json::json!("required")),
        (
            2,
            serde_json::json!({"type": "function", "function": {"name": "get_time"}}),
        ),
        (
            3,
            serde_json::json!({"type": "function", "function": {"name": "get_weather"}}),
        ),
    ] {
        let body = serde_json::json!({
            "messages": [{"role": "user", "content": format!("what now {seed}")}],
            "tools": tools, "tool_choice": choice, "temperature": 1.0, "seed": seed,
            "max_tokens": 64,
        });
        let (status, v) = post(&s, "/v1/chat/completions", &body.to_string());
        assert_eq!(status, 200, "{v}");
        let choice_v = &v["choices"][0];
        if choice_v["finish_reason"] == "length" {
            continue;
        }
        called += 1;
        assert_eq!(choice_v["finish_reason"], "tool_calls", "{v}");
        assert!(choice_v["message"]["content"].is_null(), "{v}");
        let call = &choice_v["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        let name = call["function"]["name"].as_str().unwrap();
        let args: serde_json::Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        match name {
            "get_weather" => {
                assert!(
                    ["Paris", "Rome"].contains(&args["city"].as_str().unwrap()),
                    "{args}"
                )
            }
            "get_time" => assert!(args["zone"].as_u64().is_some_and(|z| z <= 9), "{args}"),
            other => panic!("unknown tool {other}"),
        }
        if let Some(forced) = body["tool_choice"]["function"]["name"].as_str() {
            assert_eq!(name, forced);
        }
    }
    assert!(called >= 2, "only {called} of 4 calls finished");
    for (extra, param) in [
        (r#""tools": [], "tool_choice": "auto""#, "tools"),
        (
            r#""tools": [{"type": "function", "function": {}}]"#,
            "tools[0]",
        ),
        (
            r#""tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}"#,
            "tool_choice",
        ),
    ] {
        let body = format!(r#"{{"messages": [{{"role": "user", "content": "hi"}}], {extra}}}"#);
        let (status, v) = post(&s, "/v1/chat/completions", &body);
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{v}");
    }
}

/// A LoRA adapter fine-tuned here is served over its base as `chat:sonnets` (and as the run
/// itself): its greedy completion is what `largo generate` gives with the run, and differs
/// from the base's.
#[test]
fn adapters_are_served_over_their_base_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("data/shakespeare/sonnets_gut.txt")).unwrap();
    std::fs::write(tmp.path().join("sonnets.txt"), &text[..6000]).unwrap();
    let base = repo().join("crates/largo/tests/fixtures/llama/tiny-chat.gguf");
    let base = base.to_str().unwrap();
    ok(&largo(
        tmp.path(),
        &[
            "finetune",
            "--model",
            base,
            "--data",
            "sonnets.txt",
            "--set",
            "data.context=32",
            "--set",
            "train.max_steps=20",
            "--set",
            "optim.lr=1e-2",
            "--set",
            "run.name=sonnets",
            "--no-progress",
        ],
    ));
    let generated = ok(&largo(
        tmp.path(),
        &[
            "generate",
            "--model",
            "runs/sonnets",
            "--prompt",
            "Shall I",
            "--max-tokens",
            "10",
            "--temperature",
            "0",
        ],
    ));
    let server = start_with(
        tmp.path(),
        &[&tiny_chat_model(), "run=runs/sonnets"],
        None,
        &["--adapter", "chat:sonnets=runs/sonnets"],
    );
    let (_, _, models) = request(&server, "GET", "/v1/models", b"", None);
    for name in ["\"chat\"", "\"run\"", "\"chat:sonnets\""] {
        assert!(models.contains(name), "{models}");
    }
    let complete = |model: &str| {
        let body = format!(
            r#"{{"model": "{model}", "prompt": "Shall I", "max_tokens": 10, "temperature": 0}}"#
        );
        let (status, v) = post(&server, "/v1/completions", &body);
        assert_eq!(status, 200, "{v}");
        v["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let adapted = complete("chat:sonnets");
    assert_eq!(
        format!("Shall I{adapted}"),
        generated.trim_end_matches('\n')
    );
    assert_eq!(complete("run"), adapted);
    assert_ne!(complete("chat"), adapted);
    let refused = |args: &[&str], want: &str| {
        let mut all = vec!["serve", "--port", "0"];
        all.extend_from_slice(args);
        common::fails_with(&largo(tmp.path(), &all), want);
    };
    refused(
        &[
            "--model",
            "run=runs/sonnets",
            "--adapter",
            "nope:x=runs/sonnets",
        ],
        "--adapter nope:x=runs/sonnets: no --model is named 'nope'",
    );
    refused(
        &[
            "--model",
            "a=runs/sonnets",
            "--model",
            "b=runs/sonnets",
            "--adapter",
            "runs/sonnets",
        ],
        "name its base among the --model names, as --adapter BASE:sonnets=DIR",
    );
}
