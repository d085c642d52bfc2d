//! An exact-match answer cache, in memory, per gateway instance: a request whose body is
//! byte-for-byte one already answered, from the same gateway key to the same endpoint, gets the
//! stored answer without reaching a provider — no tokens, no cost, no quota.
//!
//! Opted into per group (`cache: {ttl_secs: 600}` in `model_groups.yaml`) or for every request
//! (`cache: {ttl_secs: …}` in `system.yaml`); a client can ask for a fresh answer
//! (`Cache-Control: no-cache`, which still stores it) or for nothing to be kept
//! (`Cache-Control: no-store`). Only successful answers are stored; a stream is stored once it
//! ended cleanly, and replayed as the same events.
//!
//! Bounded by bytes (`cache.max_mb`): the oldest entries go first. Keys are SHA-256 digests, so
//! no prompt is kept twice and none is readable from the index.
//!
//! Identical requests that arrive together are sent once: while the first of them is with a
//! provider, the others wait for its answer ([`Cache::lead`]) and are served from the cache —
//! or, should it fail or not be kept, go on their own. Streams are not held back so: a waiting
//! stream would get its first byte only when the whole of the first one had ended.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::router::Endpoint;

/// An entry's identity: the SHA-256 of the gateway key's id, the endpoint and the request body.
pub type CacheKey = [u8; 32];

/// A stored answer.
#[derive(Clone, Debug)]
pub struct Hit {
    /// The client's body as first sent: a JSON object, or a stream's `data:` events (without the
    /// closing `[DONE]`).
    pub body: Bytes,
    pub stream: bool,
    /// The channel that answered first.
    pub channel: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

struct Entry {
    hit: Hit,
    expires_ms: u64,
    /// Distinguishes this entry from an older one under the same key in the eviction queue.
    generation: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<CacheKey, Entry>,
    /// Insertion order, oldest first: `(key, generation)`.
    order: VecDeque<(CacheKey, u64)>,
    bytes: usize,
    generation: u64,
}

pub struct Cache {
    inner: Mutex<Inner>,
    /// Requests on their way to a provider, by key: identical ones wait for them.
    flights: Arc<Mutex<HashMap<CacheKey, tokio::sync::watch::Receiver<()>>>>,
}

/// What a request missing the cache does about identical ones already on their way.
pub enum Flight {
    /// None is: this one goes, and the others wait until the guard is dropped.
    Lead(Leading),
    /// One is: resolves when it has finished (answered and stored, or failed).
    Follow(tokio::sync::watch::Receiver<()>),
}

/// Held by the request that identical ones wait for; they are released when it is dropped.
pub struct Leading {
    key: CacheKey,
    flights: Arc<Mutex<HashMap<CacheKey, tokio::sync::watch::Receiver<()>>>>,
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for Leading {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        flights.remove(&self.key);
        // The sender goes after this: every receiver's `changed()` then returns.
    }
}

impl Flight {
    /// Waits until the request followed has finished, or `at_most` has passed.
    pub async fn finished(mut rx: tokio::sync::watch::Receiver<()>, at_most: std::time::Duration) {
        // `changed` fails once the sender is gone, which is all it ever does here.
        let _ = tokio::time::timeout(at_most, rx.changed()).await;
    }
}

/// What the client asked of the cache (`Cache-Control`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Directive {
    #[default]
    Use,
    /// `no-cache`: a fresh answer, stored for the next request.
    Refresh,
    /// `no-store`: neither read nor keep.
    Bypass,
}

impl Directive {
    pub fn from_header(value: Option<&str>) -> Self {
        let Some(v) = value else {
            return Directive::Use;
        };
        let has = |d: &str| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(d));
        if has("no-store") {
            Directive::Bypass
        } else if has("no-cache") {
            Directive::Refresh
        } else {
            Directive::Use
        }
    }
}

/// Bytes an entry is charged beyond its body: its key, bookkeeping and channel id.
const ENTRY_OVERHEAD: usize = 160;

impl Cache {
    pub fn new() -> Self {
        Cache {
            inner: Mutex::default(),
            flights: Arc::default(),
        }
    }

    /// Leads the requests under `key`, or follows the one already leading them.
    pub fn lead(&self, key: &CacheKey) -> Flight {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = flights.get(key) {
            return Flight::Follow(rx.clone());
        }
        let (done, rx) = tokio::sync::watch::channel(());
        flights.insert(*key, rx);
        Flight::Lead(Leading {
            key: *key,
            flights: self.flights.clone(),
            _done: done,
        })
    }

    pub fn key(key_id: &str, endpoint: Endpoint, body: &[u8]) -> CacheKey {
        let mut h = Sha256::new();
        h.update(key_id.as_bytes());
        h.update([0, endpoint as u8, 0]);
        h.update(body);
        h.finalize().into()
    }

