//! Chat templates: a model's own Jinja template (`tokenizer.chat_template` in a GGUF,
//! `chat_template` in `tokenizer_config.json`, or `chat_template.jinja`) rendered with
//! `minijinja` the way transformers' `apply_chat_template` renders it with Jinja2:
//! `trim_blocks` and `lstrip_blocks` on, `raise_exception`, a `tojson` that writes what
//! Python's `json.dumps` writes, `strftime_now`, and Python's string and dict methods
//! (`.strip()`, `.items()`, …). There is no loader: a template cannot read files.

use crate::{Error, Result};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    name: String,
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .finish()
    }
}

const TEMPLATE: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`; a syntax error is an error naming the template and the line.
    pub fn new(source: impl Into<String>) -> Result<Self> {
        Self::with_name("chat template", source)
    }

    /// As `new`, with a name (the model or file) that errors will carry.
    pub fn with_name(name: impl Into<String>, source: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::Invalid(format!("{name}: {e}")))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE, source.into())
            .map_err(|e| Error::Invalid(format!("{name}: cannot compile the template: {e}")))?;
        Ok(ChatTemplate { name, env })
    }

    /// The prompt for `messages`; with `add_generation_prompt`, ending where the assistant's
    /// reply starts. An error raised by the template (`raise_exception`) or by rendering is an
    /// error naming this template.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        let ctx = minijinja::context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
        };
        self.render_value(ctx)
    }

    /// Whether the template reads the variable `name` (e.g. `tools`).
    pub fn uses(&self, name: &str) -> bool {
        self.env
            .get_template(TEMPLATE)
            .is_ok_and(|t| t.undeclared_variables(false).contains(name))
    }

    /// Renders with any context (tools, documents, template-specific flags).
    pub fn render_value(&self, ctx: Value) -> Result<String> {
        let tmpl = self
            .env
            .get_template(TEMPLATE)
            .map_err(|e| Error::Invalid(format!("{}: {e}", self.name)))?;
        tmpl.render(ctx).map_err(|e| {
            let detail = match e.kind() {
                ErrorKind::InvalidOperation if e.detail().is_some() => {
                    format!("the template raised: {}", e.detail().unwrap_or_default())
                }
                _ => e.to_string(),
            };
            let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
            Error::Invalid(format!("{}: cannot render{line}: {detail}", self.name))
        })
    }
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, as transformers' chat template environment defines `tojson`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => Some(v.as_str().map(str::to_string).ok_or_else(|| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                )
            })?),
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() && !v.is_undefined() => {
            let a = v.get_item_by_index(0)?;
            let b = v.get_item_by_index(1)?;
            match (a.as_str(), b.as_str()) {
                (Some(a), Some(b)) => (a.to_string(), b.to_string()),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    ))
                }
            }
        }
        _ => {
            let item = if indent.is_some() { "," } else { ", " };
            (item.to_string(), ": ".to_string())
        }
    };
    let opts = JsonOpts {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr` of a float, as `json.dumps` writes it.
fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Shortest round-trip digits and exponent, then Python's layout: positional for
    // -4 <= exponent < 16, scientific otherwise.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{x}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

fn newline(out: &mut String, opts: &JsonOpts, level: usize) {
    if let Some(ind) = &opts.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(ind);
        }
    }
}

fn key_string(key: &Value) -> std::result::Result<String, minijinja::Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::None | ValueKind::Undefined => Ok("null".into()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::Number if key.is_integer() => Ok(key.to_string()),
        ValueKind::Number => Ok(python_float(f64::try_from(key.clone()).unwrap_or(f64::NAN))),
        _ => Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "tojson: keys must be str, int, float, bool or None, not {}",
                key.kind()
            ),
        )),
    }
}

fn write_json(
    out: &mut String,
    value: &Value,
    opts: &JsonOpts,
    level: usize,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if value.is_integer() {
                out.push_str(&value.to_string());
            } else {
                let x = f64::try_from(value.clone())?;
                out.push_str(&python_float(x));
            }
        }
        ValueKind::String => {
            json_string(out, value.as_str().unwrap_or_default(), opts.ensure_ascii)
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((key_string(&key)?, item));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, opts, level + 1);
                json_string(out, k, opts.ensure_ascii);
                out.push_str(&opts.key_sep);
                write_json(out, v, opts, level + 1)?;
            }
            newline(out, opts, level);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, opts, level + 1);
                write_json(out, v, opts, level + 1)?;
            }
            newline(out, opts, level);
            out.push(']');
        }
        other => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialise a value of kind {other}"),
            ))
        }
    }
    Ok(())
}

/// `strftime_now(format)`: the current UTC time with the common `strftime` fields
/// (%Y %m %d %e %H %M %S %j %y %B %b %A %a %%).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(secs, &format)
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days-to-civil algorithm.
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn strftime(secs: i64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let before: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = before[(m - 1) as usize] + d + u32::from(leap && m > 2);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python() {
        assert_eq!(python_float(2.5), "2.5");
        assert_eq!(python_float(1.0), "1.0");
        assert_eq!(python_float(1e16), "1e+16");
        assert_eq!(python_float(1.5e-5), "1.5e-05");
        assert_eq!(python_float(0.0001), "0.0001");
        assert_eq!(python_float(123456789.125), "123456789.125");
    }

    #[test]
    fn strftime_known_dates() {
        // 2024-07-26 13:05:09 UTC was a Friday.
        assert_eq!(
            strftime(1_722_000_309, "%d %b %Y %H:%M:%S %A %j %%"),
            "26 Jul 2024 13:25:09 Friday 208 %"
        );
        assert_eq!(strftime(0, "%Y-%m-%d %a"), "1970-01-01 Thu");
    }

    #[test]
    fn tojson_matches_json_dumps() {
        let t = ChatTemplate::new(
            "{{ {'a': 'é<&>\\'\"', 'b': [1, 2.5, true, none], 'c': {}} | tojson }}|{{ [1, {'x': []}] | tojson(indent=2) }}|{{ 'é' | tojson(ensure_ascii=true) }}",
        )
        .unwrap();
        let out = t.render(&[], false, "", "").unwrap();
        assert_eq!(
            out,
            "{\"a\": \"é<&>'\\\"\", \"b\": [1, 2.5, true, null], \"c\": {}}|[\n  1,\n  {\n    \"x\": []\n  }\n]|\"\\u00e9\""
        );
    }

    #[test]
    fn errors_name_the_template() {
        let t =
            ChatTemplate::with_name("my-model", "{{ raise_exception('no system role') }}").unwrap();
        let e = t.render(&[], true, "", "").unwrap_err().to_string();
        assert!(
            e.contains("my-model") && e.contains("no system role"),
            "{e}"
        );
        let e = ChatTemplate::with_name("bad", "{% for %}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad") && e.contains("syntax"), "{e}");
    }

    #[test]
    fn python_methods_and_loop_controls() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}[{{ m.content.strip() }}]{% endfor %}",
        )
        .unwrap();
        let msgs = [
            ChatMessage::new("user", "  hi  "),
            ChatMessage::new("user", "x"),
        ];
        assert_eq!(t.render(&msgs, false, "", "").unwrap(), "[hi]");
    }
}
