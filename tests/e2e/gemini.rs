//! The Gemini adapter, golden: recorded fixtures compared field by field through the gateway.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use smart_router_tests::{Gateway, root};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(root().join("tests/fixtures/gemini").join(name)).expect("fixture")
}

type Seen = Mutex<Vec<(String, HeaderMap, Value)>>;

async fn generate(
    State(seen): State<Arc<Seen>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let stream = path.contains(":streamGenerateContent");
    let embed = path.contains(":batchEmbedContents");
    seen.lock().expect("lock").push((
        path,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    ));
    if embed {
        (
            [("content-type", "application/json")],
            fixture("embed.response.gemini.json"),
        )
            .into_response()
    } else if stream {
        (
            [("content-type", "text/event-stream")],
            fixture("stream.gemini.sse"),
        )
            .into_response()
    } else {
        (
            [("content-type", "application/json")],
            fixture("response.gemini.json"),
        )
            .into_response()
    }
}

async fn setup() -> (Gateway, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/v1beta/models/{*rest}", post(generate))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let gw = Gateway::builder()
        .providers(&format!(
            "providers:\n  gemini:\n    adapter: gemini\n    base_url: http://{addr}\n    api_key: test-gemini-key\n    channels: [{{model: gemini-test}}, {{model: text-embedding-004, capabilities: [embeddings], input_cost_per_1k: 0.001}}]\n"
        ))
        .adapters(&["gemini"])
        .start()
        .await;
    (gw, seen)
}

#[tokio::test]
async fn request_and_response_match_the_golden_fixtures() {
    let (gw, seen) = setup().await;
    let resp = gw
        .chat(serde_json::from_str(&fixture("request.openai.json")).expect("json"))
        .await;
    assert_eq!(resp.status(), 200);
    let got: Value = resp.json().await.expect("json");
    assert_eq!(
        got,
        serde_json::from_str::<Value>(&fixture("response.openai.json")).expect("json")
    );

    let (path, headers, sent) = seen.lock().expect("lock")[0].clone();
    assert_eq!(path, fixture("request.path").trim());
    assert_eq!(
        sent,
        serde_json::from_str::<Value>(&fixture("request.gemini.json")).expect("json")
    );
    assert_eq!(headers["x-goog-api-key"], "test-gemini-key");
    assert!(!path.contains("key="), "the key never goes in the URL");
}

#[tokio::test]
async fn more_candidates_than_gemini_gives_move_on_without_reaching_it() {
    let (gw, seen) = setup().await;
    let ask = |n: u32| json!({"model": "gemini-test", "n": n, "messages": [{"role": "user", "content": "hi"}]});
    let resp = gw.chat(ask(8)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        seen.lock().expect("lock")[0].2["generationConfig"]["candidateCount"],
        8
    );

    // Gemini would refuse 9 with a 400: its adapter says `unsupported` instead, so the request
    // would move on to another channel; with none left it is the client's 400, Gemini untouched.
    let resp = gw.chat(ask(9)).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unsupported_by_channels", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 8 candidates")),
        "{body}"
    );
    assert_eq!(seen.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn the_stream_matches_the_golden_fixture() {
    let (gw, seen) = setup().await;
    let mut request: Value = serde_json::from_str(&fixture("request.openai.json")).expect("json");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let resp = gw.chat(request).await;
    assert_eq!(resp.status(), 200);
    let parse = crate::chat::sse_values;
    assert_eq!(
        parse(&resp.text().await.expect("body")),
        parse(&fixture("stream.openai.sse"))
    );
    assert!(
        seen.lock().expect("lock")[0]
            .0
            .ends_with(":streamGenerateContent?alt=sse")
    );
}

/// Embeddings: `batchEmbedContents` out, OpenAI's `list` back. Gemini reports no token counts, so
/// the host bills its estimate (4 bytes a token, 5 + 3 here) and puts it in the body.
#[tokio::test]
async fn embeddings_match_the_golden_fixtures() {
    let (gw, seen) = setup().await;
    let resp = gw
        .embeddings(serde_json::from_str(&fixture("embed.request.openai.json")).expect("json"))
        .await;
    assert_eq!(resp.status(), 200);
    let got: Value = resp.json().await.expect("json");
    assert_eq!(
        got,
        serde_json::from_str::<Value>(&fixture("embed.response.openai.json")).expect("json")
    );
    let (path, headers, sent) = seen.lock().expect("lock")[0].clone();
    assert_eq!(path, fixture("embed.request.path").trim());
    assert_eq!(
        sent,
        serde_json::from_str::<Value>(&fixture("embed.request.gemini.json")).expect("json")
    );
    assert_eq!(headers["x-goog-api-key"], "test-gemini-key");
    let rows = gw
        .rows("SELECT endpoint, prompt_tokens, cost_micros FROM usage")
        .await;
    use sqlx::Row;
    assert_eq!(rows[0].get::<String, _>("endpoint"), "embeddings");
    assert_eq!(rows[0].get::<i64, _>("prompt_tokens"), 8);
    // 8 tokens at $0.001 per 1,000.
    assert_eq!(rows[0].get::<i64, _>("cost_micros"), 8);
}
