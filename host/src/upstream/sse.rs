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
    /// The start of a line whose end has not arrived yet.
    buf: Vec<u8>,
    fields: Fields,
}

/// The event being read.
#[derive(Default)]
struct Fields {
    event: String,
    data: String,
    has_data: bool,
}

/// Longest line accepted; a longer one is an error rather than unbounded memory.
pub const MAX_LINE: usize = 8 << 20;

impl Parser {
    /// Feeds bytes; returns the events completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Event>, String> {
        let mut events = Vec::new();
        if self.buf.is_empty() {
            // Most pieces end at an event's end: their lines are read where they lie.
            let rest = self.fields.lines(bytes, &mut events);
            self.buf.extend_from_slice(rest);
        } else {
            self.buf.extend_from_slice(bytes);
            let rest = self.fields.lines(&self.buf, &mut events).len();
            let read = self.buf.len() - rest;
            self.buf.drain(..read);
        }
        if self.buf.len() > MAX_LINE {
            return Err(format!("an event line is longer than {MAX_LINE} bytes"));
        }
        Ok(events)
    }

    /// The stream ended: a last event without its blank line still counts.
    pub fn finish(&mut self) -> Option<Event> {
        if !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf);
            let mut events = Vec::new();
            self.fields
                .line(utf8(&buf).trim_end_matches('\r'), &mut events);
            // A lone `\r` after the last line ends the event as a blank line would.
            if let Some(e) = events.pop() {
                return Some(e);
            }
        }
        self.fields.take()
    }
}

/// A line's text; bytes that are not UTF-8 become U+FFFD.
fn utf8(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    // `from_utf8` checks ASCII a word at a time; the lossy reading goes byte by byte.
    match std::str::from_utf8(bytes) {
        Ok(s) => s.into(),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

impl Fields {
    /// Reads the complete lines in `bytes`; returns what follows the last line end.
    fn lines<'a>(&mut self, bytes: &'a [u8], events: &mut Vec<Event>) -> &'a [u8] {
        let mut start = 0;
        while let Some(pos) = bytes[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            let line_end = if end > start && bytes[end - 1] == b'\r' {
                end - 1
            } else {
                end
            };
            self.line(&utf8(&bytes[start..line_end]), events);
            start = end + 1;
        }
        &bytes[start..]
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
    use proptest::prelude::*;

    /// Feeds `bytes` cut at `cuts`, then finishes.
    fn parse_in_pieces(bytes: &[u8], cuts: &[usize]) -> Result<Vec<Event>, String> {
        let mut p = Parser::default();
        let mut out = Vec::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        for cut in cuts {
            out.extend(p.feed(&bytes[at..cut])?);
            at = cut;
        }
        out.extend(p.feed(&bytes[at..])?);
        out.extend(p.finish());
        Ok(out)
    }

    proptest! {
        /// Any bytes, cut anywhere: no panic, and the events do not depend on the cuts.
        #[test]
        fn arbitrary_bytes_parse_the_same_however_they_are_cut(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = parse_in_pieces(&bytes, &[]);
            let pieces = parse_in_pieces(&bytes, &cuts);
            prop_assert_eq!(whole, pieces);
        }

        /// Events written out (with CRLF or LF, comments between) come back exactly.
        #[test]
        fn written_events_round_trip(
            events in proptest::collection::vec(("[a-z_]{0,12}", "[^\r\n]{0,40}"), 0..12),
            crlf in any::<bool>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let nl = if crlf { "\r\n" } else { "\n" };
            let mut text = String::new();
            for (event, data) in &events {
                text.push_str(&format!(": keep-alive{nl}"));
                if !event.is_empty() {
                    text.push_str(&format!("event: {event}{nl}"));
                }
                text.push_str(&format!("data: {data}{nl}{nl}"));
            }
            let got = parse_in_pieces(text.as_bytes(), &cuts).expect("parses");
            let want: Vec<Event> = events
                .iter()
                .map(|(event, data)| Event { event: event.clone(), data: data.clone() })
                .collect();
            prop_assert_eq!(got, want);
        }
    }

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
    fn an_event_ended_by_a_lone_carriage_return_is_kept() {
        let mut p = Parser::default();
        assert!(p.feed(b"data: x\r\n\r").expect("ok").is_empty());
        assert_eq!(
            p.finish(),
            Some(Event {
                event: String::new(),
                data: "x".into()
            })
        );
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
