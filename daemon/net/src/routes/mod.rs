//! Routes into the tunnels, in one of two places ([`RoutePlacement`]):
//!
//! - **own table** (the default): remapd owns one routing table outright (every IPv4
//!   and IPv6 route in it is remapd's, so anything it did not ask for is removed) and
//!   one policy rule per family, `from all lookup <table> priority <priority>`, that
//!   sends lookups there, ahead of the main table (the IPv6 one from the first IPv6
//!   route on, so a gateway without IPv6 keeps working for IPv4);
//! - **main table**: remapd's routes sit in the main table marked with protocol
//!   [`RTPROT_REMAPD`], and no rule is added. Only routes with that protocol are
//!   remapd's (another program using 78 in the same namespace would lose its routes); a
//!   wanted prefix that another route of the main table holds, whole or in part (a
//!   more specific route), is refused, never taken over. The kernel then keeps its direct main-table lookup,
//!   which any policy rule besides the three defaults turns off for every route lookup
//!   on the gateway (`fib_has_custom_rules`; BENCHMARKS.md §4 measures what that costs
//!   through WireGuard).
//!
//! Each placement also removes what the other one left (switching is one restart), and
//! routes in other tables, other routes of the main table and all other rules are never
//! touched.
//!
//! [`converge`] and [`clear`] decide what to ask of the kernel and in which order; they
//! are written against [`kernel::RoutingKernel`], which [`kernel::Rtnetlink`] does with
//! rtnetlink on the applier's [`NetlinkSession`] and a recording kernel does in memory
//! for the table tests.

pub(crate) mod kernel;
#[cfg(test)]
mod recording;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use super::netlink::{Link, NetlinkSession};
use super::{NetError, ProtectedAddress, RouteApplier, RouteReport, RouteSpec};
use kernel::{RoutingKernel, Rtnetlink};

/// The routing protocol number remapd's routes carry (`ip route show proto 78`). In the
/// main table it is what tells remapd's routes from everyone else's. Not one of the
/// numbers iproute2 names (`/etc/iproute2/rt_protos`) or the routing daemons use.
pub const RTPROT_REMAPD: u8 = 78;

/// The main routing table's id (`RT_TABLE_MAIN`).
pub const MAIN_TABLE: u32 = 254;

/// Where remapd keeps its routes into the tunnels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutePlacement {
    /// A table of remapd's own behind one policy rule: remapd's routes are kept apart and
    /// win over the main table's, at the cost of the kernel's direct main-table lookup.
    #[default]
    OwnTable,
    /// The main table, marked with [`RTPROT_REMAPD`], and no policy rule.
    MainTable,
}

impl std::str::FromStr for RoutePlacement {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "own-table" => Ok(Self::OwnTable),
            "main-table" => Ok(Self::MainTable),
            other => Err(format!(
                "unknown route placement {other:?}: expected \"own-table\" or \"main-table\""
            )),
        }
    }
}

/// Where remapd's routes go and what it owns: the placement, and the own table and its
/// rule's priority (also used in main-table mode, to remove what own-table mode left).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTarget {
    /// Own table or main table.
    pub placement: RoutePlacement,
    /// remapd's own routing table.
    pub table: u32,
    /// The priority of the rule that sends lookups to `table`.
    pub rule_priority: u32,
}

/// Routes in remapd's own table plus the rule that reaches it, or in the main table,
/// via rtnetlink.
#[derive(Debug)]
pub struct NetlinkRoutes {
    target: RouteTarget,
    netlink: NetlinkSession,
}

impl NetlinkRoutes {
    /// An applier for `target`. Its netlink connection is opened on the first call, in
    /// that thread's namespace.
    pub fn new(target: RouteTarget) -> Self {
        Self {
            target,
            netlink: NetlinkSession::new(),
        }
    }

    /// Where the routes go.
    pub fn target(&self) -> RouteTarget {
        self.target
    }
}

