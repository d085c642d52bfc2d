//! A scriptable OpenAI-compatible upstream on port 0 that records what it receives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// What the mock does for a model.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Answers normally (stream or not, as asked), with content `reply from <model>`.
    Ok,
    /// Answers with this status, JSON body and extra headers.
    Fail {
        status: u16,
        body: Value,
        headers: Vec<(String, String)>,
    },
    /// Waits this long, then answers normally.
    Slow(Duration),
    /// Never answers.
    Hang,
    /// Streams `n` content chunks, then breaks off with an error event inside the 200 stream.
    StreamErrorAfter(usize),
    /// Streams `n` content chunks, then resets the connection mid-body.
    ResetAfter(usize),
    /// Streams `n` content chunks, then ends the body cleanly with no `finish_reason` and no
    /// `[DONE]`: a truncated stream.
    TruncateAfter(usize),
    /// Streams `n` content chunks, then goes silent with the connection open (never ends).
    StallAfter(usize),
    /// Answers exactly this: status, content type and body.
    Raw {
        status: u16,
        content_type: &'static str,
        body: String,
    },
}

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    /// The body exactly as it arrived.
    pub raw: String,
    /// The address it came from: one per connection.
    pub peer: SocketAddr,
}

#[derive(Default)]
pub struct MockState {
    pub received: Mutex<Vec<Received>>,
    behaviours: Mutex<HashMap<String, Behaviour>>,
}

/// A running mock upstream. Its base URL (`…/v1`) goes into `providers.yaml`.
#[derive(Clone)]
pub struct MockUpstream {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
}

impl MockUpstream {
    pub async fn start() -> MockUpstream {
        let state = Arc::new(MockState::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, app).await;
        });
        MockUpstream { addr, state }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set(&self, model: &str, b: Behaviour) {
        self.state
            .behaviours
            .lock()
            .expect("lock")
            .insert(model.to_string(), b);
    }

    /// Requests received for `model`.
    pub fn calls(&self, model: &str) -> Vec<Received> {
        self.state
            .received
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.body["model"] == model)
            .cloned()
            .collect()
    }

    pub fn total_calls(&self) -> usize {
        self.state.received.lock().expect("lock").len()
    }
}

async fn chat(
    State(state): State<Arc<MockState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(&state, "/v1/chat/completions", peer, headers, &body).await
}

async fn embeddings(
    State(state): State<Arc<MockState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(&state, "/v1/embeddings", peer, headers, &body).await
}

async fn serve(
    state: &MockState,
    path: &str,
    peer: SocketAddr,
    headers: HeaderMap,
    body: &[u8],
) -> Response {
    let raw = String::from_utf8_lossy(body).into_owned();
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or("").to_string();
    state.received.lock().expect("lock").push(Received {
        path: path.into(),
        headers,
        body: body.clone(),
        raw,
        peer,
    });
    let answer = |body: &Value, model: &str, cut: Cut| {
        if path == "/v1/embeddings" {
            embedding(body, model)
        } else {
            answer(body, model, cut)
        }
    };
    let behaviour = state
        .behaviours
        .lock()
        .expect("lock")
        .get(&model)
        .cloned()
        .unwrap_or(Behaviour::Ok);
    match behaviour {
        Behaviour::Ok => answer(&body, &model, Cut::None),
        Behaviour::Slow(d) => {
            tokio::time::sleep(d).await;
            answer(&body, &model, Cut::None)
        }
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Behaviour::Fail {
            status,
            body,
            headers,
        } => {
            let mut resp = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                axum::Json(body),
            )
                .into_response();
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) = (
                    axum::http::HeaderName::from_bytes(k.as_bytes()),
                    axum::http::HeaderValue::from_str(&v),
                ) {
                    resp.headers_mut().insert(k, v);
                }
            }
            resp
        }
        Behaviour::StreamErrorAfter(n) => answer(&body, &model, Cut::ErrorEvent(n)),
        Behaviour::ResetAfter(n) => answer(&body, &model, Cut::Reset(n)),
        Behaviour::TruncateAfter(n) => answer(&body, &model, Cut::Truncate(n)),
        Behaviour::StallAfter(n) => answer(&body, &model, Cut::Stall(n)),
        Behaviour::Raw {
            status,
            content_type,
            body,
        } => Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
    }
}

/// One 3-number vector per input, `[index, length of the text, 1]`, and 5 prompt tokens per input.
fn embedding(body: &Value, model: &str) -> Response {
    let inputs: Vec<Value> = match &body["input"] {
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let len = text.as_str().map_or(0, str::len);
            json!({"object": "embedding", "index": i, "embedding": [i as f64, len as f64, 1.0]})
        })
        .collect();
    let tokens = 5 * inputs.len();
    axum::Json(json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response()
}

/// How a stream ends early, after `n` content chunks.
#[derive(Clone, Copy, PartialEq)]
enum Cut {
    None,
    ErrorEvent(usize),
    Reset(usize),
    Truncate(usize),
    Stall(usize),
}

fn answer(body: &Value, model: &str, cut: Cut) -> Response {
    let text = format!("reply from {model}");
    let usage = json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
        "prompt_tokens_details": {"cached_tokens": 3}, "completion_tokens_details": {"reasoning_tokens": 2}});
    if body["stream"] != true {
        let full = json!({"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage}).to_string();
        // A cut body: half the JSON, then a reset or a clean (truncated) end.
        let half = Bytes::from(full[..full.len() / 2].to_string());
        let pieces: Vec<Result<Bytes, std::io::Error>> = match cut {
            Cut::Reset(_) => vec![
                Ok(half),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "mock reset",
                )),
            ],
            Cut::Truncate(_) => vec![Ok(half)],
            _ => return ([("content-type", "application/json")], full).into_response(),
        };
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(futures_util::stream::iter(pieces)))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    let mut events = vec![
        ": keep-alive".to_string(),
        format!(
            "data: {}",
            chunk(json!({"role": "assistant", "content": ""}), Value::Null)
        ),
    ];
    let mut reset = false;
    for (i, word) in text.split(' ').enumerate() {
        match cut {
            Cut::ErrorEvent(n) if n == i => {
                events.push(format!("data: {}", json!({"error": {"message": "upstream exploded mid-stream", "type": "server_error"}})));
                break;
            }
            Cut::Reset(n) if n == i => {
                reset = true;
                break;
            }
            Cut::Truncate(n) | Cut::Stall(n) if n == i => break,
            _ => {}
        }
        events.push(format!(
            "data: {}",
            chunk(json!({"content": format!("{word} ")}), Value::Null)
        ));
    }
    if cut == Cut::None {
        events.push(format!("data: {}", chunk(json!({}), json!("stop"))));
        if body["stream_options"]["include_usage"] == true {
            events.push(format!("data: {}", json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": usage})));
        }
        events.push("data: [DONE]".into());
    }
    // Sent as separate body pieces, a little apart, like a real stream; a reset is a body error,
    // on which the server drops the connection mid-body.
    let mut pieces: Vec<Result<Bytes, std::io::Error>> = events
        .into_iter()
        .map(|e| Ok(Bytes::from(format!("{e}\n\n"))))
        .collect();
    if reset {
        pieces.push(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "mock reset",
        )));
    }
    let stream = futures_util::stream::unfold(pieces.into_iter(), |mut it| async move {
        let e = it.next()?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        Some((e, it))
    });
    let stream: futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>> =
        if matches!(cut, Cut::Stall(_)) {
            Box::pin(futures_util::StreamExt::chain(
                stream,
                futures_util::stream::pending(),
            ))
        } else {
            Box::pin(stream)
        };
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