    /// The stored answer under `key`, unless it has expired.
    pub fn get(&self, key: &CacheKey, now_ms: u64) -> Option<Hit> {
        let mut inner = self.lock();
        let entry = inner.entries.get(key)?;
        if entry.expires_ms > now_ms {
            return Some(entry.hit.clone());
        }
        let gone = inner.entries.remove(key)?;
        inner.bytes -= size(&gone.hit);
        None
    }

    /// Stores `hit` for `ttl_ms`, evicting the oldest entries to stay within `max_bytes`. An
    /// answer larger than an eighth of the cache is not stored.
    pub fn put(&self, key: CacheKey, hit: Hit, ttl_ms: u64, max_bytes: usize, now_ms: u64) {
        let bytes = size(&hit);
        if bytes > max_bytes / 8 {
            return;
        }
        let mut inner = self.lock();
        inner.generation += 1;
        let generation = inner.generation;
        let entry = Entry {
            hit,
            expires_ms: now_ms.saturating_add(ttl_ms),
            generation,
        };
        if let Some(old) = inner.entries.insert(key, entry) {
            inner.bytes -= size(&old.hit);
        }
        inner.bytes += bytes;
        inner.order.push_back((key, generation));
        while inner.bytes > max_bytes {
            let Some((old, generation)) = inner.order.pop_front() else {
                break;
            };
            // Skip queue slots whose entry was replaced or has already gone.
            if inner
                .entries
                .get(&old)
                .is_some_and(|e| e.generation == generation)
                && let Some(gone) = inner.entries.remove(&old)
            {
                inner.bytes -= size(&gone.hit);
            }
        }
        // Slots of replaced or expired entries would otherwise pile up under steady traffic.
        if inner.order.len() > 2 * inner.entries.len() + 64 {
            let Inner { entries, order, .. } = &mut *inner;
            order.retain(|(k, g)| entries.get(k).is_some_and(|e| e.generation == *g));
        }
    }

    /// Entries and bytes held.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

fn size(hit: &Hit) -> usize {
    hit.body.len() + hit.channel.len() + ENTRY_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(body: &str) -> Hit {
        Hit {
            body: Bytes::copy_from_slice(body.as_bytes()),
            stream: false,
            channel: "c".into(),
            prompt_tokens: 1,
            completion_tokens: 2,
        }
    }

    #[test]
    fn entries_expire_and_keys_separate_callers_and_endpoints() {
        let cache = Cache::new();
        let body = br#"{"model":"m","messages":[]}"#;
        let k = Cache::key("key_a", Endpoint::Chat, body);
        assert_ne!(k, Cache::key("key_b", Endpoint::Chat, body));
        assert_ne!(k, Cache::key("key_a", Endpoint::Embeddings, body));
        assert_ne!(
            k,
            Cache::key("key_a", Endpoint::Chat, br#"{"model":"m","messages":[ ]}"#)
        );
        cache.put(k, hit("{}"), 1_000, 1 << 20, 10_000);
        assert_eq!(cache.get(&k, 10_999).expect("fresh").body, "{}");
        assert!(cache.get(&k, 11_000).is_none());
        assert_eq!(cache.usage(), (0, 0));
    }

    #[test]
    fn the_oldest_entries_go_first_and_bytes_stay_bounded() {
        let cache = Cache::new();
        let max = 8 * (100 + 1 + ENTRY_OVERHEAD);
        let body = "x".repeat(100);
        let keys: Vec<CacheKey> = (0..10u8).map(|i| [i; 32]).collect();
        for k in &keys {
            cache.put(*k, hit(&body), 60_000, max, 0);
        }
        assert_eq!(cache.usage(), (8, max));
        assert!(cache.get(&keys[0], 1).is_none() && cache.get(&keys[1], 1).is_none());
        assert!(keys[2..].iter().all(|k| cache.get(k, 1).is_some()));
        // Replacing an entry keeps one copy; a body over an eighth of the cache is not kept.
        cache.put(keys[5], hit(&body), 60_000, max, 0);
        assert_eq!(cache.usage(), (8, max));
        cache.put([99; 32], hit(&"y".repeat(max / 8)), 60_000, max, 0);
        assert!(cache.get(&[99; 32], 1).is_none());
        // Many replacements of one key leave the queue short.
        for _ in 0..1_000 {
            cache.put(keys[9], hit(&body), 60_000, max, 0);
        }
        assert!(cache.inner.lock().expect("lock").order.len() <= 2 * 8 + 64 + 1);
    }

    #[test]
    fn cache_control_reads_as_http_caches_read_it() {
        use Directive::*;
        assert_eq!(Directive::from_header(None), Use);
        assert_eq!(Directive::from_header(Some("max-age=60")), Use);
        assert_eq!(Directive::from_header(Some("No-Cache")), Refresh);
        assert_eq!(Directive::from_header(Some("no-cache, no-store")), Bypass);
        assert_eq!(Directive::from_header(Some("private,no-store")), Bypass);
    }
}
