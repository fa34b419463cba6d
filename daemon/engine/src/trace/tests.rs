//! The trace hub over the fake dataplane's trace: filters, limits, losses, the kernel
//! filter's lifetime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use remapd_common::{TRACE_DROPPED, TRACE_FLAG_IPV4, TRACE_TRANSLATED, TraceEvent, drop_reason};
use remapd_dataplane::trace::{FakeTrace, KernelTraceFilter};
use remapd_dataplane::{DataplaneApplier, FakeDataplane};
use remapd_model::rule::AddressField;
use tokio::sync::watch;

use super::*;

fn tracer(fake: &FakeTrace) -> (Tracer, watch::Sender<Arc<Snapshot>>) {
    let dataplane = FakeDataplane {
        trace: fake.clone(),
        ..FakeDataplane::default()
    };
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    (
        Tracer::new(dataplane.trace_source(), dataplane.status_reader(), rx),
        tx,
    )
}

/// A translated UDP packet on loopback (ifindex 1, which every namespace has).
fn udp(src: [u8; 4], dst: [u8; 4], new_dst: [u8; 4]) -> TraceEvent {
    TraceEvent {
        ifindex: 1,
        len: 60,
        src_before: u32::from_be_bytes(src),
        dst_before: u32::from_be_bytes(dst),
        src_after: u32::from_be_bytes(src),
        dst_after: u32::from_be_bytes(new_dst),
        src_rule: u32::MAX,
        dst_rule: 0,
        src_port: 4000,
        dst_port: 53,
        direction: 1,
        protocol: 17,
        verdict: TRACE_TRANSLATED as u8,
        flags: TRACE_FLAG_IPV4,
        time_ns: remapd_dataplane::trace::monotonic_now_ns(),
        ..TraceEvent::default()
    }
}

fn dropped_tcp(src: [u8; 4], dst: [u8; 4]) -> TraceEvent {
    TraceEvent {
        protocol: 6,
        verdict: TRACE_DROPPED as u8,
        reason: drop_reason::NOT_EXPORTED as u8,
        direction: 0,
        src_rule: u32::MAX,
        dst_rule: u32::MAX,
        ..udp(src, dst, dst)
    }
}

async fn collect(stream: &mut TraceStream) -> Vec<TraceItem> {
    let mut items = vec![];
    while let Some(item) = stream.next().await {
        items.push(item);
    }
    items
}

fn events(items: &[TraceItem]) -> Vec<&TraceRecord> {
    items
        .iter()
        .filter_map(|i| match i {
            TraceItem::Event(r) => Some(r.as_ref()),
            _ => None,
        })
        .collect()
}

fn end(items: &[TraceItem]) -> &TraceEnd {
    match items.last() {
        Some(TraceItem::End(end)) => end,
        other => panic!("the last item is not the end: {other:?}"),
    }
}

#[tokio::test]
async fn a_trace_turns_the_kernel_on_decodes_events_and_turns_it_off_at_its_count() {
    let fake = FakeTrace::default();
    let (tracer, _snapshot) = tracer(&fake);
    assert_eq!(fake.control(), None);
    let mut stream = tracer
        .start(TraceQuery {
            count: Some(2),
            ..TraceQuery::default()
        })
        .unwrap();
    assert_eq!(
        fake.control(),
        Some(KernelTraceFilter {
            sample: 1,
            ..Default::default()
        })
    );
    for _ in 0..3 {
        assert!(fake.push(udp([10, 0, 0, 1], [30, 0, 0, 9], [40, 0, 0, 9])));
    }
    let items = collect(&mut stream).await;
    let got = events(&items);
    assert_eq!(got.len(), 2, "{items:?}");
    let first = got[0];
    assert_eq!(first.interface, "lo");
    assert_eq!(first.protocol, "udp");
    assert_eq!(first.verdict, TraceVerdict::Translated);
    let before = first.before.as_ref().unwrap();
    let after = first.after.as_ref().unwrap();
    assert_eq!(
        (before.dst, after.dst),
        (Ipv4Addr::new(30, 0, 0, 9), Ipv4Addr::new(40, 0, 0, 9))
    );
    assert_eq!((after.src_port, after.dst_port), (Some(4000), Some(53)));
    assert_eq!(first.rules.len(), 1);
    assert_eq!(first.rules[0].field, AddressField::Destination);
    assert_eq!(
        (end(&items).reason.as_str(), end(&items).events),
        ("count", 2)
    );
    drop(stream);
    assert_eq!(
        fake.control(),
        None,
        "the kernel stops tracing with the last trace"
    );
    assert_eq!(tracer.running(), 0);
}

