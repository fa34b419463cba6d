//! Live traces of the dataplane: `GET /v1/trace`'s engine side.
//!
//! The programs write one event per translated or dropped packet to a ring buffer,
//! only while a trace runs. One pump task drains it for every open trace: it sets the
//! kernel filter to the narrowest one that passes what each trace wants, decodes each
//! event once (interface, peering, rules by id), and hands it to each trace whose own
//! filter, sample rate, rate cap and count it fits. When the last trace ends the
//! kernel filter is cleared and the programs stop writing.

mod decode;
mod record;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use remapd_dataplane::trace::{KernelTraceFilter, TraceEvent, TraceSource, TraceTap};
use remapd_dataplane::{DataplaneError, DataplaneStatusReader};

use crate::daemon::Snapshot;
use crate::error::EngineError;
use decode::Decoder;
pub use record::{
    FiredRule, IcmpFields, LostCause, PacketAddresses, TraceEnd, TraceItem, TraceRecord,
    TraceVerdict, protocol_name, protocol_number,
};

/// Traces that may run at once.
pub const MAX_TRACES: usize = 8;
/// How often the pump drains the ring buffer while a trace runs.
const PUMP_INTERVAL: Duration = Duration::from_millis(20);
/// Events drained per pump cycle at most (the buffer holds about 16,000).
const DRAIN_BATCH: usize = 20_000;
/// Items queued per trace before a slow reader loses events.
const QUEUE: usize = 4096;
/// Losses are reported at most this often per trace and cause.
const LOSS_REPORT_EVERY: Duration = Duration::from_secs(1);

/// What one trace wants. Unset filters match everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceQuery {
    /// Only packets on this peering's tunnel.
    pub peering: Option<String>,
    /// Only packets with an address (before or after) in this prefix.
    pub prefix: Option<Ipv4Net>,
    /// Only this IP protocol.
    pub protocol: Option<u8>,
    /// Only translated or only dropped packets.
    pub verdict: Option<TraceVerdict>,
    /// One in `sample` matching packets (1: all).
    pub sample: u32,
    /// At most this many events per second; the rest are counted, not sent.
    pub rate: u32,
    /// End after this many events.
    pub count: Option<u64>,
    /// End after this long.
    pub duration: Duration,
}

impl Default for TraceQuery {
    fn default() -> Self {
        Self {
            peering: None,
            prefix: None,
            protocol: None,
            verdict: None,
            sample: 1,
            rate: 1000,
            count: None,
            duration: Duration::from_secs(60),
        }
    }
}

impl TraceQuery {
    /// Whether a decoded event is one this trace wants (the user-space half of the
    /// filter; the kernel applied the union of all traces' filters).
    fn wants(&self, record: &TraceRecord) -> bool {
        if let Some(p) = &self.peering
            && record.peering.as_deref() != Some(p.as_str())
        {
            return false;
        }
        if let Some(proto) = self.protocol
            && record.protocol_number != proto
        {
            return false;
        }
        if let Some(v) = self.verdict
            && record.verdict != v
        {
            return false;
        }
        if let Some(prefix) = self.prefix {
            let addresses = [record.before.as_ref(), record.after.as_ref()]
                .into_iter()
                .flatten()
                .flat_map(|a| [a.src, a.dst]);
            if !addresses.into_iter().any(|a: Ipv4Addr| prefix.contains(&a)) {
                return false;
            }
        }
        true
    }
}

/// The running traces and the pump that feeds them.
pub struct Tracer {
    source: Arc<dyn TraceSource>,
    decoder_inputs: DecoderInputs,
    hub: Arc<Mutex<Hub>>,
    /// Set at shutdown: no trace starts after it.
    closed: AtomicBool,
}

#[derive(Clone)]
struct DecoderInputs {
    status: Arc<dyn DataplaneStatusReader>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
}

#[derive(Default)]
struct Hub {
    next_id: u64,
    traces: BTreeMap<u64, Subscriber>,
    /// The open tap while the pump runs.
    tap: Option<SharedTap>,
}

