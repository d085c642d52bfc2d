//! An incremental server-sent-events parser: bytes in any split, whole events out.

/// One event: the `event:` field and the `data:` lines joined with newlines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub event: String,
    pub data: String,
}

/// Parses an SSE byte stream fed in arbitrary pieces. Comments (`: keep-alive`) are skipped.
#[derive(Default)]
pub struct Parser {
    buf: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
}

/// Longest line accepted; a longer one is an error rather than unbounded memory.
pub const MAX_LINE: usize = 8 << 20;

impl Parser {
    /// Feeds bytes; returns the events completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Event>, String> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            let line_end = if end > start && self.buf[end - 1] == b'\r' {
                end - 1
            } else {
                end
            };
            let line = String::from_utf8_lossy(&self.buf[start..line_end]).into_owned();
            start = end + 1;
            self.line(&line, &mut events);
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_LINE {
            return Err(format!("an event line is longer than {MAX_LINE} bytes"));
        }
        Ok(events)
    }

    /// The stream ended: a last event without its blank line still counts.
    pub fn finish(&mut self) -> Option<Event> {
        if !self.buf.is_empty() {
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
            let mut events = Vec::new();
            self.line(line.trim_end_matches('\r'), &mut events);
        }
        self.take()
    }

    fn line(&mut self, line: &str, events: &mut Vec<Event>) {
        if line.is_empty() {
            if let Some(e) = self.take() {
                events.push(e);
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }

    fn take(&mut self) -> Option<Event> {
        if !self.has_data && self.event.is_empty() {
            return None;
        }
        self.has_data = false;
        Some(Event {
            event: std::mem::take(&mut self.event),
            data: std::mem::take(&mut self.data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere() {
        let text = b": keep-alive\n\nevent: message_start\ndata: {\"a\":1}\n\ndata: x\r\ndata: y\r\n\r\ndata: [DONE]\n\n";
        for split in 0..text.len() {
            let mut p = Parser::default();
            let mut got = p.feed(&text[..split]).expect("ok");
            got.extend(p.feed(&text[split..]).expect("ok"));
            assert_eq!(
                got,
                vec![
                    Event {
                        event: "message_start".into(),
                        data: "{\"a\":1}".into()
                    },
                    Event {
                        event: String::new(),
                        data: "x\ny".into()
                    },
                    Event {
                        event: String::new(),
                        data: "[DONE]".into()
                    },
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn unterminated_last_event_is_kept() {
        let mut p = Parser::default();
        assert!(p.feed(b"data: tail").expect("ok").is_empty());
        assert_eq!(
            p.finish(),
            Some(Event {
                event: String::new(),
                data: "tail".into()
            })
        );
    }
}