#[tokio::test]
async fn each_trace_gets_only_what_its_filters_pass_and_the_kernel_filter_covers_both() {
    let fake = FakeTrace::default();
    let (tracer, _snapshot) = tracer(&fake);
    let mut drops = tracer
        .start(TraceQuery {
            verdict: Some(TraceVerdict::Dropped),
            protocol: Some(6),
            count: Some(1),
            ..TraceQuery::default()
        })
        .unwrap();
    assert_eq!(
        fake.control().unwrap().translated,
        Some(false),
        "one trace: the kernel filters for it"
    );
    let mut prefix = tracer
        .start(TraceQuery {
            prefix: Some("40.0.0.0/24".parse().unwrap()),
            count: Some(1),
            ..TraceQuery::default()
        })
        .unwrap();
    let kernel = fake.control().unwrap();
    assert_eq!(
        (kernel.translated, kernel.protocol, kernel.prefix),
        (None, None, None)
    );
    fake.push(udp([10, 0, 0, 1], [30, 0, 0, 9], [50, 0, 0, 9]));
    fake.push(dropped_tcp([10, 0, 0, 1], [10, 9, 9, 9]));
    fake.push(udp([10, 0, 0, 1], [30, 0, 0, 9], [40, 0, 0, 9]));
    let got = collect(&mut drops).await;
    let got = events(&got);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].reason.as_deref(), Some("not_exported"));
    assert!(got[0].after.is_none(), "a dropped packet has no after");
    let got = collect(&mut prefix).await;
    let got = events(&got);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].after.as_ref().unwrap().dst,
        Ipv4Addr::new(40, 0, 0, 9)
    );
}

#[tokio::test]
async fn a_trace_ends_after_its_duration_and_reports_the_rate_cap_and_kernel_losses() {
    let fake = FakeTrace::default();
    let (tracer, _snapshot) = tracer(&fake);
    let mut stream = tracer
        .start(TraceQuery {
            rate: 3,
            duration: Duration::from_millis(300),
            ..TraceQuery::default()
        })
        .unwrap();
    for _ in 0..10 {
        fake.push(udp([10, 0, 0, 1], [30, 0, 0, 9], [40, 0, 0, 9]));
    }
    fake.lose(5);
    let items = collect(&mut stream).await;
    assert_eq!(events(&items).len(), 3);
    let end = end(&items);
    assert_eq!(end.reason, "duration");
    assert_eq!(
        (end.events, end.lost_rate_cap, end.lost_buffer_full),
        (3, 7, 5)
    );
    let lost: Vec<(LostCause, u64)> = items
        .iter()
        .filter_map(|i| match i {
            TraceItem::Lost { cause, events } => Some((*cause, *events)),
            _ => None,
        })
        .collect();
    assert!(lost.contains(&(LostCause::RateCap, 7)), "{lost:?}");
    assert!(lost.contains(&(LostCause::BufferFull, 5)), "{lost:?}");
}

#[tokio::test]
async fn sampling_keeps_one_in_n() {
    let fake = FakeTrace::default();
    let (tracer, _snapshot) = tracer(&fake);
    // Two traces: the kernel cannot sample for both, so the hub does.
    let _other = tracer.start(TraceQuery::default()).unwrap();
    let mut stream = tracer
        .start(TraceQuery {
            sample: 3,
            duration: Duration::from_millis(300),
            ..TraceQuery::default()
        })
        .unwrap();
    assert_eq!(fake.control().unwrap().sample, 1);
    for _ in 0..9 {
        fake.push(udp([10, 0, 0, 1], [30, 0, 0, 9], [40, 0, 0, 9]));
    }
    let items = collect(&mut stream).await;
    assert_eq!(events(&items).len(), 3);
}

#[tokio::test]
async fn refusals_name_the_reason() {
    let fake = FakeTrace::default();
    let (tracer, _snapshot) = tracer(&fake);
    let unknown = tracer.start(TraceQuery {
        peering: Some("nope".into()),
        ..TraceQuery::default()
    });
    assert!(matches!(unknown, Err(EngineError::PeeringNotFound(_))));
    let mut held = vec![];
    for _ in 0..MAX_TRACES {
        held.push(tracer.start(TraceQuery::default()).unwrap());
    }
    assert!(matches!(
        tracer.start(TraceQuery::default()),
        Err(EngineError::TooManyTraces(MAX_TRACES))
    ));
    drop(held);
    assert_eq!(fake.control(), None);
    // The pump lets go of the tap at its next cycle; then a new trace opens a new one.
    tokio::time::sleep(PUMP_INTERVAL * 5).await;
    fake.make_unavailable("not loaded");
    assert!(matches!(
        tracer.start(TraceQuery::default()),
        Err(EngineError::NothingToTrace(_))
    ));
}

