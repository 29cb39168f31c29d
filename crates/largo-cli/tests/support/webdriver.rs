//! A tiny W3C WebDriver client for browser tests: chromedriver driving headless Chromium, over
//! plain HTTP/1.1 on a `TcpStream` (std only; JSON by serde_json).
//!
//! `Browser::start_or_skip` finds the binaries ($CHROMEDRIVER / $CHROMIUM, else the Debian
//! paths). Without them a test is skipped with a message, except under CI (`$CI` set), where
//! `.ci/run` installs them and their absence fails the test.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEBIAN_CHROMIUM: &str = "/usr/bin/chromium";
const DEBIAN_CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Flags for a sandboxed CI box without network: no GPU, no background traffic.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1024",
];

/// The W3C element reference key.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

pub type WdResult<T> = Result<T, String>;

/// The chromium and chromedriver binaries, or why they cannot be used.
pub fn find_binaries() -> WdResult<(PathBuf, PathBuf)> {
    let pick = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default))
    };
    let chromium = pick("CHROMIUM", DEBIAN_CHROMIUM);
    let driver = pick("CHROMEDRIVER", DEBIAN_CHROMEDRIVER);
    let missing: Vec<String> = [(&chromium, "chromium"), (&driver, "chromedriver")]
        .iter()
        .filter(|(p, _)| !p.is_file())
        .map(|(p, name)| format!("{name} ({})", p.display()))
        .collect();
    if missing.is_empty() {
        Ok((chromium, driver))
    } else {
        Err(format!(
            "not found: {} (Debian packages `chromium` and `chromium-driver`; or set $CHROMIUM and $CHROMEDRIVER)",
            missing.join(", ")
        ))
    }
}

fn free_port() -> WdResult<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free local port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// An HTTP response: status code and JSON body (Null when empty).
struct Response {
    status: u16,
    body: Value,
}

/// One request on its own connection, so that no response can be mistaken for another.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> WdResult<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("cannot connect to chromedriver on port {port}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let raw = read_response(&mut stream).map_err(|e| format!("{method} {path}: {e}"))?;
    parse_response(&raw).map_err(|e| format!("{method} {path}: {e}"))
}

/// Reads one response: headers, then the body by its Content-Length or its chunks. The end of
/// the body cannot be the end of the stream: chromedriver announces `Connection: close` but
/// keeps the socket open.
fn read_response(stream: &mut TcpStream) -> WdResult<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let body = &raw[end + 4..];
            let header = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            let complete = if let Some(len) = header("content-length:") {
                let len: usize = len
                    .parse()
                    .map_err(|e| format!("bad Content-Length: {e}"))?;
                body.len() >= len
            } else if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
                dechunk(body).is_ok()
            } else {
                false
            };
            if complete {
                return Ok(raw);
            }
        }
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("reading the response: {e}"))?;
        if n == 0 {
            // The server closed the connection: whatever came is the response.
            return Ok(raw);
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

fn parse_response(raw: &[u8]) -> WdResult<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers in the response")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            format!(
                "response is not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        })?
    };
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> WdResult<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A WebDriver reply's `value`, or its error as text.
fn value_of(r: Response, what: &str) -> WdResult<Value> {
    let value = r.body.get("value").cloned().unwrap_or(Value::Null);
    if r.status >= 400 || value.get("error").is_some() {
        return Err(format!(
            "{what}: HTTP {} {}: {}",
            r.status,
            value["error"].as_str().unwrap_or(""),
            value["message"].as_str().unwrap_or(&r.body.to_string())
        ));
    }
    Ok(value)
}

/// A chromedriver process and one browser session; both end on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    /// Chromium's profile and chromedriver's log: fresh for every browser.
    scratch: tempfile::TempDir,
}

