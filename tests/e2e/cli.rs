//! The `smart-router` binary as a user runs it: check, keys, serve and graceful stop.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use smart_router_tests::gateway::temp_dir;
use smart_router_tests::{binary, root, serve_binary, serve_binary_with};

/// Runs `check` on the example config through `command` and asserts that every component
/// loaded; returns what it printed.
fn checked_ok(command: &mut Command) -> String {
    let out = command.current_dir(root()).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("ok: strategy `weighted-sort`") && text.contains("ok: adapter `openai`"),
        "{text}"
    );
    assert!(
        text.lines().last().is_some_and(|l| l.starts_with("ok: ")),
        "{text}"
    );
    text
}

/// The first column of `sql`'s rows, read from the database at `db` with a fresh connection.
async fn strings(db: &str, sql: &str) -> Vec<String> {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(db).await.expect("open");
    sqlx::query(sql)
        .fetch_all(&pool)
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Sends `signal` (`TERM`, `INT`) to `child`.
fn signal(child: &std::process::Child, signal: &str) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill")
            .success()
    );
}

#[test]
fn check_accepts_the_example_config() {
    let text = checked_ok(Command::new(binary()).args(["check", "--config", "config"]));
    // With the address space to spare, memories get 4 GiB slots (no bounds checks).
    assert!(!text.contains("cannot be reserved"), "{text}");
}

/// Under a `ulimit -v` of 4 TiB (4,096 slots of 4 GiB take about 16 TiB), every component still
/// loads, in slots of the memory cap with bounds checks, and the log says so.
/// Under a `ulimit -v` of 64 GiB no pool of memory slots fits (4,096 slots of the 256 MiB cap
/// take about 1.2 TiB): every component still loads, each instance's memory mapped on its own.
#[test]
fn check_falls_back_to_memories_mapped_per_instance_when_no_pool_fits() {
    let text = checked_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -v {} && exec \"$0\" check --config config",
                64u64 << 20
            ))
            .arg(binary()),
    );
    assert!(
        text.contains("no pool of component memories can be reserved"),
        "{text}"
    );
}

#[test]
fn check_falls_back_to_small_memory_slots_under_an_address_space_limit() {
    let text = checked_ok(
        Command::new("sh")
            .arg("-c")
            // `ulimit -v` counts KiB.
            .arg(format!(
                "ulimit -v {} && exec \"$0\" check --config config",
                4u64 << 30
            ))
            .arg(binary()),
    );
    assert!(
        text.contains("component memory slots of 4 GiB cannot be reserved"),
        "{text}"
    );
}