/// An address family remapd routes: each has its own policy rule in own-table mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both, IPv4 first.
    pub(crate) const ALL: [Self; 2] = [Self::V4, Self::V6];

    /// The family of `prefix`.
    pub(crate) fn of(prefix: &IpNet) -> Self {
        match prefix {
            IpNet::V4(_) => Self::V4,
            IpNet::V6(_) => Self::V6,
        }
    }

    /// Its rtnetlink address family.
    pub(crate) fn netlink(self) -> AddressFamily {
        match self {
            Self::V4 => AddressFamily::Inet,
            Self::V6 => AddressFamily::Inet6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// A route as remapd states it: the (normalized) prefix into an interface index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Wanted {
    pub(crate) prefix: IpNet,
    pub(crate) oif: u32,
}

impl RouteApplier for NetlinkRoutes {
    fn apply(&mut self, routes: &[RouteSpec]) -> Result<RouteReport, NetError> {
        let target = self.target;
        self.netlink.run("applying routes", |handle| async move {
            converge(&Rtnetlink(&handle), target, routes).await
        })
    }

    fn protected_addresses(&self, endpoints: &[IpAddr]) -> Result<Vec<ProtectedAddress>, NetError> {
        self.netlink.run(
            "reading this gateway's addresses and routes",
            |handle| async move { super::gateway::protected_addresses(&handle, endpoints).await },
        )
    }

    fn teardown(&mut self) -> Result<(), NetError> {
        let target = self.target;
        self.netlink
            .run("tearing down routes", |handle| async move {
                clear(&Rtnetlink(&handle), target).await
            })
    }
}

/// Makes remapd's routes exactly `routes`, where `target` says, and removes what the
/// other placement left. Own table: the table holds exactly `routes` and the rule
/// exists. Main table: remapd's routes (protocol [`RTPROT_REMAPD`]) in the main table
/// are exactly `routes`; a wanted prefix held there by any other route is refused before
/// anything changes.
///
/// Make-before-break. Order: every interface resolved (nothing changes when one is
/// missing), the rule (nothing changes when it conflicts with another rule), then every
/// missing route — a prefix that is routed on another interface (or not in remapd's
/// shape) is replaced in one request, so its traffic never sees a moment without a
/// route — and only then the routes that are no longer wanted, from a fresh dump, and
/// what the other placement left. A failure leaves every old route in place.
pub(crate) async fn converge<K: RoutingKernel>(
    kernel: &K,
    target: RouteTarget,
    routes: &[RouteSpec],
) -> Result<RouteReport, NetError> {
    let links = kernel.links().await?;
    let wanted = resolve(routes, &links)?;
    let report = match target.placement {
        RoutePlacement::OwnTable => {
            // The IPv6 rule only once there is an IPv6 route: a gateway without IPv6
            // (`ipv6.disable=1`) keeps working for IPv4.
            ensure_rule(kernel, Family::V4, target.table, target.rule_priority).await?;
            if wanted.keys().any(|w| Family::of(&w.prefix) == Family::V6) {
                ensure_rule(kernel, Family::V6, target.table, target.rule_priority).await?;
            }
            let report = converge_table(kernel, target.table, false, &wanted, &links).await?;
            clear_main(kernel, &links).await?;
            report
        }
        RoutePlacement::MainTable => {
            let report = converge_table(kernel, MAIN_TABLE, true, &wanted, &links).await?;
            clear_own_table(kernel, target.table, target.rule_priority, &links).await?;
            report
        }
    };
    Ok(report)
}

/// Makes remapd's routes in `table` exactly `wanted`. `by_protocol`: only routes with
/// remapd's protocol are remapd's (the main table), and a wanted prefix any other route
/// holds is refused before anything changes; otherwise every route in `table` is.
async fn converge_table<K: RoutingKernel>(
    kernel: &K,
    table: u32,
    by_protocol: bool,
    wanted: &BTreeMap<Wanted, String>,
    links: &BTreeMap<String, Link>,
) -> Result<RouteReport, NetError> {
    let is_ours = |d: &kernel::Dumped<K::Route>| !by_protocol || d.ours;
    let ours = |dump: Vec<kernel::Dumped<K::Route>>| -> Result<Vec<_>, NetError> {
        let (ours, foreign): (Vec<_>, Vec<_>) = dump.into_iter().partition(is_ours);
        // At a wanted prefix, or inside one: a more specific route would take part of
        // the view's traffic away from the tunnel (own-table mode's rule would not let
        // it). A wider one (a default route, say) is fine: remapd's is more specific.
        if let Some(taken) = foreign.iter().find(|d| {
            d.prefix
                .is_some_and(|p| wanted.keys().any(|w| w.prefix.contains(&p)))
        }) {
            return Err(NetError::RouteTaken {
                route: taken.shown.clone(),
            });
        }
        Ok(ours)
    };
    let mut report = RouteReport::default();
    let (present, extra) = split_dump(ours(kernel.table_routes(table, links).await?)?, wanted);
    report.unchanged = present.len();
    for (w, interface) in wanted {
        if present.contains(w) {
            continue;
        }
        if extra.iter().any(|d| d.prefix == Some(w.prefix)) {
            kernel.replace_route(table, *w, interface).await?;
            info!(prefix = %w.prefix, interface = %interface, table, "replaced route");
        } else {
            kernel.add_route(table, *w, interface).await?;
            info!(prefix = %w.prefix, interface = %interface, table, "added route");
        }
        report.added += 1;
    }
    if extra.is_empty() {
        return Ok(report);
    }
    // What the additions did not replace is still there: dumped again, so a route the
    // kernel replaced is not asked to be deleted.
    let before = extra.len();
    let dump = kernel.table_routes(table, links).await?;
    let (_, extra) = split_dump(dump.into_iter().filter(is_ours).collect(), wanted);
    report.removed = before.saturating_sub(extra.len());
    for dumped in extra {
        if kernel.delete_route(dumped.route, &dumped.shown).await? {
            info!(route = %dumped.shown, table, "removed route");
            report.removed += 1;
        }
    }
    Ok(report)
}

/// A dumped route that is not wanted as it is.
struct Unwanted<R> {
    route: R,
    shown: String,
    /// Its destination prefix.
    prefix: Option<IpNet>,
}

/// The wanted routes a dump holds (once each), and every other route it holds.
fn split_dump<R>(
    dump: Vec<kernel::Dumped<R>>,
    wanted: &BTreeMap<Wanted, String>,
) -> (BTreeSet<Wanted>, Vec<Unwanted<R>>) {
    let mut present = BTreeSet::new();
    let mut extra = Vec::new();
    for dumped in dump {
        match dumped.wanted {
            Some(w) if wanted.contains_key(&w) && present.insert(w) => {}
            _ => extra.push(Unwanted {
                prefix: dumped.prefix,
                route: dumped.route,
                shown: dumped.shown,
            }),
        }
    }
    (present, extra)
}

/// Removes every route remapd made, in either placement, and its rule. Both are tried
/// whatever happens to the other; the first error is returned.
pub(crate) async fn clear<K: RoutingKernel>(
    kernel: &K,
    target: RouteTarget,
) -> Result<(), NetError> {
    let links = kernel.links().await?;
    let own = clear_own_table(kernel, target.table, target.rule_priority, &links).await;
    let main = clear_main(kernel, &links).await;
    own.and(main)
}

/// Removes every route in `table`, then remapd's rules of both families.
async fn clear_own_table<K: RoutingKernel>(
    kernel: &K,
    table: u32,
    priority: u32,
    links: &BTreeMap<String, Link>,
) -> Result<(), NetError> {
    for dumped in kernel.table_routes(table, links).await? {
        if kernel.delete_route(dumped.route, &dumped.shown).await? {
            info!(route = %dumped.shown, table, "removed route");
        }
    }
    for family in Family::ALL {
        for (rule, deletable) in kernel.our_rules(family, table, priority).await? {
            delete_rule(kernel, rule, deletable, table, priority).await?;
        }
    }
    Ok(())
}

/// Removes remapd's routes (protocol [`RTPROT_REMAPD`]) from the main table.
async fn clear_main<K: RoutingKernel>(
    kernel: &K,
    links: &BTreeMap<String, Link>,
) -> Result<(), NetError> {
    for dumped in kernel.table_routes(MAIN_TABLE, links).await? {
        if dumped.ours && kernel.delete_route(dumped.route, &dumped.shown).await? {
            info!(route = %dumped.shown, table = MAIN_TABLE, "removed route");
        }
    }
    Ok(())
}

/// Adds remapd's rule for `family` unless it is there (older kernels accepted exact
/// duplicates: those are removed, one is kept).
async fn ensure_rule<K: RoutingKernel>(
    kernel: &K,
    family: Family,
    table: u32,
    priority: u32,
) -> Result<(), NetError> {
    let mut rules = kernel.our_rules(family, table, priority).await?.into_iter();
    if rules.next().is_some() {
        for (duplicate, deletable) in rules {
            delete_rule(kernel, duplicate, deletable, table, priority).await?;
        }
        debug!(%family, table, priority, "rule already present");
        return Ok(());
    }
    kernel.add_rule(family, table, priority).await?;
    info!(%family, table, priority, "added rule");
    Ok(())
}

/// Deletes one of remapd's rules, unless another rule with the same priority and table
/// comes first: the kernel matches a delete request's unset selectors as wildcards and
/// would remove that one instead.
async fn delete_rule<K: RoutingKernel>(
    kernel: &K,
    rule: K::Rule,
    deletable: bool,
    table: u32,
    priority: u32,
) -> Result<(), NetError> {
    if !deletable {
        return Err(NetError::Netlink {
            what: format!("deleting rule from all lookup {table} priority {priority}"),
            reason: "another rule with the same priority and table comes first, and the \
                     kernel would delete that one instead"
                .into(),
        });
    }
    kernel.delete_rule(rule, table, priority).await?;
    info!(table, priority, "removed rule");
    Ok(())
}

/// Maps the specs to interface indexes (failing before anything changes when an
/// interface is missing), normalizing prefixes and refusing a prefix sent two ways.
fn resolve(
    routes: &[RouteSpec],
    links: &BTreeMap<String, Link>,
) -> Result<BTreeMap<Wanted, String>, NetError> {
    let mut by_prefix: BTreeMap<IpNet, &str> = BTreeMap::new();
    let mut wanted = BTreeMap::new();
    for spec in routes {
        let link = links
            .get(&spec.interface)
            .ok_or_else(|| NetError::InterfaceNotFound(spec.interface.clone()))?;
        let prefix = spec.prefix.trunc();
        if let Some(other) = by_prefix.insert(prefix, &spec.interface)
            && other != spec.interface
        {
            return Err(NetError::Netlink {
                what: "checking the route set".into(),
                reason: format!(
                    "{prefix} is routed both to {other} and to {}",
                    spec.interface
                ),
            });
        }
        wanted.insert(
            Wanted {
                prefix,
                oif: link.index,
            },
            spec.interface.clone(),
        );
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_normalizes_and_rejects_conflicts() {
        let mut links = BTreeMap::new();
        links.insert("a".to_owned(), Link { index: 1, up: true });
        links.insert("b".to_owned(), Link { index: 2, up: true });
        let spec = |p: &str, i: &str| RouteSpec {
            prefix: p.parse().unwrap(),
            interface: i.into(),
        };
        let w = resolve(
            &[spec("10.1.2.3/16", "a"), spec("10.1.0.0/16", "a")],
            &links,
        )
        .unwrap();
        assert_eq!(w.len(), 1);
        assert!(matches!(
            resolve(
                &[spec("10.1.0.0/16", "a"), spec("10.1.0.0/16", "b")],
                &links
            ),
            Err(NetError::Netlink { .. })
        ));
        assert!(matches!(
            resolve(&[spec("10.1.0.0/16", "zz")], &links),
            Err(NetError::InterfaceNotFound(i)) if i == "zz"
        ));
    }

    use super::recording::{KernelRoute, KernelRule, Op, RecordingKernel};

    const T: u32 = 7878;
    const P: u32 = 7878;
    const OWN: RouteTarget = RouteTarget {
        placement: RoutePlacement::OwnTable,
        table: T,
        rule_priority: P,
    };
    const MAIN: RouteTarget = RouteTarget {
        placement: RoutePlacement::MainTable,
        table: T,
        rule_priority: P,
    };

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn kernel(
        routes: &[(&str, u32, Option<&'static str>)],
        rules: &[Option<&'static str>],
    ) -> RecordingKernel {
        let mut links = BTreeMap::new();
        links.insert(
            "rmd-a".to_owned(),
            Link {
                index: 11,
                up: true,
            },
        );
        links.insert(
            "rmd-b".to_owned(),
            Link {
                index: 12,
                up: true,
            },
        );
        RecordingKernel {
            links,
            routes: std::sync::Mutex::new(
                routes
                    .iter()
                    .map(|(p, oif, extra)| KernelRoute {
                        table: T,
                        prefix: n(p),
                        oif: *oif,
                        extra: *extra,
                        foreign: false,
                    })
                    .collect(),
            ),
            rules: std::sync::Mutex::new(
                rules
                    .iter()
                    .map(|selector| {
                        Some(KernelRule {
                            family: Family::V4,
                            table: T,
                            priority: P,
                            selector: *selector,
                        })
                    })
                    .collect(),
            ),
            ..RecordingKernel::default()
        }
    }

    fn want(routes: &[(&str, &str)]) -> Vec<RouteSpec> {
        routes
            .iter()
            .map(|(p, i)| RouteSpec {
                prefix: n(p),
                interface: (*i).to_owned(),
            })
            .collect()
    }

    fn add(p: &str, dev: &str) -> Op {
        Op::AddRoute {
            table: T,
            prefix: n(p),
            dev: dev.into(),
        }
    }

    fn replace(p: &str, dev: &str) -> Op {
        Op::ReplaceRoute {
            table: T,
            prefix: n(p),
            dev: dev.into(),
        }
    }

    fn del(shown: &str) -> Op {
        Op::DeleteRoute {
            table: T,
            route: shown.into(),
        }
    }

    fn del_main(shown: &str) -> Op {
        Op::DeleteRoute {
            table: MAIN_TABLE,
            route: shown.into(),
        }
    }

    const ADD_RULE: Op = Op::AddRule {
        family: Family::V4,
        table: T,
        priority: P,
    };
    const DEL_RULE: Op = Op::DeleteRule {
        family: Family::V4,
        table: T,
        priority: P,
    };

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// The requests `converge` sends, in order, for each starting kernel and wanted
    /// set; and what the table holds afterwards.
    #[test]
    fn converge_sends_exactly_these_requests_in_this_order() {
        type Start = (
            Vec<(&'static str, u32, Option<&'static str>)>,
            Vec<Option<&'static str>>,
        );
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            Start,
            Vec<(&str, &str)>,
            Vec<Op>,
            Result<(usize, usize, usize), &str>,
        )> = vec![
            (
                "empty: the rule first, then the routes",
                (vec![], vec![]),
                vec![("30.0.0.0/24", "rmd-a"), ("40.0.0.0/24", "rmd-b")],
                vec![
                    ADD_RULE,
                    add("30.0.0.0/24", "rmd-a"),
                    add("40.0.0.0/24", "rmd-b"),
                ],
                Ok((2, 0, 0)),
            ),
            (
                "converged: nothing is sent",
                (vec![("30.0.0.0/24", 11, None)], vec![None]),
                vec![("30.0.0.0/24", "rmd-a")],
                vec![],
                Ok((0, 0, 1)),
            ),
            (
                "a prefix moving to another tunnel: replaced in one request",
                (vec![("30.0.0.0/24", 11, None)], vec![None]),
                vec![("30.0.0.0/24", "rmd-b")],
                vec![replace("30.0.0.0/24", "rmd-b")],
                Ok((1, 1, 0)),
            ),
            (
                "a route not in remapd's shape is replaced, an unwanted one removed last",
                (
                    vec![
                        ("30.0.0.0/24", 11, Some("via 10.0.0.1")),
                        ("50.0.0.0/24", 12, None),
                    ],
                    vec![None],
                ),
                vec![("30.0.0.0/24", "rmd-a")],
                vec![
                    replace("30.0.0.0/24", "rmd-a"),
                    del("50.0.0.0/24 dev rmd-b"),
                ],
                Ok((1, 2, 0)),
            ),
            (
                "make before break: a view that grows is routed before the old one goes",
                (vec![("30.0.0.0/24", 11, None)], vec![None]),
                vec![("30.0.0.0/23", "rmd-a")],
                vec![add("30.0.0.0/23", "rmd-a"), del("30.0.0.0/24 dev rmd-a")],
                Ok((1, 1, 0)),
            ),
            (
                "a same-prefix route with a metric is not what a replace takes: deleted after",
                (vec![("30.0.0.0/24", 12, Some("metric 5"))], vec![None]),
                vec![("30.0.0.0/24", "rmd-a")],
                vec![
                    replace("30.0.0.0/24", "rmd-a"),
                    del("30.0.0.0/24 dev rmd-b metric 5"),
                ],
                Ok((1, 1, 0)),
            ),
            (
                "host bits are normalized; the same prefix twice is one route",
                (vec![], vec![None]),
                vec![("30.0.0.7/24", "rmd-a"), ("30.0.0.0/24", "rmd-a")],
                vec![add("30.0.0.0/24", "rmd-a")],
                Ok((1, 0, 0)),
            ),
            (
                "a missing interface: nothing is sent",
                (vec![("50.0.0.0/24", 12, None)], vec![]),
                vec![("30.0.0.0/24", "rmd-a"), ("40.0.0.0/24", "rmd-gone")],
                vec![],
                Err("rmd-gone"),
            ),
            (
                "one prefix into two tunnels: nothing is sent",
                (vec![], vec![]),
                vec![("30.0.0.0/24", "rmd-a"), ("30.0.0.0/24", "rmd-b")],
                vec![],
                Err("routed both to rmd-a and to rmd-b"),
            ),
            (
                "another rule holds the table and priority: no route is touched",
                (
                    vec![("50.0.0.0/24", 12, None)],
                    vec![Some("from 10.0.0.0/8")],
                ),
                vec![("30.0.0.0/24", "rmd-a")],
                vec![ADD_RULE],
                Err("File exists"),
            ),
            (
                "duplicate rules from an older kernel: one is kept",
                (vec![], vec![None, None, None]),
                vec![],
                vec![DEL_RULE, DEL_RULE],
                Ok((0, 0, 0)),
            ),
        ];
        for (what, (routes, rules), wanted, ops, expect) in cases {
            let k = kernel(&routes, &rules);
            let result = block_on(converge(&k, OWN, &want(&wanted)));
            assert_eq!(k.ops(), ops, "{what}: requests");
            match (result, expect) {
                (Ok(r), Ok((added, removed, unchanged))) => {
                    assert_eq!(
                        (r.added, r.removed, r.unchanged),
                        (added, removed, unchanged),
                        "{what}"
                    );
                    let mut table: Vec<String> = wanted
                        .iter()
                        .map(|(p, i)| format!("{} dev {i}", n(p).trunc()))
                        .collect();
                    table.sort();
                    table.dedup();
                    assert_eq!(k.table(T), table, "{what}: the table afterwards");
                }
                (Err(e), Err(fragment)) => {
                    assert!(e.to_string().contains(fragment), "{what}: {e}");
                }
                (r, e) => panic!("{what}: got {r:?}, expected {e:?}"),
            }
        }
    }

    /// Adds routes to the fake kernel's main table: (prefix, oif, someone else's).
    fn with_main(k: RecordingKernel, routes: &[(&str, u32, bool)]) -> RecordingKernel {
        if let Ok(mut table) = k.routes.lock() {
            for (p, oif, foreign) in routes {
                table.push(KernelRoute {
                    table: MAIN_TABLE,
                    prefix: n(p),
                    oif: *oif,
                    extra: None,
                    foreign: *foreign,
                });
            }
        }
        k
    }

    fn add_main(p: &str, dev: &str) -> Op {
        Op::AddRoute {
            table: MAIN_TABLE,
            prefix: n(p),
            dev: dev.into(),
        }
    }

    /// Main-table placement: remapd's routes go to the main table with its protocol and
    /// no rule; other routes there are never touched, and a wanted prefix one of them
    /// holds is refused before anything changes; what own-table mode left (its table
    /// and rule) is removed after the new routes are in place, and the other way round.
    #[test]
    fn main_table_placement_owns_only_its_protocol_and_cleans_up_the_other_placement() {
        // From own-table mode to main-table mode: the routes first, then the old table
        // and rule; the main table's other routes stay.
        let k = with_main(
            kernel(&[("30.0.0.0/24", 11, None)], &[None]),
            &[("10.9.0.0/24", 12, true)],
        );
        let r = block_on(converge(&k, MAIN, &want(&[("30.0.0.0/24", "rmd-a")]))).unwrap();
        assert_eq!(
            k.ops(),
            vec![
                add_main("30.0.0.0/24", "rmd-a"),
                del("30.0.0.0/24 dev rmd-a"),
                DEL_RULE
            ]
        );
        assert_eq!((r.added, r.removed, r.unchanged), (1, 0, 0));
        assert_eq!(
            k.table(MAIN_TABLE),
            vec![
                "10.9.0.0/24 dev rmd-b proto boot".to_owned(),
                "30.0.0.0/24 dev rmd-a".to_owned()
            ]
        );
        assert!(k.table(T).is_empty());

        // Converged: nothing is sent. An unwanted route of remapd's is removed, someone
        // else's is not.
        let k = with_main(
            kernel(&[], &[]),
            &[
                ("30.0.0.0/24", 11, false),
                ("50.0.0.0/24", 12, false),
                ("10.9.0.0/24", 12, true),
            ],
        );
        let r = block_on(converge(&k, MAIN, &want(&[("30.0.0.0/24", "rmd-a")]))).unwrap();
        assert_eq!(k.ops(), vec![del_main("50.0.0.0/24 dev rmd-b")]);
        assert_eq!((r.added, r.removed, r.unchanged), (0, 1, 1));

        // A wanted prefix someone else routes in the main table: refused, nothing sent
        // (the old table and rule stay too).
        let k = with_main(
            kernel(&[("60.0.0.0/24", 11, None)], &[None]),
            &[("30.0.0.0/24", 12, true)],
        );
        let e = block_on(converge(
            &k,
            MAIN,
            &want(&[("30.0.0.0/24", "rmd-a"), ("40.0.0.0/24", "rmd-a")]),
        ))
        .unwrap_err();
        assert!(matches!(e, NetError::RouteTaken { .. }), "{e}");
        let message = e.to_string();
        assert!(
            message.contains("30.0.0.0/24 dev rmd-b proto boot") && message.contains("own-table"),
            "{message}"
        );
        assert_eq!(k.ops(), vec![]);
        // A more specific route inside a wanted prefix would take part of its traffic:
        // refused too. A wider one (here a /16 around it) is not in the way.
        let k = with_main(
            kernel(&[], &[]),
            &[("30.0.0.64/26", 12, true), ("40.0.0.0/16", 12, true)],
        );
        let e = block_on(converge(
            &k,
            MAIN,
            &want(&[("30.0.0.0/24", "rmd-a"), ("40.0.0.0/24", "rmd-a")]),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("30.0.0.64/26"), "{e}");
        assert_eq!(k.ops(), vec![]);
        block_on(converge(&k, MAIN, &want(&[("40.0.0.0/24", "rmd-a")]))).unwrap();
        assert_eq!(k.ops(), vec![add_main("40.0.0.0/24", "rmd-a")]);

        // Back to own-table mode: the rule, the routes in the table, then remapd's
        // routes in the main table go; someone else's stay.
        let k = with_main(
            kernel(&[], &[]),
            &[("30.0.0.0/24", 11, false), ("10.9.0.0/24", 12, true)],
        );
        block_on(converge(&k, OWN, &want(&[("30.0.0.0/24", "rmd-a")]))).unwrap();
        assert_eq!(
            k.ops(),
            vec![
                ADD_RULE,
                add("30.0.0.0/24", "rmd-a"),
                del_main("30.0.0.0/24 dev rmd-a")
            ]
        );
        assert_eq!(
            k.table(MAIN_TABLE),
            vec!["10.9.0.0/24 dev rmd-b proto boot".to_owned()]
        );

        // Teardown in either mode removes both placements' routes and the rule, and
        // nothing of anyone else's.
        for target in [MAIN, OWN] {
            let k = with_main(
                kernel(&[("60.0.0.0/24", 11, None)], &[None]),
                &[("30.0.0.0/24", 11, false), ("10.9.0.0/24", 12, true)],
            );
            block_on(clear(&k, target)).unwrap();
            assert_eq!(
                k.ops(),
                vec![
                    del("60.0.0.0/24 dev rmd-a"),
                    DEL_RULE,
                    del_main("30.0.0.0/24 dev rmd-a")
                ]
            );
            assert_eq!(
                k.table(MAIN_TABLE),
                vec!["10.9.0.0/24 dev rmd-b proto boot".to_owned()]
            );
        }
    }

    /// A failing addition stops the convergence where it is: every old route is still
    /// there (nothing is deleted before every addition is made), and the reconciler's
    /// re-apply of the previous route set converges again.
    #[test]
    fn a_failed_addition_stops_and_the_previous_set_converges_again() {
        let mut k = kernel(&[("30.0.0.0/24", 11, None)], &[None]);
        k.fail_add = Some(n("40.0.0.0/24"));
        let e = block_on(converge(
            &k,
            OWN,
            &want(&[("40.0.0.0/24", "rmd-b"), ("60.0.0.0/24", "rmd-b")]),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("Network is down"), "{e}");
        assert_eq!(k.ops(), vec![add("40.0.0.0/24", "rmd-b")]);
        assert_eq!(k.table(T), vec!["30.0.0.0/24 dev rmd-a".to_owned()]);
        k.fail_add = None;
        let r = block_on(converge(&k, OWN, &want(&[("30.0.0.0/24", "rmd-a")]))).unwrap();
        assert_eq!((r.added, r.removed, r.unchanged), (0, 0, 1));
        assert_eq!(k.table(T), vec!["30.0.0.0/24 dev rmd-a".to_owned()]);
    }

    /// `clear` removes every route first, then the rule; a shadowed rule is left and
    /// said so, after the routes are gone.
    #[test]
    fn clear_removes_routes_then_the_rule_and_never_a_foreign_rule() {
        let k = kernel(
            &[
                ("30.0.0.0/24", 11, None),
                ("40.0.0.0/24", 12, Some("metric 5")),
            ],
            &[None],
        );
        block_on(clear(&k, OWN)).unwrap();
        assert_eq!(
            k.ops(),
            vec![
                del("30.0.0.0/24 dev rmd-a"),
                del("40.0.0.0/24 dev rmd-b metric 5"),
                DEL_RULE
            ]
        );
        assert!(k.table(T).is_empty());

        let k = kernel(
            &[("30.0.0.0/24", 11, None)],
            &[Some("from 10.0.0.0/8"), None],
        );
        let e = block_on(clear(&k, OWN)).unwrap_err();
        assert!(
            e.to_string().contains("would delete that one instead"),
            "{e}"
        );
        assert_eq!(k.ops(), vec![del("30.0.0.0/24 dev rmd-a")]);
    }

    /// IPv6 routes sit in the same table behind an IPv6 rule of their own, added only
    /// once there is an IPv6 route (a gateway without IPv6 keeps working), after the
    /// IPv4 one and before any route; clearing removes both rules.
    #[test]
    fn ipv6_routes_get_their_own_rule_and_lose_it_with_the_rest() {
        let k = kernel(&[], &[]);
        let wanted = want(&[("30.0.0.0/24", "rmd-a"), ("fd00:30::/56", "rmd-a")]);
        let r = block_on(converge(&k, OWN, &wanted)).unwrap();
        assert_eq!((r.added, r.removed, r.unchanged), (2, 0, 0));
        let add_rule6 = Op::AddRule {
            family: Family::V6,
            table: T,
            priority: P,
        };
        assert_eq!(
            k.ops(),
            vec![
                ADD_RULE,
                add_rule6.clone(),
                add("30.0.0.0/24", "rmd-a"),
                add("fd00:30::/56", "rmd-a"),
            ]
        );
        // Converged: nothing more, both rules found as remapd's.
        let r = block_on(converge(&k, OWN, &wanted)).unwrap();
        assert_eq!((r.added, r.removed, r.unchanged), (0, 0, 2));
        assert_eq!(k.ops().len(), 4);

        block_on(clear(&k, OWN)).unwrap();
        assert_eq!(
            k.ops()[4..],
            [
                del("30.0.0.0/24 dev rmd-a"),
                del("fd00:30::/56 dev rmd-a"),
                DEL_RULE,
                Op::DeleteRule {
                    family: Family::V6,
                    table: T,
                    priority: P,
                },
            ]
        );
        assert!(k.table(T).is_empty());

        // IPv4 only: no IPv6 rule is asked for.
        let k = kernel(&[], &[]);
        block_on(converge(&k, OWN, &want(&[("30.0.0.0/24", "rmd-a")]))).unwrap();
        assert!(!k.ops().contains(&add_rule6), "{:?}", k.ops());
    }
}
