//! OpenAI-shaped requests, responses and errors. Bodies are parsed here, by hand from JSON
//! values, so that every problem becomes a 4xx with `{"error": {"message", "type", "param"}}`
//! naming the field, as OpenAI's API answers.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// A request that cannot be served, with the status and OpenAI error type it maps to.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    /// Seconds for a Retry-After header (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: param.map(str::to_string),
            retry_after: None,
        }
    }

    pub fn status(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": Value::Null,
        }});
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert("retry-after", s.to_string().parse().expect("digits"));
        }
        r
    }
}

/// The body as a JSON object (malformed JSON and invalid UTF-8 are named).
pub fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid(
            "the request body is empty: expected a JSON object",
            None,
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::invalid(format!("the body is not valid UTF-8: {e}"), None))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::invalid("expected a JSON object", None)),
        Err(e) => Err(ApiError::invalid(format!("malformed JSON: {e}"), None)),
    }
}

pub fn string_field(o: &serde_json::Map<String, Value>, key: &str) -> Result<String, ApiError> {
    match o.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::invalid(
            format!("'{key}' must be a string"),
            Some(key),
        )),
        None => Err(ApiError::invalid(format!("'{key}' is required"), Some(key))),
    }
}

/// A number field in `[min, max]`, or `default` when absent or null.
pub fn number_field(
    o: &serde_json::Map<String, Value>,
    key: &str,
    default: f64,
    min: f64,
    max: f64,
) -> Result<f64, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            if v.is_finite() && (min..=max).contains(&v) {
                Ok(v)
            } else {
                Err(ApiError::invalid(
                    format!("'{key}' must be between {min} and {max}, got {n}"),
                    Some(key),
                ))
            }
        }
        Some(_) => Err(ApiError::invalid(
            format!("'{key}' must be a number"),
            Some(key),
        )),
    }
}

pub fn integer_field(
    o: &serde_json::Map<String, Value>,
    key: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(ApiError::invalid(
                format!("'{key}' must be an integer between {min} and {max}, got {n}"),
                Some(key),
            )),
        },
        Some(_) => Err(ApiError::invalid(
            format!("'{key}' must be an integer"),
            Some(key),
        )),
    }
}

/// A string or a list of strings (`input`, `stop`); `None` when absent or null.
pub fn strings_field(
    o: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<Vec<String>>, ApiError> {
    let bad = || {
        ApiError::invalid(
            format!("'{key}' must be a string or a list of strings"),
            Some(key),
        )
    };
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}

pub fn bool_field(o: &serde_json::Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(
            format!("'{key}' must be true or false"),
            Some(key),
        )),
    }
}

/// Compares a presented secret with the expected one in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn fields_are_checked_by_type_and_range() {
        let o = parse_object(br#"{"t": -1, "n": 0, "s": [1], "x": "y"}"#).unwrap();
        assert!(number_field(&o, "t", 1.0, 0.0, 2.0)
            .unwrap_err()
            .message
            .contains("'t'"));
        assert!(integer_field(&o, "n", 16, 1, 100).is_err());
        assert!(strings_field(&o, "s").is_err());
        assert_eq!(string_field(&o, "x").unwrap(), "y");
        assert!(parse_object(b"\xff\xfe")
            .unwrap_err()
            .message
            .contains("UTF-8"));
        assert!(parse_object(b"{")
            .unwrap_err()
            .message
            .contains("malformed JSON"));
        assert!(parse_object(b"").unwrap_err().message.contains("empty"));
    }
}
