//! Streaming attempts: failover is possible until the first chunk is ready; after that the
//! stream is the client's, and an upstream failure ends it with an OpenAI error event.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::outcome::SHUTDOWN;
use super::{Attempt, Failure, Guard, adapter_failed, class_name, retry};
use crate::app::Counters;
use crate::components::adapter_api::exports::smart_router::gateway::translation::{
    RequestContext, SseEvent, StreamOutput, Usage,
};
use crate::components::{AdapterSession, CallError};
use crate::server::error::ApiError;
use crate::upstream::sse::Parser;
use crate::upstream::{BodyStream, UpstreamResponse};

/// Progress of one translated stream.
struct Pump {
    att: Attempt,
    session: AdapterSession,
    body: BodyStream,
    parser: Parser,
    /// Events read but not yet translated.
    pending: std::collections::VecDeque<crate::upstream::sse::Event>,
    usage: Option<Usage>,
    /// Chunks sent to the client: the answer's tokens, roughly, when the provider never reports.
    sent: u32,
    done: bool,
    ended: bool,
    /// The events sent so far, kept for the answer cache when it applies (dropped past an
    /// eighth of the cache).
    kept: Option<bytes::BytesMut>,
}

/// What one step of the pump produced.
enum Step {
    Chunks(Vec<String>),
    /// The upstream stream is complete.
    End,
    /// The adapter reported an error inside the stream, or the transport broke.
    Error {
        class: &'static str,
        message: String,
        retry_after_ms: Option<u64>,
    },
}

impl Pump {
    /// Translates what the upstream sent next: with `one`, a single event (so the first chunk
    /// leaves before the rest of a burst is translated); otherwise every event read so far.
    async fn step(&mut self, one: bool) -> Step {
        if self.done || (self.ended && self.pending.is_empty()) {
            return Step::End;
        }
        if self.pending.is_empty() {
            match self.body.next().await {
                Some(Ok(bytes)) => match self.parser.feed(&bytes) {
                    Ok(events) => self.pending.extend(events),
                    Err(why) => {
                        return Step::Error {
                            class: "bad_stream",
                            message: why,
                            retry_after_ms: None,
                        };
                    }
                },
                Some(Err(e)) => {
                    return Step::Error {
                        class: "stream_broken",
                        message: e.to_string(),
                        retry_after_ms: None,
                    };
                }
                None => return self.end(),
            }
        }
        let mut chunks = Vec::new();
        while let Some(e) = self.pending.pop_front() {
            match self.push(e) {
                Ok(mut c) => chunks.append(&mut c),
                Err(step) => return step,
            }
            if self.done || one {
                break;
            }
        }
        Step::Chunks(chunks)
    }

    /// The upstream body is complete: the parser's last event, then the adapter's last words.
    fn end(&mut self) -> Step {
        self.ended = true;
        let mut chunks = Vec::new();
        if let Some(e) = self.parser.finish() {
            match self.push(e) {
                Ok(mut c) => chunks.append(&mut c),
                Err(step) => return step,
            }
        }
        match self.session.finish() {
            Ok(Ok(out)) => match self.take(out) {
                Ok(mut c) => chunks.append(&mut c),
                Err(step) => return step,
            },
            Ok(Err(perr)) => {
                return Step::Error {
                    class: class_name(perr.class),
                    message: perr.message,
                    retry_after_ms: perr.retry_after_ms,
                };
            }
            Err(e) => return self.adapter_error(e),
        }
        if chunks.is_empty() {
            Step::End
        } else {
            Step::Chunks(chunks)
        }
    }

    /// Frames `chunks` for the client, keeping a copy for the answer cache.
    fn frame(&mut self, chunks: &[String]) -> Bytes {
        self.sent = self.sent.saturating_add(chunks.len() as u32);
        let framed = frame(chunks);
        if let Some(kept) = &mut self.kept {
            if kept.len() + framed.len() <= self.att.scope.cfg.system.cache_max_bytes / 8 {
                kept.extend_from_slice(&framed);
            } else {
                self.kept = None;
            }
        }
        framed
    }