#[test]
fn check_points_at_the_file_and_field() {
    let dir = temp_dir("check");
    std::fs::write(dir.join("providers.yaml"), "providers:\n  p:\n    adapter: openai\n    base_url: http://x\n    channels:\n      - model: m\n        daily_limt: 5\n").expect("write");
    let out = Command::new(binary())
        .args(["check", "--config"])
        .arg(&dir)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("providers.yaml: providers.p.channels[0]") && text.contains("daily_limt"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn serve_answers_with_a_created_key_and_stops_gracefully_on_sigterm() {
    let dir = temp_dir("serve");
    let db = format!("sqlite://{}", dir.join("db.sqlite").display());
    let out = Command::new(binary())
        .args(["keys", "create", "--name", "ci", "--database", &db])
        .output()
        .expect("keys");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(key.starts_with("sk-sr-"));

    let (mut child, addr) = serve_binary(std::path::Path::new("config"), &db, None);
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/chat/completions");
    let resp = client
        .post(&url)
        .bearer_auth(&key)
        .json(&json!({"model": "auto:free", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
            .contains("built-in mock")
    );
    let wrong = client
        .post(&url)
        .bearer_auth("sk-sr-0000")
        .json(&json!({"model": "auto:free", "messages": []}))
        .send()
        .await
        .expect("send");
    assert_eq!(wrong.status(), 401);

    // SIGTERM: drains and exits 0.
    signal(&child, "TERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");

    // The key is stored only as a hash, and the usage row names the key's id.
    let bytes = std::fs::read(dir.join("db.sqlite")).expect("db");
    let wal = std::fs::read(dir.join("db.sqlite-wal")).unwrap_or_default();
    let hay = [bytes, wal].concat();
    assert!(
        !hay.windows(key.len()).any(|w| w == key.as_bytes()),
        "the raw key must not be stored"
    );
    let key_ids = strings(&db, "SELECT key_id FROM usage WHERE attempt > 0").await;
    assert_eq!(key_ids.len(), 1);
    assert!(key_ids[0].starts_with("key_"));
    let _ = std::fs::remove_dir_all(dir);
}

/// `keys list` shows what each key may do, never the key; `keys revoke` turns one off, and a
/// gateway started afterwards refuses it.
#[tokio::test]
async fn keys_are_listed_and_revoked_from_the_command_line() {
    let dir = temp_dir("keys");
    let db = format!("sqlite://{}", dir.join("db.sqlite").display());
    let run = |args: &[&str]| {
        let out = Command::new(binary())
            .args(args)
            .args(["--database", &db])
            .output()
            .expect("run");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let (ok, key, err) = run(&[
        "keys",
        "create",
        "--name",
        "ops",
        "--models",
        "auto:free",
        "--daily-budget",
        "2.5",
        "--rpm",
        "30",
        "--tpm",
        "45000",
    ]);
    assert!(ok, "{err}");
    let key = key.trim().to_string();
    let (ok, listed, err) = run(&["keys", "list"]);
    assert!(ok, "{err}");
    let line = listed
        .lines()
        .find(|l| l.contains(" ops "))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        line.contains("active") && line.contains("2.50") && line.contains("auto:free"),
        "{line}"
    );
    assert!(line.split_whitespace().any(|w| w == "30"), "{line}");
    assert!(line.split_whitespace().any(|w| w == "45000"), "{line}");
    assert!(!listed.contains(&key), "{listed}");
    let id = line.split_whitespace().next().expect("id").to_string();
    assert!(id.starts_with("key_"), "{line}");

    let (ok, _, err) = run(&["keys", "revoke", &id]);
    assert!(ok, "{err}");
    let (_, listed, _) = run(&["keys", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("revoked")),
        "{listed}"
    );
    let (ok, _, err) = run(&["keys", "revoke", "key_nonexistent"]);
    assert!(!ok && err.contains("no key with the id"), "{err}");

    let (mut child, addr) = serve_binary(std::path::Path::new("config"), &db, None);
    let status = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "auto:free", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(status, 401);
    signal(&child, "TERM");
    assert!(child.wait().expect("wait").success());
    let _ = std::fs::remove_dir_all(dir);
}

/// `mock-upstream`, the benchmark's upstream: OpenAI and Anthropic formats, and fault knobs.
#[tokio::test]
async fn the_mock_upstream_speaks_both_formats_and_injects_faults() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut child = Command::new(binary())
        .args([
            "mock-upstream",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--error-percent",
            "30",
            "--rate-limit-percent",
            "20",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mock-upstream");
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/v1");
    let mut up = false;
    for _ in 0..100 {
        if client.get(&base).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "mock-upstream listens");
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..200 {
        let (path, body) = if i % 2 == 0 {
            (
                "/messages",
                json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
            )
        } else {
            (
                "/chat/completions",
                json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
            )
        };
        let resp = client
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        *counts.entry(status).or_default() += 1;
        if status == 429 {
            assert_eq!(resp.headers()["retry-after"], "1");
        }
        let v: Value = resp.json().await.expect("json");
        match (status, path) {
            (200, "/messages") => {
                assert_eq!(v["type"], "message");
                assert_eq!(v["content"][0]["type"], "text");
                assert!(v["usage"]["input_tokens"].as_u64().is_some());
            }
            (200, _) => assert_eq!(v["object"], "chat.completion"),
            _ => assert!(v["error"]["message"].is_string()),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let share = |s: u16| counts.get(&s).copied().unwrap_or(0);
    // 30 % and 20 % of 200, within wide bounds.
    assert!((30..=90).contains(&share(500)), "{counts:?}");
    assert!((15..=70).contains(&share(429)), "{counts:?}");
    assert_eq!(share(500) + share(429) + share(200), 200, "{counts:?}");
}

#[tokio::test]
async fn a_second_signal_cuts_off_the_drain_at_once() {
    let mock = smart_router_tests::MockUpstream::start().await;
    mock.set("m", smart_router_tests::Behaviour::Hang);
    let dir = temp_dir("hurry");
    std::fs::write(
        dir.join("providers.yaml"),
        format!(
            "providers:\n  up:\n    adapter: openai\n    base_url: {}\n    channels: [{{model: m}}]\n",
            mock.base_url()
        ),
    )
    .expect("write");
    // Ten minutes of grace and of upstream timeouts: only the second signal ends this drain.
    std::fs::write(
        dir.join("system.yaml"),
        format!(
            "components_dir: {}\nserver:\n  shutdown_grace_secs: 600\nupstream:\n  first_byte_timeout_secs: 600\n  timeout_secs: 600\n",
            root().join("config/components").display()
        ),
    )
    .expect("write");
    let db = format!("sqlite://{}", dir.join("db.sqlite").display());
    let out = Command::new(binary())
        .args(["keys", "create", "--name", "hurry", "--database", &db])
        .output()
        .expect("keys");
    assert!(out.status.success());
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (mut child, addr) = serve_binary(&dir, &db, None);
    let url = format!("http://{addr}/v1/chat/completions");
    let request = tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .post(url)
            .bearer_auth(key)
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.expect("json"))
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mock.calls("m").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream got the request"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child, "TERM");
    // The first signal drains: the hung request holds the process.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(child.try_wait().expect("wait").is_none(), "still draining");
    signal(&child, "INT");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second signal ends the drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    let (status, body) = request.await.expect("task");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "gateway_shutting_down", "{body}");
    let classes = strings(&db, "SELECT error_class FROM usage").await;
    assert_eq!(classes, ["shutdown"], "the cut-off request has its row");
    let _ = std::fs::remove_dir_all(dir);
}

/// Plain-HTTP upstreams skip reqwest for hyper-util's pool, except when the environment names a
/// proxy: then reqwest sends them through it. Here the provider's host does not exist and the
/// mock is the proxy: the answer can only have come through it.
#[tokio::test]
async fn plain_http_upstreams_go_through_a_proxy_the_environment_names() {
    let proxy = smart_router_tests::MockUpstream::start().await;
    let dir = temp_dir("proxy");
    std::fs::write(
        dir.join("providers.yaml"),
        "providers:\n  up:\n    adapter: openai\n    base_url: http://upstream.invalid:8080/v1\n    api_key: sk-upstream-behind-proxy\n    channels: [{model: m}]\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("system.yaml"),
        format!(
            "components_dir: {}\n",
            root().join("config/components").display()
        ),
    )
    .expect("write");
    let db = format!("sqlite://{}", dir.join("db.sqlite").display());
    let proxy_url = format!("http://{}", proxy.addr);
    let (mut child, addr) = serve_binary_with(
        &dir,
        &db,
        Some("sk-proxied"),
        &[("HTTP_PROXY", &proxy_url), ("NO_PROXY", "")],
    );
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .bearer_auth("sk-proxied")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("json");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"], "reply from m",
        "{body}"
    );
    let calls = proxy.calls("m");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, "/v1/chat/completions");
    assert_eq!(calls[0].headers["host"], "upstream.invalid:8080");
    assert_eq!(
        calls[0].headers["authorization"],
        "Bearer sk-upstream-behind-proxy"
    );
    let _ = std::fs::remove_dir_all(dir);
}