#[tokio::test]
async fn two_traces_with_the_same_sample_rate_are_sampled_once() {
    let fake = FakeTrace::default();
    let (tracer, _snapshot) = tracer(&fake);
    let query = TraceQuery {
        sample: 3,
        duration: Duration::from_millis(300),
        ..TraceQuery::default()
    };
    let mut a = tracer.start(query.clone()).unwrap();
    let _b = tracer.start(query).unwrap();
    // The kernel samples for both (here: the fake delivers what it is given, as the
    // kernel would after sampling); the hub must not sample again.
    assert_eq!(fake.control().unwrap().sample, 3);
    for _ in 0..4 {
        fake.push(udp([10, 0, 0, 1], [30, 0, 0, 9], [40, 0, 0, 9]));
    }
    assert_eq!(events(&collect(&mut a).await).len(), 4);
}

#[tokio::test]
async fn events_from_before_a_trace_started_are_not_its_own() {
    let fake = FakeTrace::default();
    let (tracer, _snapshot) = tracer(&fake);
    let mut stream = tracer
        .start(TraceQuery {
            duration: Duration::from_millis(300),
            ..TraceQuery::default()
        })
        .unwrap();
    let mut old = udp([10, 0, 0, 1], [30, 0, 0, 9], [40, 0, 0, 9]);
    old.time_ns = 1;
    fake.push(old);
    fake.push(udp([10, 0, 0, 1], [30, 0, 0, 9], [40, 0, 0, 9]));
    assert_eq!(events(&collect(&mut stream).await).len(), 1);
}

/// A teardown unpins the maps the traces read (and the next apply loads new ones):
/// `stop_all` ends every trace with its end item and reason, stops the kernel writing,
/// and the next trace opens the maps afresh and gets its events from a new pump.
#[tokio::test]
async fn stop_all_ends_every_trace_and_the_next_one_opens_the_maps_afresh() {
    let fake = FakeTrace::default();
    let (tracer, _snapshot) = tracer(&fake);
    let mut a = tracer.start(TraceQuery::default()).unwrap();
    let mut b = tracer
        .start(TraceQuery {
            protocol: Some(17),
            ..TraceQuery::default()
        })
        .unwrap();
    assert_eq!(fake.opens(), 1);
    assert!(fake.push(udp([10, 0, 0, 1], [30, 0, 0, 9], [40, 0, 0, 9])));
    tokio::time::sleep(PUMP_INTERVAL * 3).await;
    tracer.stop_all("teardown");
    assert_eq!(fake.control(), None, "the kernel stops writing");
    assert_eq!(tracer.running(), 0);
    for stream in [&mut a, &mut b] {
        let items = collect(stream).await;
        assert_eq!(events(&items).len(), 1, "{items:?}");
        let end = end(&items);
        assert_eq!((end.reason.as_str(), end.events), ("teardown", 1));
    }

    let mut c = tracer
        .start(TraceQuery {
            count: Some(1),
            ..TraceQuery::default()
        })
        .unwrap();
    assert_eq!(
        fake.opens(),
        2,
        "a fresh tap, not the one from before the teardown"
    );
    assert!(fake.push(udp([10, 0, 0, 2], [30, 0, 0, 9], [40, 0, 0, 9])));
    let items = collect(&mut c).await;
    assert_eq!(events(&items).len(), 1, "{items:?}");
    assert_eq!(end(&items).reason, "count");
    // Nothing running: stopping again is a no-op.
    tracer.stop_all("teardown");
    assert_eq!(tracer.running(), 0);
}

/// At shutdown the running traces end with reason `shutdown` and no new one starts
/// (it would hold the server's drain).
#[tokio::test]
async fn close_ends_running_traces_and_refuses_new_ones() {
    let fake = FakeTrace::default();
    let (tracer, _snapshot) = tracer(&fake);
    let mut d = tracer.start(TraceQuery::default()).unwrap();
    tracer.close();
    let items = collect(&mut d).await;
    assert_eq!(end(&items).reason, "shutdown");
    assert_eq!(fake.control(), None);
    let refused = tracer.start(TraceQuery::default()).err();
    assert!(
        matches!(&refused, Some(EngineError::TraceUnavailable(m)) if m.contains("shutting down")),
        "{refused:?}"
    );
    assert_eq!(fake.control(), None, "the refused trace turned nothing on");
}
