//! The trace's kernel side: the control the programs read on every packet, the ring
//! buffer they write events to while a trace runs, and the count of events lost to a
//! full buffer. [`TraceSource`] opens a [`TraceTap`] on the pinned maps (or, for tests
//! without root, on [`FakeTrace`]).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use ipnet::Ipv4Net;
pub use remapd_common::TraceEvent;
use remapd_common::{
    TRACE_CONTROL_MAP, TRACE_DROPPED, TRACE_EVENTS_MAP, TRACE_LOST_MAP, TRACE_TRANSLATED,
    TraceControl,
};

use crate::error::map_err;
use crate::load::PinLayout;
use crate::{DataplaneConfig, DataplaneError};

/// What the programs report while a trace runs. Unset fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelTraceFilter {
    /// Only packets on this interface.
    pub ifindex: Option<u32>,
    /// Only packets of this IP protocol.
    pub protocol: Option<u8>,
    /// Only translated packets (`Some(true)`) or only dropped ones (`Some(false)`).
    pub translated: Option<bool>,
    /// One in `sample` matching packets, at random (0 and 1: all).
    pub sample: u32,
    /// Only packets with an address (before or after translation) in this prefix.
    pub prefix: Option<Ipv4Net>,
}

impl KernelTraceFilter {
    /// The control word the programs read.
    pub fn control(&self) -> TraceControl {
        let (prefix_addr, prefix_mask) = self
            .prefix
            .map_or((0, 0), |p| (u32::from(p.network()), u32::from(p.netmask())));
        TraceControl {
            active: 1,
            ifindex: self.ifindex.unwrap_or(0),
            protocol: self.protocol.map_or(0, |p| u32::from(p) + 1),
            verdicts: match self.translated {
                None => 0,
                Some(true) => TRACE_TRANSLATED,
                Some(false) => TRACE_DROPPED,
            },
            sample: self.sample,
            prefix_addr,
            prefix_mask,
            _pad: 0,
        }
    }

    /// The narrowest filter that passes everything each of `filters` passes.
    pub fn union(filters: &[KernelTraceFilter]) -> KernelTraceFilter {
        let Some(first) = filters.first() else {
            return KernelTraceFilter::default();
        };
        let same = |f: &dyn Fn(&KernelTraceFilter) -> bool| filters.iter().all(f);
        KernelTraceFilter {
            ifindex: first.ifindex.filter(|i| same(&|f| f.ifindex == Some(*i))),
            protocol: first.protocol.filter(|p| same(&|f| f.protocol == Some(*p))),
            translated: first
                .translated
                .filter(|t| same(&|f| f.translated == Some(*t))),
            sample: if same(&|f| f.sample == first.sample) {
                first.sample
            } else {
                1
            },
            prefix: first.prefix.filter(|p| same(&|f| f.prefix == Some(*p))),
        }
    }
}

/// An open view of the trace maps: start, stop, drain events, read the loss count.
pub trait TraceTap: Send {
    /// Starts tracing with `filter` (replacing any filter in force), or stops (`None`).
    fn set(&mut self, filter: Option<&KernelTraceFilter>) -> Result<(), DataplaneError>;
    /// Moves up to `max` waiting events into `out` (never blocks).
    fn drain(&mut self, out: &mut Vec<TraceEvent>, max: usize);
    /// Events the programs could not write because the buffer was full, since load.
    fn lost(&self) -> Result<u64, DataplaneError>;
}

/// Opens [`TraceTap`]s.
pub trait TraceSource: Send + Sync {
    /// A tap on the trace maps; fails when the dataplane is not loaded.
    fn open(&self) -> Result<Box<dyn TraceTap>, DataplaneError>;
}

/// The trace maps of a loaded object.
pub struct KernelTraceTap {
    control: Array<MapData, TraceControl>,
    events: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
}

impl KernelTraceTap {
    /// A tap on the maps pinned under `config.pin_dir` (this binary's layout).
    pub fn open_pinned(config: &DataplaneConfig) -> Result<Self, DataplaneError> {
        let layout = PinLayout::new(&config.pin_dir);
        let path = layout.map(TRACE_CONTROL_MAP);
        if !path.exists() {
            return Err(DataplaneError::NotPinned {
                path: layout.maps.clone(),
            });
        }
        let open = |name: &'static str| MapData::from_pin(layout.map(name)).map_err(map_err(name));
        Self::from_maps(
            Map::Array(open(TRACE_CONTROL_MAP)?),
            Map::RingBuf(open(TRACE_EVENTS_MAP)?),
            Map::PerCpuArray(open(TRACE_LOST_MAP)?),
        )
    }

