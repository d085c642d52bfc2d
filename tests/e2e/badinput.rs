//! Bad clients: slow headers, too many headers, oversized bodies — a clear answer or a closed
//! connection, and no effect on anyone else.

use std::time::Duration;

use serde_json::{Value, json};
use smart_router_tests::Gateway;
use smart_router_tests::gateway::KEY;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn gateway() -> Gateway {
    Gateway::builder()
        .providers("providers:\n  mock:\n    adapter: openai\n    base_url: mock://\n    channels: [{model: mock-small}]\n")
        .system("components_dir: components\nserver:\n  header_read_timeout_secs: 1\n  max_body_bytes: 65536\n")
        .start()
        .await
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_and_others_are_served() {
    let gw = gateway().await;
    let addr = gw.base.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
        .await
        .expect("write");
    // Meanwhile, a normal client is served.
    let resp = gw
        .chat(json!({"model": "mock-small", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(resp.status(), 200);
    // The header timeout closes the slow connection (hyper may first answer 408).
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the slow connection was closed by the gateway"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn too_many_headers_and_oversized_bodies_are_refused() {
    let gw = gateway().await;
    let mut req = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY);
    for i in 0..150 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let status = req
        .json(&json!({"model": "mock-small", "messages": []}))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert!(matches!(status, Ok(431) | Err(_)), "{status:?}");

    let big = json!({"model": "mock-small", "messages": [{"role": "user", "content": "x".repeat(100_000)}]});
    let resp = gw.chat(big).await;
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "request_too_large");
    assert_eq!(
        gw.chat(json!({"model": "mock-small", "messages": [{"role": "user", "content": "hi"}]}))
            .await
            .status(),
        200
    );
}