/// The open tap, shared by the hub and its pump.
type SharedTap = Arc<Mutex<TapSlot>>;

/// A tap, and whether it was retired (by a teardown, shutdown, or its pump's end). A
/// retired tap is drained by no one and its filter is off: the check and the drain
/// happen under this one lock, so two pumps never read one ring buffer.
struct TapSlot {
    tap: Box<dyn TraceTap>,
    retired: bool,
}

/// The tap's lock, poisoned or not (a panicking pump must not leave the kernel writing).
fn lock_tap(tap: &SharedTap) -> MutexGuard<'_, TapSlot> {
    tap.lock().unwrap_or_else(|p| p.into_inner())
}

/// Retires `tap`: its pump stops before its next drain and the kernel stops writing.
/// Only for the hub's current tap, with the hub locked.
fn retire(tap: &SharedTap) {
    let mut slot = lock_tap(tap);
    slot.retired = true;
    if let Err(e) = slot.tap.set(None) {
        warn!(error = %e, "stopping the kernel trace");
    }
}

struct Subscriber {
    /// CLOCK_MONOTONIC when the trace started: earlier events are not its own.
    started_ktime: u64,
    query: TraceQuery,
    kernel: KernelTraceFilter,
    /// Whether the kernel already samples for this trace (it is the only one).
    kernel_samples: bool,
    tx: mpsc::Sender<TraceItem>,
    stats: Arc<Mutex<TraceEnd>>,
    seen: u64,
    tokens: f64,
    refilled: Instant,
    /// Per [`LostCause`]: losses not reported yet, and when the last report went out.
    unreported: [(u64, Option<Instant>); 3],
}

impl Tracer {
    /// A tracer over the dataplane's trace maps.
    pub(crate) fn new(
        source: Arc<dyn TraceSource>,
        status: Arc<dyn DataplaneStatusReader>,
        snapshot: watch::Receiver<Arc<Snapshot>>,
    ) -> Self {
        Self {
            source,
            decoder_inputs: DecoderInputs { status, snapshot },
            hub: Arc::default(),
            closed: AtomicBool::new(false),
        }
    }

