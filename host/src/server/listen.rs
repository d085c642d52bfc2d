//! The accept loop and the serving threads.
//!
//! Thread per core: one thread accepts and hands each connection to the serving thread with the
//! fewest open connections. Each serving thread runs its own single-threaded Tokio runtime and
//! its own upstream connection pool, so a request is read, routed, sent upstream, answered and
//! accounted on one thread, with no hand-offs between threads on the way (on a work-stealing
//! runtime, the client's connection task and the request often sit on different threads, and
//! each wake-up across them costs tens of microseconds).
//!
//! Each connection speaks HTTP/1.1 with a header-read timeout (slow clients cannot hold
//! connections open by dribbling headers) and `TCP_NODELAY`. On shutdown every thread stops
//! taking connections and lets its in-flight requests and streams finish — for a grace period,
//! after which they are cut off (see [`Cutoff`]): each still gets its answer (an error) and its
//! usage row, so a stream that would run for minutes cannot hold a deploy, nor be lost to the
//! `SIGKILL` that follows.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

thread_local! {
    /// Which serving thread this is (1-based); 0 on any other thread.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The serving thread this code runs on (1-based), or 0 when it runs on any other thread.
pub fn current_worker() -> usize {
    WORKER.with(Cell::get)
}

/// The number of serving threads when none is configured: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Open connections per serving thread (index 0 is serving thread 1), for `serve` to keep and
/// `/metrics` to show.
pub type Connections = Arc<[Arc<AtomicUsize>]>;

/// Counters for `workers` serving threads.
pub fn connections(workers: usize) -> Connections {
    (0..workers.max(1))
        .map(|_| Arc::new(AtomicUsize::new(0)))
        .collect()
}

/// One open connection on a serving thread's count: taken back when dropped, whichever way the
/// connection ends (served, refused, never taken up).
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(open: &Arc<AtomicUsize>) -> Counted {
        open.fetch_add(1, Ordering::Relaxed);
        Counted(open.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A serving thread: where to send it connections, and how many it has open.
struct Worker {
    conns: mpsc::UnboundedSender<(std::net::TcpStream, Counted)>,
    open: Arc<AtomicUsize>,
}

/// Tasks a serving thread must see finish before it stops (a stream still pumping after its
/// client left, which has a usage record to write).
#[derive(Default)]
struct Tracked {
    running: AtomicUsize,
    idle: tokio::sync::Notify,
}

struct TrackedGuard(Arc<Tracked>);

impl Drop for TrackedGuard {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

thread_local! {
    static TRACKED: std::cell::RefCell<Option<Arc<Tracked>>> = const { std::cell::RefCell::new(None) };
}

/// Set when a shutdown's grace period is over: requests still waiting on an upstream stop
/// waiting, answer the client with an error and write their usage rows. One per serving thread,
/// so the waiters a request registers take no lock another thread contends for.
#[derive(Default)]
pub struct Cutoff {
    cut: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Cutoff {
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Resolves once the grace period is over (at once if it already is).
    pub async fn wait(&self) {
        // Created before the flag is read: a cut between the two still wakes it.
        let notified = self.notify.notified();
        if self.is_cut() {
            return;
        }
        notified.await;
    }
}

thread_local! {
    static CUTOFF: std::cell::RefCell<Option<Arc<Cutoff>>> = const { std::cell::RefCell::new(None) };
}

/// This serving thread's cutoff; elsewhere (a request served outside `serve`), one never cut.
pub fn cutoff() -> Arc<Cutoff> {
    CUTOFF.with_borrow(|c| c.clone()).unwrap_or_default()
}

/// How long a serving thread still waits for its connections once they are cut off, before it
/// drops what remains (a client still sending a request body, say: nothing recorded yet).
const AFTER_CUT: Duration = Duration::from_secs(5);

/// Spawns `task` on the current runtime; on a serving thread, the thread waits for it before it
/// shuts down.
pub fn spawn_tracked(task: impl std::future::Future<Output = ()> + Send + 'static) {
    let guard = TRACKED.with_borrow(|t| {
        t.as_ref().map(|t| {
            t.running.fetch_add(1, Ordering::AcqRel);
            TrackedGuard(t.clone())
        })
    });
    tokio::spawn(async move {
        let _guard = guard;
        task.await;
    });
}

/// A request's work, run inline in its connection's task; if hyper drops it unfinished (the
/// client left), the rest goes on in a tracked task of its own, so the request still ends as it
/// would have: its usage rows written, its holds settled. Only the response is lost. The normal
/// path costs one allocation, and no hop between tasks on the way to the first byte.
pub struct CarryOn<F>(Option<std::pin::Pin<Box<F>>>)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send;

impl<F> CarryOn<F>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send,
{
    pub fn new(work: F) -> Self {
        Self(Some(Box::pin(work)))
    }
}

impl<F> std::future::Future for CarryOn<F>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send,
{
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let work = self.0.as_mut().expect("CarryOn polled after it completed");
        let out = std::task::ready!(work.as_mut().poll(cx));
        self.0 = None;
        std::task::Poll::Ready(out)
    }
}

impl<F> Drop for CarryOn<F>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send,
{
    fn drop(&mut self) {
        // Outside a runtime (one shutting down), there is nowhere to carry it on.
        if let (Some(work), Ok(_)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            spawn_tracked(async move {
                work.await;
            });
        }
    }
}

/// Serves `gateway` on `listener` with one serving thread per entry of `connections` until
/// `stop` resolves with the grace period, then drains: returns once every in-flight request and
/// stream has finished, or been cut off when the grace period ran out or `sooner` resolved.
pub async fn serve(
    listener: TcpListener,
    gateway: super::Gateway,
    header_timeout: Duration,
    idle_spin: Duration,
    connections: Connections,
    stop: impl std::future::Future<Output = Duration>,
    sooner: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let mut pool = Vec::new();
    let mut done = Vec::new();
    let mut cutoffs = Vec::new();
    for (i, open) in connections.iter().enumerate() {
        let n = i + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let (finished, finish) = oneshot::channel::<()>();
        let gateway = gateway.clone();
        let cutoff = Arc::new(Cutoff::default());
        cutoffs.push(cutoff.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("serve-{n}"))
            .spawn(move || {
                WORKER.with(|w| w.set(n));
                CUTOFF.with_borrow_mut(|c| *c = Some(cutoff.clone()));
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        rt.block_on(run_worker(rx, gateway, header_timeout, idle_spin, cutoff))
                    }
                    Err(e) => tracing::error!("serving thread {n} cannot start a runtime: {e}"),
                }
                let _ = finished.send(());
            });
        match spawned {
            Ok(_) => {
                pool.push(Worker {
                    conns: tx,
                    open: open.clone(),
                });
                done.push(finish);
            }
            Err(e) => tracing::error!("cannot start serving thread {n}: {e}"),
        }
    }
    let mut stop = std::pin::pin!(stop);
    let mut grace = None;
    while !pool.is_empty() {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            g = &mut stop => {
                grace = Some(g);
                break;
            }
        };
        // No Nagle: stream chunks leave as soon as they are written.
        let _ = tcp.set_nodelay(true);
        let Ok(mut tcp) = tcp.into_std() else {
            continue;
        };
        // The least busy thread; among equals, the first. A thread that has died is dropped
        // from the pool and the connection goes to the next.
        while let Some(i) = (0..pool.len()).min_by_key(|&i| pool[i].open.load(Ordering::Relaxed)) {
            let counted = Counted::new(&pool[i].open);
            match pool[i].conns.send((tcp, counted)) {
                Ok(()) => break,
                Err(mpsc::error::SendError((back, _))) => {
                    tracing::error!("a serving thread has stopped; its connections go elsewhere");
                    pool.swap_remove(i);
                    tcp = back;
                }
            }
        }
    }
    if pool.is_empty() {
        tracing::error!("no serving thread is running: the gateway cannot answer");
    }
    drop(listener);
    // Each thread serves what is queued for it, then drains; what is still running when the
    // grace period ends is cut off.
    drop(pool);
    let cut = grace.map(|grace| {
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(grace) => tracing::warn!(
                    "shutdown grace period of {}s is over: cutting off what is still in flight",
                    grace.as_secs()
                ),
                () = sooner => tracing::warn!("cutting off what is still in flight now"),
            }
            for c in &cutoffs {
                c.cut();
            }
        })
    });
    for d in done {
        let _ = d.await;
    }
    if let Some(cut) = cut {
        cut.abort();
    }
}

