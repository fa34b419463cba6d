//! Turns the programs' raw events into [`TraceRecord`]s: interface and peering names,
//! the rules by counter slot, wall-clock time.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use tokio::sync::watch;

use remapd_common::{
    TRACE_DROPPED, TRACE_FLAG_IPV4, TRACE_FLAG_MSS, TRACE_FLAG_QUOTE, drop_reason,
};
use remapd_dataplane::trace::{TraceEvent, monotonic_to_unix_ns};
use remapd_dataplane::{DataplaneStatusReader, TranslationRule};
use remapd_model::rule::{AddressField, Direction};

use super::record::{
    FiredRule, IcmpFields, PacketAddresses, TraceRecord, TraceVerdict, protocol_name,
};
use crate::daemon::Snapshot;

const IPPROTO_ICMP: u8 = 1;
const NO_RULE: u32 = u32::MAX;
/// Names are read again at most this often when an event names something unknown.
const REFRESH_AT_MOST: Duration = Duration::from_secs(1);

/// Decodes events with names looked up once and refreshed when they go stale.
pub(super) struct Decoder {
    status: Arc<dyn DataplaneStatusReader>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    interfaces: BTreeMap<u32, String>,
    peerings: BTreeMap<String, String>,
    rules: BTreeMap<u32, TranslationRule>,
    refreshed: Option<Instant>,
}

impl Decoder {
    pub(super) fn new(
        status: Arc<dyn DataplaneStatusReader>,
        snapshot: watch::Receiver<Arc<Snapshot>>,
    ) -> Self {
        Self {
            status,
            snapshot,
            interfaces: BTreeMap::new(),
            peerings: BTreeMap::new(),
            rules: BTreeMap::new(),
            refreshed: None,
        }
    }

    /// Records for `events`, in order.
    pub(super) async fn decode(&mut self, events: &[TraceEvent]) -> Vec<TraceRecord> {
        let stale = self.snapshot.has_changed().unwrap_or(false)
            || events.iter().any(|e| {
                !self.interfaces.contains_key(&e.ifindex)
                    || [e.src_rule, e.dst_rule]
                        .iter()
                        .any(|id| *id != NO_RULE && !self.rules.contains_key(id))
            });
        if stale
            && self
                .refreshed
                .is_none_or(|t| t.elapsed() >= REFRESH_AT_MOST)
        {
            self.refresh().await;
        }
        events.iter().map(|e| self.record(e)).collect()
    }

    async fn refresh(&mut self) {
        self.refreshed = Some(Instant::now());
        let snapshot = self.snapshot.borrow_and_update().clone();
        self.peerings = snapshot
            .outcomes
            .iter()
            .filter(|(_, o)| !o.interface.is_empty())
            .map(|(name, o)| (o.interface.clone(), name.clone()))
            .collect();
        let status = self.status.clone();
        // Reading the maps and the interface list are blocking system calls.
        let read = tokio::task::spawn_blocking(move || {
            let interfaces = remapd_dataplane::interfaces::list()
                .map(|all| {
                    all.into_iter()
                        .map(|(name, i)| (i.ifindex, name))
                        .collect::<BTreeMap<_, _>>()
                })
                .unwrap_or_default();
            let rules = status
                .status()
                .map(|s| {
                    s.rules
                        .into_iter()
                        .map(|r| (r.rule_id, r.rule))
                        .collect::<BTreeMap<_, _>>()
                })
                .unwrap_or_default();
            (interfaces, rules)
        })
        .await;
        if let Ok((interfaces, rules)) = read {
            self.interfaces = interfaces;
            self.rules = rules;
        }
    }

    fn record(&self, e: &TraceEvent) -> TraceRecord {
        let interface = self
            .interfaces
            .get(&e.ifindex)
            .cloned()
            .unwrap_or_else(|| format!("if{}", e.ifindex));
        let ipv4 = e.flags & TRACE_FLAG_IPV4 != 0;
        let dropped = e.verdict == TRACE_DROPPED as u8;
        let icmp = ipv4 && e.protocol == IPPROTO_ICMP;
        let ports = ipv4 && !icmp && matches!(e.protocol, 6 | 17 | 33 | 136);
        let port = |p: u16| (ports && (p != 0 || e.src_port != 0 || e.dst_port != 0)).then_some(p);
        let addresses = |src: u32, dst: u32| PacketAddresses {
            src: Ipv4Addr::from(src),
            dst: Ipv4Addr::from(dst),
            src_port: port(e.src_port),
            dst_port: port(e.dst_port),
        };
        let direction = Direction::from_wire(e.direction).unwrap_or(Direction::Ingress);
        let rules = [
            (e.src_rule, AddressField::Source),
            (e.dst_rule, AddressField::Destination),
        ]
        .into_iter()
        .filter(|(id, _)| *id != NO_RULE)
        .map(|(id, field)| {
            // A slot the rules reused since the packet names another rule.
            let rule = self.rules.get(&id).filter(|r| {
                r.field == field && r.direction == direction && r.interface == interface
            });
            FiredRule {
                id,
                field,
                from: rule.map(|r| r.from),
                to: rule.map(|r| r.to),
            }
        })
        .collect();
        TraceRecord {
            time: rfc3339(monotonic_to_unix_ns(e.time_ns)),
            peering: self.peerings.get(&interface).cloned(),
            interface,
            direction,
            protocol: if ipv4 {
                protocol_name(e.protocol)
            } else {
                "other".into()
            },
            protocol_number: if ipv4 { e.protocol } else { 0 },
            ktime_ns: e.time_ns,
            verdict: if dropped {
                TraceVerdict::Dropped
            } else {
                TraceVerdict::Translated
            },
            reason: dropped.then(|| {
                drop_reason::NAMES
                    .get(usize::from(e.reason))
                    .map_or_else(|| format!("reason_{}", e.reason), |n| (*n).to_owned())
            }),
            // Both zero: the trace started while the program handled this packet,
            // after it would have read them (see the programs' `run`).
            before: (ipv4 && (e.src_before, e.dst_before) != (0, 0))
                .then(|| addresses(e.src_before, e.dst_before)),
            after: (ipv4 && !dropped).then(|| addresses(e.src_after, e.dst_after)),
            icmp: icmp.then(|| {
                let icmp_type = (e.src_port >> 8) as u8;
                IcmpFields {
                    icmp_type,
                    code: e.src_port as u8,
                    id: matches!(icmp_type, 0 | 8).then_some(e.dst_port),
                }
            }),
            rules,
            quote_translated: e.flags & TRACE_FLAG_QUOTE != 0,
            mss_clamped: e.flags & TRACE_FLAG_MSS != 0,
            bytes: e.len,
        }
    }
}

fn rfc3339(unix_ns: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_nanos(unix_ns);
    humantime::format_rfc3339_micros(time.max(UNIX_EPOCH)).to_string()
}