    fn push(&mut self, e: crate::upstream::sse::Event) -> Result<Vec<String>, Step> {
        let event = SseEvent {
            event: e.event,
            data: e.data,
        };
        match self.session.push(&event) {
            Ok(Ok(out)) => self.take(out),
            Ok(Err(perr)) => Err(Step::Error {
                class: class_name(perr.class),
                message: perr.message,
                retry_after_ms: perr.retry_after_ms,
            }),
            Err(e) => Err(self.adapter_error(e)),
        }
    }

    /// Accepts one step's output; every chunk must be a JSON object.
    fn take(&mut self, out: StreamOutput) -> Result<Vec<String>, Step> {
        if let Some(bad) = out.chunks.iter().find(|c| !super::is_json_object(c)) {
            let reason = format!(
                "it produced a stream chunk that is not a JSON object ({} bytes)",
                bad.len()
            );
            return Err(self.adapter_error(CallError::Malformed {
                component: self.session.name().to_string(),
                reason,
            }));
        }
        if out.usage.is_some() {
            self.usage = out.usage;
        }
        self.done |= out.done;
        Ok(out.chunks)
    }

    /// What the answer used: the provider's report, else (a stream cut off before its last
    /// chunk, or a provider that never reports) the prompt estimate and a token per chunk sent,
    /// so an answer the provider bills is never recorded as free.
    fn used(&self) -> Option<Usage> {
        self.usage.or_else(|| {
            (self.sent > 0).then(|| Usage {
                prompt_tokens: self.att.scope.facts.estimated_prompt_tokens,
                completion_tokens: self.sent,
                cached_tokens: 0,
                reasoning_tokens: 0,
            })
        })
    }

    /// An adapter failure inside the stream: counted against the component.
    fn adapter_error(&self, e: CallError) -> Step {
        Counters::bump(&self.att.scope.app.counters.adapter_failures);
        self.session.component().streak.failure(self.session.name());
        tracing::warn!("adapter failed: {e}");
        Step::Error {
            class: "adapter_error",
            message: e.to_string(),
            retry_after_ms: None,
        }
    }
}

fn frame(chunks: &[String]) -> Bytes {
    let mut s = String::with_capacity(chunks.iter().map(|c| c.len() + 8).sum());
    for c in chunks {
        s.push_str("data: ");
        s.push_str(c);
        s.push_str("\n\n");
    }
    Bytes::from(s)
}

/// True when a chunk has something for the client: text, a tool call, reasoning, a refusal, a
/// finish reason or usage — anything but an empty opening delta. Read without building the chunk:
/// only the fields looked at are visited, and their values stay the chunk's own text.
fn carries_output(chunk: &str) -> bool {
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    struct Chunk<'a> {
        #[serde(borrow, default)]
        usage: Option<&'a RawValue>,
        #[serde(borrow)]
        choices: Option<Vec<Choice<'a>>>,
    }
    #[derive(serde::Deserialize)]
    struct Choice<'a> {
        #[serde(borrow, default)]
        finish_reason: Option<&'a RawValue>,
        #[serde(borrow, default)]
        delta: Option<Delta<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Delta<'a> {
        #[serde(borrow, default)]
        content: Option<&'a RawValue>,
        #[serde(borrow, default)]
        tool_calls: Option<&'a RawValue>,
        #[serde(borrow, default)]
        reasoning_content: Option<&'a RawValue>,
        #[serde(borrow, default)]
        refusal: Option<&'a RawValue>,
        #[serde(borrow, default)]
        function_call: Option<&'a RawValue>,
    }
    // `null` reads as `None`; an empty string is no output either.
    let some = |v: Option<&RawValue>| v.is_some_and(|v| v.get() != "\"\"");
    // Anything unexpected is sent at once rather than held.
    let Ok(c) = serde_json::from_str::<Chunk<'_>>(chunk) else {
        return true;
    };
    if c.usage.is_some() {
        return true;
    }
    let Some(choices) = c.choices else {
        return true;
    };
    choices.iter().any(|c| {
        c.finish_reason.is_some()
            || c.delta.as_ref().is_some_and(|d| {
                some(d.content)
                    || some(d.tool_calls)
                    || some(d.reasoning_content)
                    || some(d.refusal)
                    || some(d.function_call)
            })
    })
}