/// One serving thread: takes connections until the acceptor stops, then drains its own.
async fn run_worker(
    mut conns: mpsc::UnboundedReceiver<(std::net::TcpStream, Counted)>,
    gateway: super::Gateway,
    header_timeout: Duration,
    idle_spin: Duration,
    cutoff: Arc<Cutoff>,
) {
    let tracked = Arc::new(Tracked::default());
    TRACKED.with_borrow_mut(|t| *t = Some(tracked.clone()));
    // HTTP/1.1 only, served by hyper's own connection type: no protocol sniffing on each new
    // connection, and no rewind layer under every later read.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_headers(100);
    let graceful = GracefulShutdown::new();
    // Tokio's timer wakes its own thread through an eventfd (a system call each way) whenever a
    // new timer is due before the thread's next planned wake-up — which, on an idle thread, is
    // every request's header-read timeout. A tick every half second keeps a wake-up planned
    // sooner than any timeout a request sets (all are at least a second), so setting those
    // costs no system call.
    let tick = tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
        }
    });
    let spin = spin::start(idle_spin);
    while let Some((tcp, counted)) = conns.recv().await {
        let tcp = match tokio::net::TcpStream::from_std(tcp) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("cannot take a connection: {e}");
                continue;
            }
        };
        let conn = builder.serve_connection(TokioIo::new(tcp), gateway.clone());
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(counted);
        });
    }
    let drained = async {
        graceful.shutdown().await;
        // Streams whose clients left may still be writing their usage records.
        loop {
            let idle = tracked.idle.notified();
            if tracked.running.load(Ordering::Acquire) == 0 {
                break;
            }
            idle.await;
        }
    };
    // Cut off requests answer at once and write their rows; whatever still holds on after that
    // has nothing to record and is dropped with the runtime.
    let given_up = async {
        cutoff.wait().await;
        tokio::time::sleep(AFTER_CUT).await;
    };
    tokio::select! {
        () = drained => {}
        () = given_up => tracing::warn!(
            "serving thread {}: connections still open {}s after the cutoff are dropped",
            current_worker(),
            AFTER_CUT.as_secs()
        ),
    }
    tick.abort();
    if let Some(s) = spin {
        s.abort();
    }
}