    /// Starts a trace: the kernel is tracing (with a filter that covers `query`) when
    /// this returns. Must run inside the tokio runtime.
    pub fn start(&self, query: TraceQuery) -> Result<TraceStream, EngineError> {
        let snapshot = self.decoder_inputs.snapshot.borrow().clone();
        let ifindex = match &query.peering {
            None => None,
            Some(name) => {
                if !snapshot.state.peerings.contains_key(name) {
                    return Err(EngineError::PeeringNotFound(name.clone()));
                }
                let interface = snapshot
                    .outcomes
                    .get(name)
                    .map(|o| o.interface.clone())
                    .unwrap_or_default();
                // A peering whose tunnel does not exist (yet): no interface filter in
                // the kernel, so its packets show (filtered here by name) once it does.
                nix::net::if_::if_nametoindex(interface.as_str()).ok()
            }
        };
        let kernel = KernelTraceFilter {
            ifindex,
            protocol: query.protocol,
            translated: query.verdict.map(|v| v == TraceVerdict::Translated),
            sample: query.sample,
            prefix: query.prefix,
        };
        let mut hub = self.hub.lock().map_err(poisoned)?;
        // Checked under the hub's lock: `close` sets the flag, then ends what runs.
        if self.closed.load(Ordering::SeqCst) {
            return Err(EngineError::TraceUnavailable(
                "the daemon is shutting down".into(),
            ));
        }
        if hub.traces.len() >= MAX_TRACES {
            return Err(EngineError::TooManyTraces(MAX_TRACES));
        }
        let (tap, new_tap) = match &hub.tap {
            Some(tap) => (tap.clone(), false),
            None => {
                let tap = self.source.open().map_err(|e| match e {
                    DataplaneError::NotPinned { .. } => EngineError::NothingToTrace(e.to_string()),
                    e => EngineError::TraceUnavailable(e.to_string()),
                })?;
                let mut tap = tap;
                // Events left in the buffer by an earlier trace (or a killed process)
                // are not this trace's.
                let mut stale = Vec::new();
                tap.drain(&mut stale, usize::MAX);
                let slot = TapSlot {
                    tap,
                    retired: false,
                };
                (Arc::new(Mutex::new(slot)), true)
            }
        };
        let id = hub.next_id;
        hub.next_id += 1;
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(Mutex::new(TraceEnd::default()));
        let now = Instant::now();
        hub.traces.insert(
            id,
            Subscriber {
                started_ktime: remapd_dataplane::trace::monotonic_now_ns(),
                query: query.clone(),
                kernel,
                kernel_samples: false,
                tx,
                stats: stats.clone(),
                seen: 0,
                tokens: f64::from(query.rate),
                refilled: now,
                unreported: [(0, None); 3],
            },
        );
        if let Err(e) = set_kernel_filter(&mut hub, &tap) {
            hub.traces.remove(&id);
            if !hub.traces.is_empty() {
                let _ = set_kernel_filter(&mut hub, &tap);
            }
            return Err(e);
        }
        if new_tap {
            hub.tap = Some(tap.clone());
            let baseline = lock_tap(&tap).tap.lost().unwrap_or(0);
            tokio::spawn(pump(
                self.hub.clone(),
                tap,
                Decoder::new(
                    self.decoder_inputs.status.clone(),
                    self.decoder_inputs.snapshot.clone(),
                ),
                baseline,
            ));
        }
        debug!(trace = id, ?query, "trace started");
        Ok(TraceStream {
            rx,
            deadline: tokio::time::Instant::now() + query.duration,
            stats,
            count: query.count,
            guard: Some(TraceGuard {
                hub: self.hub.clone(),
                id,
            }),
            ended: false,
        })
    }

    /// Traces running now.
    pub fn running(&self) -> usize {
        self.hub.lock().map_or(0, |h| h.traces.len())
    }

    /// At shutdown: no trace starts any more, and the running ones end now with reason
    /// `shutdown` (rather than hold the server's drain).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.stop_all("shutdown");
    }

    /// Ends every running trace now, each with its `end` item (`reason`, its totals so
    /// far), stops the kernel writing, and lets go of the trace maps: the next trace
    /// opens them afresh. For a teardown (the maps the traces read are unpinned, and a
    /// reload makes new ones the programs write to) and for shutdown (open streams end
    /// at once instead of holding the drain).
    pub fn stop_all(&self, reason: &str) {
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        let stopped = end_all(&mut hub, reason);
        if let Some(tap) = hub.tap.take() {
            retire(&tap);
        }
        if stopped > 0 {
            debug!(stopped, reason, "traces stopped");
        }
    }
}

/// Removes every trace from the hub, sending each its `end` item with `reason` (a full
/// queue ends the stream without it, as "stopped"); how many there were.
fn end_all(hub: &mut Hub, reason: &str) -> usize {
    let traces = std::mem::take(&mut hub.traces);
    let n = traces.len();
    for sub in traces.into_values() {
        let mut end = sub
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        end.reason = reason.to_owned();
        let _ = sub.tx.try_send(TraceItem::End(end));
    }
    n
}

fn poisoned<T>(_: T) -> EngineError {
    EngineError::Internal("the trace hub's lock was poisoned".into())
}

/// Sets the kernel filter to cover every running trace (none: tracing stops).
fn set_kernel_filter(hub: &mut Hub, tap: &SharedTap) -> Result<(), EngineError> {
    let filters: Vec<KernelTraceFilter> = hub.traces.values().map(|s| s.kernel.clone()).collect();
    let filter = (!filters.is_empty()).then(|| KernelTraceFilter::union(&filters));
    // The kernel samples for every trace when they all ask the same rate (the union
    // keeps it then); otherwise it passes everything and each trace samples here.
    let kernel_sample = filter.as_ref().map_or(1, |f| f.sample);
    for sub in hub.traces.values_mut() {
        sub.kernel_samples = kernel_sample > 1;
    }
    lock_tap(tap)
        .tap
        .set(filter.as_ref())
        .map_err(|e| EngineError::TraceUnavailable(e.to_string()))
}

