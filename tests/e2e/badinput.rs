//! Bad clients: slow headers, too many headers, oversized bodies — a clear answer or a closed
//! connection, and no effect on anyone else.

use std::time::Duration;

use serde_json::{Value, json};
use smart_router_tests::Gateway;
use smart_router_tests::gateway::KEY;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw TCP connection to the gateway, for requests no HTTP client would send.
async fn raw(gw: &Gateway) -> tokio::net::TcpStream {
    let addr = gw.base.trim_start_matches("http://");
    tokio::net::TcpStream::connect(addr).await.expect("connect")
}

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
    let mut slow = raw(&gw).await;
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

/// One request of [`the_direct_path_and_the_router_answer_alike`], and the status it gets.
struct Case {
    what: &'static str,
    path: &'static str,
    key: Option<&'static str>,
    header: Option<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: u16,
}

/// Chat and embeddings requests from SDKs go straight to their handlers; a browser's (with an
/// `Origin`) go through the router and its CORS layer. Both must answer alike, bad input
/// included.
#[tokio::test]
async fn the_direct_path_and_the_router_answer_alike() {
    let gw = gateway().await;
    let ok = json!({"model": "mock-small", "messages": [{"role": "user", "content": "hi"}]});
    let big = json!({"model": "mock-small", "messages": [{"role": "user", "content": "x".repeat(100_000)}]});
    let send = |case: &Case, origin: bool| {
        let mut req = gw
            .client
            .post(gw.url(case.path))
            .header("content-type", "application/json")
            .body(case.body.clone());
        if let Some(k) = case.key {
            req = req.bearer_auth(k);
        }
        if let Some((name, value)) = case.header {
            req = req.header(name, value);
        }
        if origin {
            req = req.header("origin", "http://page.example");
        }
        req.send()
    };
    let case = |what, path, key, body: &Value, status| Case {
        what,
        path,
        key,
        header: None,
        body: serde_json::to_vec(body).expect("json"),
        status,
    };
    let chat = "/v1/chat/completions";
    let cases = [
        case("answered", chat, Some(KEY), &ok, 200),
        case("unprefixed path", "/chat/completions", Some(KEY), &ok, 200),
        case("no key", chat, None, &ok, 401),
        case("wrong key", chat, Some("sk-wrong"), &ok, 401),
        Case {
            header: Some(("x-client-request-id", "a\tb")),
            ..case("bad client id", chat, Some(KEY), &ok, 400)
        },
        case("too large", chat, Some(KEY), &big, 413),
        Case {
            body: b"{nope".to_vec(),
            ..case("not JSON", chat, Some(KEY), &ok, 400)
        },
        case(
            "embeddings, no such model",
            "/v1/embeddings",
            Some(KEY),
            &json!({"model": "nope", "input": "hi"}),
            404,
        ),
    ];
    for c in &cases {
        let (what, status) = (c.what, c.status);
        let direct = send(c, false).await.expect("send");
        let routed = send(c, true).await.expect("send");
        assert_eq!(direct.status().as_u16(), status, "{what}: direct");
        assert_eq!(
            routed.status().as_u16(),
            status,
            "{what}: through the router"
        );
        assert!(
            !direct.headers().contains_key("access-control-allow-origin"),
            "{what}"
        );
        assert!(
            routed.headers().contains_key("access-control-allow-origin"),
            "{what}"
        );
        let (a, b): (Value, Value) = (
            direct.json().await.expect("json"),
            routed.json().await.expect("json"),
        );
        if status == 200 {
            assert_eq!(a["object"], "chat.completion", "{what}");
            assert_eq!(b["object"], "chat.completion", "{what}");
        } else {
            assert_eq!(a["error"]["type"], b["error"]["type"], "{what}: {a} {b}");
            assert_eq!(a["error"]["code"], b["error"]["code"], "{what}: {a} {b}");
            assert_eq!(
                a["error"]["message"], b["error"]["message"],
                "{what}: {a} {b}"
            );
        }
    }
}

/// A body sent in chunks, with no length announced, is held to the same limit on the direct path.
#[tokio::test]
async fn a_chunked_body_over_the_limit_is_refused() {
    let gw = gateway().await;
    let mut conn = raw(&gw).await;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.expect("write");
    let chunk = "x".repeat(40_000);
    for _ in 0..2 {
        let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
        // The gateway may answer and close before the second chunk is taken.
        if conn.write_all(framed.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("answered")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("request_too_large"), "{text}");
}

/// Sends `pieces` as the chunks of one request's body, each written on its own so the gateway
/// reads them apart, and returns the whole answer (the request asks the connection be closed).
async fn chunked(gw: &Gateway, pieces: &[&[u8]]) -> String {
    let mut conn = raw(gw).await;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.expect("write");
    for piece in pieces {
        let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
        framed.extend_from_slice(piece);
        framed.extend_from_slice(b"\r\n");
        conn.write_all(&framed).await.expect("write");
        conn.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    conn.write_all(b"0\r\n\r\n").await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf))
        .await
        .expect("answered")
        .expect("read");
    String::from_utf8_lossy(&buf).into_owned()
}

/// The body's text is taken from however many reads it came in: a character split between two
/// of them is whole, and bytes that are not UTF-8 are refused in one piece or in several.
#[tokio::test]
async fn a_body_in_several_reads_is_one_text_and_bad_utf8_is_refused() {
    let gw = gateway().await;
    let body =
        r#"{"model": "mock-small", "messages": [{"role": "user", "content": "café au lait"}]}"#;
    let at = body.find('é').expect("é") + 1; // inside the two bytes of `é`
    let (a, b) = body.as_bytes().split_at(at);
    let (b, c) = b.split_at(b.len() / 2);
    let answer = chunked(&gw, &[a, b, c]).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("chat.completion"), "{answer}");

    // Latin-1's `é`, a byte that starts no UTF-8 character here.
    let bad = [
        br#"{"model": "mock-small", "messages": [{"role": "user", "content": "caf"#.as_slice(),
        &[0xe9],
        br#""}]}"#,
    ]
    .concat();
    let answer = chunked(&gw, &[&bad[..20], &bad[20..]]).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid_request_error"), "{answer}");
    assert!(answer.contains("not valid UTF-8"), "{answer}");

    let resp = gw.chat_raw(bad).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("json");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not valid UTF-8")),
        "{err}"
    );
}