/// Reads until the first chunk; then commits the response and pumps the rest in a task.
pub(super) async fn start(
    att: Attempt,
    mut session: AdapterSession,
    ctx: RequestContext,
    resp: UpstreamResponse,
    guard: Guard,
) -> Result<Response, Failure> {
    if let Err(e) = session.start_stream(&ctx) {
        att.fail("adapter_error", &e.to_string(), resp.status, None, None)
            .await;
        let adapter = session.component().clone();
        return Err(adapter_failed(&att.scope.app, &adapter, e));
    }
    let status = resp.status;
    let mut pump = Pump {
        att,
        session,
        body: resp.body,
        parser: Parser::default(),
        pending: Default::default(),
        usage: None,
        sent: 0,
        done: false,
        ended: false,
        kept: None,
    };
    let first_byte = pump.att.scope.cfg.system.first_byte_timeout;
    let deadline = tokio::time::Instant::now() + first_byte;
    // Chunks that carry nothing yet (the opening role delta) are held back, so an error right after
    // them can still fail over: nothing has reached the client.
    let mut held: Vec<String> = Vec::new();
    let cutoff = crate::server::cutoff();
    let mut cut = std::pin::pin!(cutoff.wait());
    let first = loop {
        let waiting = std::time::Instant::now();
        let stepped = tokio::select! {
            biased;
            () = &mut cut => None,
            s = tokio::time::timeout_at(deadline, pump.step(true)) => Some(s),
        };
        pump.att.scope.waited(waiting);
        let Some(stepped) = stepped else {
            return Err(pump.att.cut_off(status, None, None).await);
        };
        let step = match stepped {
            Ok(s) => s,
            Err(_) => Step::Error {
                class: "timeout",
                message: "no stream output before the first-byte timeout".into(),
                retry_after_ms: None,
            },
        };
        match step {
            Step::Chunks(c) => {
                let meaningful = c.iter().any(|chunk| carries_output(chunk));
                held.extend(c);
                if meaningful {
                    break std::mem::take(&mut held);
                }
            }
            Step::End if !held.is_empty() => break std::mem::take(&mut held),
            Step::End => {
                pump.att
                    .fail(
                        "empty_stream",
                        "the stream ended without output",
                        status,
                        None,
                        None,
                    )
                    .await;
                return Err(retry(
                    "empty_stream",
                    "the provider's stream ended without output",
                    None,
                ));
            }
            Step::Error {
                class,
                message,
                retry_after_ms,
            } => {
                let msg = super::redact(&message, &pump.att.provider);
                pump.att
                    .fail(class, &msg, status, None, retry_after_ms)
                    .await;
                if matches!(class, "bad_request" | "content_filtered") {
                    let code = (class == "content_filtered").then_some("content_filter");
                    return Err(Failure::Fatal(ApiError::new(
                        axum::http::StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        code,
                        format!("The provider refused the request: {msg}"),
                    )));
                }
                return Err(retry(class, msg, retry_after_ms));
            }
        }
    };
    let ttft = pump.att.started.elapsed().as_millis() as u64;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    if pump.att.scope.cache.is_some() {
        pump.kept = Some(bytes::BytesMut::new());
    }
    let _ = tx.try_send(pump.frame(&first));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut response = Response::new(Body::from_stream(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    pump.att.tag(&mut response);
    // Tracked: a serving thread that shuts down waits for this task's usage record.
    crate::server::spawn_tracked(run(pump, tx, status, ttft, guard));
    Ok(response)
}

/// Forwards the rest of the stream, then accounts for it.
async fn run(mut pump: Pump, tx: mpsc::Sender<Bytes>, status: u16, ttft: u64, guard: Guard) {
    // A shutdown whose grace period runs out ends the stream: the client is told, the row written.
    let cutoff = crate::server::cutoff();
    let mut cut = std::pin::pin!(cutoff.wait());
    let outcome = loop {
        // A client that leaves is noticed at once, not at the upstream's next chunk.
        let step = tokio::select! {
            s = pump.step(false) => s,
            () = tx.closed() => break Err(("client_closed", "the client disconnected".to_string())),
            () = &mut cut => break Err((SHUTDOWN, String::new())),
        };
        match step {
            Step::Chunks(c) if c.is_empty() => {}
            Step::Chunks(c) => {
                let sent = tokio::select! {
                    sent = tx.send(pump.frame(&c)) => sent,
                    () = &mut cut => break Err((SHUTDOWN, String::new())),
                };
                if sent.is_err() {
                    break Err(("client_closed", "the client disconnected".to_string()));
                }
            }
            Step::End => {
                let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
                break Ok(());
            }
            Step::Error { class, message, .. } => {
                let msg = super::redact(&message, &pump.att.provider);
                let err = ApiError::new(
                    axum::http::StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    Some(class),
                    format!("The provider's stream failed after output began: {msg}"),
                );
                let _ = tx
                    .send(Bytes::from(format!("data: {}\n\n", err.body())))
                    .await;
                break Err((class, msg));
            }
        }
    };
    let used = pump.used();
    let Pump {
        att, session, kept, ..
    } = pump;
    if outcome.is_ok() {
        session.component().streak.success();
    }
    // The instance goes back to the idle list before the row is written: the next stream may
    // take it.
    drop(session);
    match outcome {
        Ok(()) => {
            if let Some(kept) = kept {
                att.keep(&kept, true, used.as_ref());
            }
            att.succeed(used, status, Some(ttft)).await
        }
        Err((SHUTDOWN, _)) => {
            // Without waiting on a client that is not reading: the row matters more.
            let err = ApiError::shutting_down();
            let _ = tx.try_send(Bytes::from(format!("data: {}\n\n", err.body())));
            // The stream is the client's already: its answer is the event above.
            let _ = att.cut_off(status, used.as_ref(), Some(ttft)).await;
        }
        Err(("client_closed", msg)) => {
            let mut rec = att.record(
                status,
                "client_closed",
                None,
                Some(msg),
                used.as_ref(),
                Some(ttft),
            );
            rec.outcome = "client_closed";
            att.scope.app.usage.record(rec).await;
        }
        Err((class, msg)) => att.fail(class, &msg, status, used.as_ref(), None).await,
    }
    drop(guard);
    drop(tx);
}

#[cfg(test)]
mod tests {
    use super::carries_output;

    #[test]
    fn only_an_empty_opening_delta_is_held_back() {
        let held = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#,
            r#"{"id":"x","choices":[{"delta":{"content":null,"tool_calls":null}}],"usage":null}"#,
            r#"{"choices":[{"delta":{}}]}"#,
            r#"{"choices":[]}"#,
        ];
        for chunk in held {
            assert!(!carries_output(chunk), "{chunk}");
        }
        let sent = [
            r#"{"choices":[{"delta":{"content":"Hi"}}]}"#,
            r#"{"choices":[{"delta":{"content":"\"\""}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_1"}]}}]}"#,
            r#"{"choices":[{"delta":{"reasoning_content":"hm"}}]}"#,
            r#"{"choices":[{"delta":{"refusal":"no"}}]}"#,
            r#"{"choices":[{"delta":{"function_call":{"name":"f"}}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":1}}"#,
            r#"{"object":"chat.completion.chunk"}"#,
            r#"{"choices":{"delta":{}}}"#,
            r#"not json"#,
        ];
        for chunk in sent {
            assert!(carries_output(chunk), "{chunk}");
        }
    }
}