    /// A tap on maps taken from a loaded object (`aya::Ebpf::take_map`), for tests.
    pub fn from_maps(control: Map, events: Map, lost: Map) -> Result<Self, DataplaneError> {
        Ok(Self {
            control: Array::try_from(control).map_err(map_err(TRACE_CONTROL_MAP))?,
            events: RingBuf::try_from(events).map_err(map_err(TRACE_EVENTS_MAP))?,
            lost: PerCpuArray::try_from(lost).map_err(map_err(TRACE_LOST_MAP))?,
        })
    }

    /// The control word in force.
    pub fn control(&self) -> Result<TraceControl, DataplaneError> {
        self.control.get(&0, 0).map_err(map_err(TRACE_CONTROL_MAP))
    }
}

impl TraceTap for KernelTraceTap {
    fn set(&mut self, filter: Option<&KernelTraceFilter>) -> Result<(), DataplaneError> {
        let control = filter.map(KernelTraceFilter::control).unwrap_or_default();
        self.control
            .set(0, control, 0)
            .map_err(map_err(TRACE_CONTROL_MAP))
    }

    fn drain(&mut self, out: &mut Vec<TraceEvent>, max: usize) {
        for _ in 0..max {
            let Some(item) = self.events.next() else {
                break;
            };
            if item.len() >= std::mem::size_of::<TraceEvent>() {
                // SAFETY: the programs write whole `TraceEvent`s (plain old data); the
                // ring buffer's records are 8-byte aligned; unaligned read regardless.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<TraceEvent>()) });
            }
        }
    }

    fn lost(&self) -> Result<u64, DataplaneError> {
        let values = self.lost.get(&0, 0).map_err(map_err(TRACE_LOST_MAP))?;
        Ok(values.iter().sum())
    }
}

/// Opens taps on the pinned trace maps.
pub struct PinnedTraceSource {
    /// Where the dataplane is pinned.
    pub config: DataplaneConfig,
}

impl TraceSource for PinnedTraceSource {
    fn open(&self) -> Result<Box<dyn TraceTap>, DataplaneError> {
        Ok(Box::new(KernelTraceTap::open_pinned(&self.config)?))
    }
}