/// Busy-polling between requests (`server.idle_spin_us`).
///
/// A serving thread with nothing to do sleeps in `epoll_wait`; waking it when the next packet
/// arrives costs tens of microseconds on a virtual machine, and a proxied request pays that twice
/// (the client's request, then the upstream's answer) — at one connection, more than the
/// gateway's own work. For a short window after a request begins or is answered, a thread with
/// few requests in flight polls its sockets without sleeping instead: a task yields to the
/// runtime, which then polls the driver with a zero timeout, and gives its CPU to any other
/// runnable thread on each turn. A thread with more requests in flight is woken often enough by
/// them, and its CPU is better left to the rest of the machine; an idle thread sleeps as before.
pub(super) mod spin {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// Above this many requests in flight on a thread, it does not spin.
    const MAX_IN_FLIGHT: usize = 2;

    pub(super) struct Spin {
        window_ns: u64,
        epoch: Instant,
        /// When a request last began or was answered, in nanoseconds since `epoch`.
        last: AtomicU64,
        in_flight: AtomicUsize,
        spinning: AtomicBool,
        wake: tokio::sync::Notify,
    }

    thread_local! {
        static SPIN: std::cell::RefCell<Option<Arc<Spin>>> = const { std::cell::RefCell::new(None) };
    }

    impl Spin {
        fn now(&self) -> u64 {
            self.epoch.elapsed().as_nanos() as u64
        }

        /// Opens the window from now, if few enough requests are in flight.
        fn mark(&self, in_flight: usize) {
            self.last.store(self.now(), Ordering::Relaxed);
            if in_flight <= MAX_IN_FLIGHT && !self.spinning.load(Ordering::Relaxed) {
                self.wake.notify_one();
            }
        }
    }

    /// Starts this serving thread's spinner; `None` when `window` is zero.
    pub(super) fn start(window: Duration) -> Option<tokio::task::JoinHandle<()>> {
        if window.is_zero() {
            return None;
        }
        let spin = Arc::new(Spin {
            window_ns: window.as_nanos() as u64,
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            spinning: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        });
        SPIN.with_borrow_mut(|s| *s = Some(spin.clone()));
        Some(tokio::spawn(async move {
            loop {
                spin.wake.notified().await;
                spin.spinning.store(true, Ordering::Relaxed);
                // `yield_now` on a current-thread runtime defers the task until the runtime has
                // polled its driver (without blocking, as a task is waiting).
                loop {
                    tokio::task::yield_now().await;
                    std::thread::yield_now();
                    let idle = spin.now().saturating_sub(spin.last.load(Ordering::Relaxed));
                    if idle > spin.window_ns
                        || spin.in_flight.load(Ordering::Relaxed) > MAX_IN_FLIGHT
                    {
                        break;
                    }
                }
                // The spinner and the requests run on the same thread, never at once: a request
                // that began while it spun moved `last`, and one that begins from here on wakes
                // it.
                spin.spinning.store(false, Ordering::Relaxed);
            }
        }))
    }

    /// A request in flight on this serving thread; when it is answered (or dropped), the window
    /// opens again, for the client's next request.
    pub(crate) struct InFlight(Arc<Spin>);

    /// A request begins on this thread: the window opens (when spinning is on).
    pub(crate) fn begin() -> Option<InFlight> {
        SPIN.with_borrow(|s| {
            s.as_ref().map(|spin| {
                let n = spin.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                spin.mark(n);
                InFlight(spin.clone())
            })
        })
    }

    impl Drop for InFlight {
        fn drop(&mut self) {
            let n = self.0.in_flight.fetch_sub(1, Ordering::Relaxed) - 1;
            self.0.mark(n);
        }
    }
}