impl Browser {
    /// Starts a browser, or returns None after saying why the test is skipped. Under CI the
    /// browser is required: `.ci/run` installs it, so a missing one fails the test.
    pub fn start_or_skip(test: &str) -> Option<Browser> {
        if let Err(why) = find_binaries() {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "{test}: {why}; `.ci/run` should have installed chromium and chromium-driver"
                );
            }
            eprintln!("SKIPPED {test}: {why}");
            return None;
        }
        Some(Browser::start().unwrap_or_else(|e| panic!("{test}: cannot start the browser: {e}")))
    }

    pub fn start() -> WdResult<Browser> {
        let (chromium, driver_bin) = find_binaries()?;
        let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port()?;
        let log = scratch.path().join("chromedriver.log");
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", driver_bin.display()))?;
        // From here on, Drop stops chromedriver whatever happens.
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            scratch,
        };
        browser.wait_ready(Duration::from_secs(30))?;
        let profile = browser.scratch.path().join("profile");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium.to_string_lossy(),
                        "args": args,
                    },
                    "goog:loggingPrefs": { "browser": "ALL" },
                }
            }
        });
        let reply = http(port, "POST", "/session", Some(&caps))
            .and_then(|r| value_of(r, "new session"))
            .map_err(|e| format!("{e}\n{}", browser.driver_log_tail()))?;
        browser.session = reply["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no sessionId in {reply}"))?
            .to_string();
        Ok(browser)
    }

    fn wait_ready(&mut self, limit: Duration) -> WdResult<()> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.driver.try_wait() {
                return Err(format!(
                    "chromedriver exited with {status}\n{}",
                    self.driver_log_tail()
                ));
            }
            if let Ok(r) = http(self.port, "GET", "/status", None) {
                if r.body["value"]["ready"].as_bool() == Some(true) {
                    return Ok(());
                }
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "chromedriver not ready after {limit:?}\n{}",
                    self.driver_log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The end of chromedriver's log, for error messages.
    pub fn driver_log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.scratch.path().join("chromedriver.log"))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("chromedriver log (last lines):\n{tail}")
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> WdResult<Value> {
        let full = format!("/session/{}{path}", self.session);
        let r = http(self.port, method, &full, body.as_ref())?;
        value_of(r, &format!("{method} {path}"))
    }

    /// Loads `url` and waits for the page's load event.
    pub fn navigate(&self, url: &str) -> WdResult<()> {
        self.command("POST", "/url", Some(json!({ "url": url })))
            .map(|_| ())
    }

    /// A `file://` URL for a local file.
    pub fn file_url(path: &Path) -> String {
        let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut url = String::from("file://");
        for b in abs.to_string_lossy().bytes() {
            // Percent-encode all but the characters a path can carry as they are.
            if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
                url.push(b as char);
            } else {
                url.push_str(&format!("%{b:02X}"));
            }
        }
        url
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page and returns its
    /// value; a returned promise is awaited.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> WdResult<Value> {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Browser console entries since the last call: objects with `level`, `message`, `source`.
    pub fn browser_log(&self) -> WdResult<Vec<Value>> {
        let body = json!({ "type": "browser" });
        // Newer chromedrivers serve the legacy log endpoint under /se/; older ones without.
        let value = self
            .command("POST", "/se/log", Some(body.clone()))
            .or_else(|_| self.command("POST", "/log", Some(body)))?;
        Ok(value.as_array().cloned().unwrap_or_default())
    }

    /// The first element matching a CSS selector, as a WebDriver element id.
    pub fn find_element(&self, css: &str) -> WdResult<String> {
        let v = self.command(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        )?;
        v[ELEMENT_KEY]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no element reference in {v}"))
    }

    pub fn send_keys(&self, element: &str, text: &str) -> WdResult<()> {
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .map(|_| ())
    }

    pub fn click(&self, element: &str) -> WdResult<()> {
        self.command(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .map(|_| ())
    }

    pub fn title(&self) -> WdResult<String> {
        Ok(self
            .command("GET", "/title", None)?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_parsed_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{\"value\":null}";
        let r = parse_response(plain).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, json!({ "value": null }));
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"val\r\n8\r\nue\":{}}\n\r\n0\r\n\r\n";
        let r = parse_response(chunked).unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.body, json!({ "value": {} }));
        let e = value_of(
            Response {
                status: 404,
                body: json!({"value": {"error": "no such element", "message": "gone"}}),
            },
            "find",
        )
        .unwrap_err();
        assert!(e.contains("no such element") && e.contains("gone"), "{e}");
    }

    #[test]
    fn file_urls_are_percent_encoded() {
        let url = Browser::file_url(Path::new("/tmp/a b/r&é.html"));
        assert_eq!(url, "file:///tmp/a%20b/r%26%C3%A9.html");
    }
}
