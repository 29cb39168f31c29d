//! Property test: random request bodies — raw bytes, arbitrary JSON, and objects with the
//! API's own field names holding values of any type — thrown at every model route of the
//! router. Each must get a 200 or a 4xx with an OpenAI-shaped error, never a 5xx or a panic.

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use largo::data::mnist::Normalization;
use largo::models::sentence::SentenceEncoder;
use largo::models::{GptConfig, Mlp, MlpConfig, TransformerLm};
use largo::rng::Rng;
use largo::serve::{router, ServeConfig, Served};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceExt;

fn models() -> BTreeMap<String, Arc<Served>> {
    let chars = "abcdefghij KING:".chars().collect();
    let tokenizer = largo::data::text::char_tokenizer(&chars).unwrap();
    let mut lm = TransformerLm::new(
        GptConfig {
            vocab_size: tokenizer.get_vocab_size(true),
            block_size: 16,
            n_layer: 1,
            n_head: 2,
            n_embd: 8,
            ff: 16,
            ..GptConfig::default()
        }
        .spec(),
    )
    .unwrap();
    lm.init(&mut Rng::new(1));
    let mut mlp = Mlp::new(MlpConfig {
        input: 16,
        hidden: vec![8],
        classes: 3,
        ..MlpConfig::default()
    })
    .unwrap();
    mlp.init(&mut Rng::new(2));
    let bert = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert/mean");
    let mut m = BTreeMap::new();
    m.insert(
        "lm".to_string(),
        Arc::new(Served::Lm {
            model: lm,
            tokenizer,
        }),
    );
    m.insert(
        "emb".to_string(),
        Arc::new(Served::Embedder(SentenceEncoder::load(&bert).unwrap())),
    );
    m.insert(
        "digits".to_string(),
        Arc::new(Served::Classifier {
            model: Mutex::new(Box::new(mlp)),
            norm: Normalization {
                mean: 0.1,
                std: 0.3,
            },
            side: 4,
        }),
    );
    m
}

/// JSON values of every type, nested a little, with the edge cases handlers must refuse.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(0i64), Just(-1), Just(1), Just(16), Just(1 << 40)].prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![Just(0.0f64), Just(0.5), Just(2.5), Just(-0.1), Just(1e300)]
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("lm"),
            Just("emb"),
            Just("digits"),
            Just("KING"),
            Just(""),
            Just("aGVsbG8=")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "input",
    "encoding_format",
    "image",
    "pixels",
    "top_k",
    "user",
];

/// Objects made of the API's field names with random values: most reach deep into the
/// handlers' validation, some are valid requests.
fn api_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(FIELDS), any_json(), 0..7)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        any_json().prop_map(|v| v.to_string().into_bytes()),
        api_object().prop_map(|v| v.to_string().into_bytes()),
        api_object().prop_map(|v| v.to_string().into_bytes()),
        // A valid request with one field replaced by a random value.
        (prop::sample::select(FIELDS), any_json()).prop_map(|(k, v)| {
            let mut o = json!({"model": "lm", "prompt": "KING", "max_tokens": 4, "seed": 1,
                                "input": ["ab", "c"], "pixels": vec![0; 16]});
            o[k] = v;
            o.to_string().into_bytes()
        }),
    ]
}

#[test]
fn random_bodies_never_crash_the_handlers() {
    let cfg = ServeConfig {
        max_tokens: 8,
        request_timeout: Duration::from_secs(30),
        ..ServeConfig::default()
    };
    let app = router(models(), cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let routes = ["/v1/completions", "/v1/embeddings", "/v1/classify"];
    let statuses = std::cell::RefCell::new(BTreeMap::<u16, usize>::new());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 10_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&(0..routes.len(), body()), |(route, bytes)| {
            let req = Request::post(routes[route])
                .header("content-type", "application/json")
                .body(Body::from(bytes.clone()))
                .unwrap();
            let (status, body) = rt.block_on(async {
                let resp = app.clone().oneshot(req).await.unwrap();
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, body)
            });
            *statuses.borrow_mut().entry(status).or_default() += 1;
            prop_assert!(
                status == 200 || (400..500).contains(&status),
                "{} {:?} → {status}: {}",
                routes[route],
                String::from_utf8_lossy(&bytes),
                String::from_utf8_lossy(&body)
            );
            if status != 200 {
                let v: Value = serde_json::from_slice(&body).expect("error body is JSON");
                prop_assert!(v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()));
                prop_assert!(v["error"]["type"].is_string());
            }
            Ok(())
        })
        .unwrap();
    let statuses = statuses.into_inner();
    eprintln!("statuses over 10,000 random bodies: {statuses:?}");
    // The generator reaches both outcomes: refusals and served requests.
    assert!(
        statuses.get(&200).copied().unwrap_or(0) > 50,
        "{statuses:?}"
    );
    assert!(
        statuses.get(&400).copied().unwrap_or(0) > 1000,
        "{statuses:?}"
    );
}