/// Removes its trace when the stream is dropped (client gone, or ended).
struct TraceGuard {
    hub: Arc<Mutex<Hub>>,
    id: u64,
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        let Ok(mut hub) = self.hub.lock() else {
            return;
        };
        if hub.traces.remove(&self.id).is_none() {
            return;
        }
        if let Some(tap) = hub.tap.clone() {
            // The last trace out stops the kernel writing; the pump then exits.
            if let Err(e) = set_kernel_filter(&mut hub, &tap) {
                warn!(error = %e, "updating the kernel trace filter");
            }
        }
        debug!(trace = self.id, "trace ended");
    }
}

/// One trace's items, ending with [`TraceItem::End`].
pub struct TraceStream {
    rx: mpsc::Receiver<TraceItem>,
    deadline: tokio::time::Instant,
    stats: Arc<Mutex<TraceEnd>>,
    count: Option<u64>,
    guard: Option<TraceGuard>,
    ended: bool,
}

impl TraceStream {
    /// The next item; `None` after the end.
    pub async fn next(&mut self) -> Option<TraceItem> {
        if self.ended {
            return None;
        }
        let item = tokio::time::timeout_at(self.deadline, self.rx.recv()).await;
        match item {
            Ok(Some(TraceItem::End(end))) => {
                self.finish();
                Some(TraceItem::End(end))
            }
            Ok(Some(item)) => Some(item),
            // The trace reached its count with its queue full (the end item did not
            // fit), or the pump stopped; or the duration is up.
            Ok(None) => {
                let events = self.stats.lock().map_or(0, |s| s.events);
                let counted = self.count.is_some_and(|c| events >= c);
                Some(self.end_with(if counted { "count" } else { "stopped" }))
            }
            Err(_) => Some(self.end_with("duration")),
        }
    }

    fn end_with(&mut self, reason: &'static str) -> TraceItem {
        self.finish();
        let mut end = self.stats.lock().map(|s| s.clone()).unwrap_or_default();
        end.reason = reason.into();
        TraceItem::End(end)
    }

    fn finish(&mut self) {
        self.ended = true;
        self.guard.take();
    }
}