/// Stops a trace an earlier process left running (killed while streaming): the
/// programs would otherwise keep writing events no one reads. Nothing pinned: nothing
/// to do.
pub fn stop_orphaned_trace(config: &DataplaneConfig) -> Result<bool, DataplaneError> {
    match KernelTraceTap::open_pinned(config) {
        Ok(mut tap) => {
            let was = tap.control()?.active != 0;
            if was {
                tap.set(None)?;
            }
            Ok(was)
        }
        Err(DataplaneError::NotPinned { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The trace of the fake dataplane: tests push events; they are delivered only while
/// a trace is on, as the kernel's would be.
#[derive(Clone, Default)]
pub struct FakeTrace {
    inner: Arc<Mutex<FakeTraceState>>,
}

#[derive(Default)]
struct FakeTraceState {
    control: Option<KernelTraceFilter>,
    events: VecDeque<TraceEvent>,
    lost: u64,
    /// When set, opening a tap fails with this reason.
    unavailable: Option<String>,
    /// Taps opened so far.
    opens: u64,
}

impl FakeTrace {
    /// Emits `event` if a trace is on (the filter is applied by the reader, not here).
    pub fn push(&self, event: TraceEvent) -> bool {
        let Ok(mut state) = self.inner.lock() else {
            return false;
        };
        if state.control.is_none() {
            return false;
        }
        state.events.push_back(event);
        true
    }

    /// Adds `n` to the count of lost events.
    pub fn lose(&self, n: u64) {
        if let Ok(mut state) = self.inner.lock() {
            state.lost += n;
        }
    }

    /// The filter in force (`None`: no trace running).
    pub fn control(&self) -> Option<KernelTraceFilter> {
        self.inner.lock().ok().and_then(|s| s.control.clone())
    }

    /// How many taps were opened (each open is a fresh look at the maps).
    pub fn opens(&self) -> u64 {
        self.inner.lock().map_or(0, |s| s.opens)
    }

    /// Makes opening a tap fail with `reason` (a dataplane that did not load).
    pub fn make_unavailable(&self, reason: &str) {
        if let Ok(mut state) = self.inner.lock() {
            state.unavailable = Some(reason.to_owned());
        }
    }
}

impl TraceSource for FakeTrace {
    fn open(&self) -> Result<Box<dyn TraceTap>, DataplaneError> {
        let mut state = self
            .inner
            .lock()
            .map_err(|_| DataplaneError::FakePoisoned)?;
        if let Some(reason) = &state.unavailable {
            return Err(DataplaneError::NotPinned {
                path: PathBuf::from(reason),
            });
        }
        state.opens += 1;
        Ok(Box::new(self.clone()))
    }
}

impl TraceTap for FakeTrace {
    fn set(&mut self, filter: Option<&KernelTraceFilter>) -> Result<(), DataplaneError> {
        let mut state = self
            .inner
            .lock()
            .map_err(|_| DataplaneError::FakePoisoned)?;
        state.control = filter.cloned();
        Ok(())
    }

    fn drain(&mut self, out: &mut Vec<TraceEvent>, max: usize) {
        if let Ok(mut state) = self.inner.lock() {
            let n = max.min(state.events.len());
            out.extend(state.events.drain(..n));
        }
    }

    fn lost(&self) -> Result<u64, DataplaneError> {
        Ok(self
            .inner
            .lock()
            .map_err(|_| DataplaneError::FakePoisoned)?
            .lost)
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of `bpf_ktime_get_ns` (0 if unreadable).
pub fn monotonic_now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Nanoseconds since the Unix epoch for a `bpf_ktime_get_ns` value (CLOCK_MONOTONIC).
pub fn monotonic_to_unix_ns(ktime_ns: u64) -> u64 {
    let now_mono = match monotonic_now_ns() {
        0 => ktime_ns,
        now => now,
    };
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    now_unix.saturating_sub(now_mono.saturating_sub(ktime_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_filter_of_several_traces_passes_what_each_wants() {
        let a = KernelTraceFilter {
            ifindex: Some(7),
            protocol: Some(6),
            translated: Some(true),
            sample: 10,
            prefix: Some("10.0.0.0/8".parse().unwrap()),
        };
        assert_eq!(KernelTraceFilter::union(std::slice::from_ref(&a)), a);
        let b = KernelTraceFilter {
            ifindex: Some(7),
            protocol: Some(17),
            translated: Some(true),
            sample: 1,
            prefix: None,
        };
        let both = KernelTraceFilter::union(&[a, b]);
        assert_eq!(
            both,
            KernelTraceFilter {
                ifindex: Some(7),
                protocol: None,
                translated: Some(true),
                sample: 1,
                prefix: None,
            }
        );
    }

    #[test]
    fn the_control_word_encodes_each_filter() {
        let c = KernelTraceFilter {
            ifindex: Some(3),
            protocol: Some(0),
            translated: Some(false),
            sample: 4,
            prefix: Some("10.1.0.0/16".parse().unwrap()),
        }
        .control();
        assert_eq!(
            (c.active, c.ifindex, c.protocol, c.verdicts, c.sample),
            (1, 3, 1, TRACE_DROPPED, 4)
        );
        assert_eq!((c.prefix_addr, c.prefix_mask), (0x0a01_0000, 0xffff_0000));
        assert_eq!(KernelTraceFilter::default().control().verdicts, 0);
    }

    #[test]
    fn the_fake_delivers_only_while_tracing() {
        let fake = FakeTrace::default();
        assert!(!fake.push(TraceEvent::default()));
        let mut tap = fake.open().unwrap();
        tap.set(Some(&KernelTraceFilter::default())).unwrap();
        assert!(fake.push(TraceEvent::default()));
        let mut out = vec![];
        tap.drain(&mut out, 10);
        assert_eq!(out.len(), 1);
        tap.set(None).unwrap();
        assert_eq!(fake.control(), None);
    }
}