/// Drains the ring buffer while traces run; stops tracing and exits when none do.
async fn pump(hub: Arc<Mutex<Hub>>, tap: SharedTap, mut decoder: Decoder, mut lost_before: u64) {
    let _exit = PumpExit {
        hub: hub.clone(),
        tap: tap.clone(),
    };
    let mut interval = tokio::time::interval(PUMP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut raw: Vec<TraceEvent> = Vec::with_capacity(1024);
    loop {
        interval.tick().await;
        raw.clear();
        let lost_now = {
            let mut slot = lock_tap(&tap);
            // Retired (a teardown, shutdown): this pump is done and drains nothing; a
            // later trace may run on a new tap with a pump of its own.
            if slot.retired {
                return;
            }
            slot.tap.drain(&mut raw, DRAIN_BATCH);
            slot.tap.lost().unwrap_or(lost_before)
        };
        let lost = lost_now.saturating_sub(lost_before);
        lost_before = lost_now;
        let records: Vec<TraceRecord> = if raw.is_empty() {
            vec![]
        } else {
            decoder.decode(&raw).await
        };
        let Ok(mut hub) = hub.lock() else { return };
        // Stopped while this cycle drained: what it drained belongs to no trace now.
        if !hub.tap.as_ref().is_some_and(|t| Arc::ptr_eq(t, &tap)) {
            return;
        }
        let now = Instant::now();
        let finished: Vec<u64> = hub
            .traces
            .iter_mut()
            .filter_map(|(id, sub)| deliver(sub, &records, lost, now).then_some(*id))
            .collect();
        for id in &finished {
            hub.traces.remove(id);
        }
        if !finished.is_empty() || hub.traces.is_empty() {
            // Cover the traces left, or (none left, also after the last guard) make
            // sure the kernel stops writing.
            let _ = set_kernel_filter(&mut hub, &tap);
        }
        if hub.traces.is_empty() {
            // Let go of the tap under the hub's lock, so a trace starting next opens a
            // new one (and a pump with it) rather than join a pump that is leaving.
            hub.tap = None;
            retire(&tap);
            return;
        }
    }
}

/// Whatever way the pump ends (no trace left, the hub gone, a panic): if its tap is
/// still the hub's, the hub lets go of it and ends the traces left ("stopped"), so a
/// later trace starts a new pump instead of waiting on a dead one.
struct PumpExit {
    hub: Arc<Mutex<Hub>>,
    tap: SharedTap,
}

impl Drop for PumpExit {
    fn drop(&mut self) {
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        if !hub.tap.as_ref().is_some_and(|t| Arc::ptr_eq(t, &self.tap)) {
            return;
        }
        hub.tap = None;
        if end_all(&mut hub, "stopped") > 0 {
            warn!("the trace pump stopped with traces running; they were ended");
        }
        // The kernel's filter must not stay set with no pump draining.
        retire(&self.tap);
    }
}

/// Hands one cycle's events to one trace; true when the trace reached its count.
fn deliver(sub: &mut Subscriber, records: &[TraceRecord], buffer_lost: u64, now: Instant) -> bool {
    let rate = f64::from(sub.query.rate.max(1));
    let elapsed = now.duration_since(sub.refilled).as_secs_f64();
    sub.tokens = (sub.tokens + elapsed * rate).min(rate);
    sub.refilled = now;
    let mut lost = [buffer_lost, 0, 0];
    let mut done = false;
    for record in records {
        if record.ktime_ns < sub.started_ktime || !sub.query.wants(record) {
            continue;
        }
        sub.seen += 1;
        if !sub.kernel_samples
            && sub.query.sample > 1
            && !sub.seen.is_multiple_of(u64::from(sub.query.sample))
        {
            continue;
        }
        if sub.tokens < 1.0 {
            lost[LostCause::RateCap as usize] += 1;
            continue;
        }
        match sub.tx.try_send(TraceItem::Event(Box::new(record.clone()))) {
            Ok(()) => {
                sub.tokens -= 1.0;
                let mut stats = sub.stats.lock().unwrap_or_else(|p| p.into_inner());
                stats.events += 1;
                if sub.query.count.is_some_and(|c| stats.events >= c) {
                    done = true;
                    break;
                }
            }
            Err(_) => lost[LostCause::SlowReader as usize] += 1,
        }
    }
    {
        let mut stats = sub.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.lost_buffer_full += lost[0];
        stats.lost_rate_cap += lost[1];
        stats.lost_slow_reader += lost[2];
    }
    for cause in [
        LostCause::BufferFull,
        LostCause::RateCap,
        LostCause::SlowReader,
    ] {
        let i = cause as usize;
        sub.unreported[i].0 += lost[i];
        let (n, last) = sub.unreported[i];
        if n > 0
            && (done || last.is_none_or(|l| now.duration_since(l) >= LOSS_REPORT_EVERY))
            && sub
                .tx
                .try_send(TraceItem::Lost { cause, events: n })
                .is_ok()
        {
            sub.unreported[i] = (0, Some(now));
        }
    }
    if done {
        let mut end = sub.stats.lock().map(|s| s.clone()).unwrap_or_default();
        end.reason = "count".into();
        // The queue may be full of events; the stream ends when the channel closes
        // either way (see TraceStream::next).
        let _ = sub.tx.try_send(TraceItem::End(end));
    }
    done
}

#[cfg(test)]
mod tests;
