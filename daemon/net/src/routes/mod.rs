//! Routes into the tunnels. remapd owns one routing table outright (every IPv4 route in
//! it is remapd's, so anything it did not ask for is removed) and exactly one policy
//! rule, `from all lookup <table> priority <priority>`, that sends lookups there. Routes
//! in other tables and all other rules are never touched.
//!
//! [`converge`] and [`clear`] decide what to ask of the kernel and in which order; they
//! are written against [`kernel::RoutingKernel`], which [`kernel::Rtnetlink`] does with
//! rtnetlink on the applier's [`NetlinkSession`] and a recording kernel does in memory
//! for the table tests.

pub(crate) mod kernel;
#[cfg(test)]
mod recording;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use tracing::{debug, info};

use super::netlink::{Link, NetlinkSession};
use super::{NetError, ProtectedAddress, RouteApplier, RouteReport, RouteSpec};
use kernel::{RoutingKernel, Rtnetlink};

/// Routes in one remapd-owned table plus the rule that reaches it, via rtnetlink.
#[derive(Debug)]
pub struct NetlinkRoutes {
    table: u32,
    rule_priority: u32,
    netlink: NetlinkSession,
}

impl NetlinkRoutes {
    /// An applier for routing table `table`, reached through a rule at `rule_priority`.
    /// Its netlink connection is opened on the first call, in that thread's namespace.
    pub fn new(table: u32, rule_priority: u32) -> Self {
        Self {
            table,
            rule_priority,
            netlink: NetlinkSession::new(),
        }
    }

    /// The routing table remapd owns.
    pub fn table(&self) -> u32 {
        self.table
    }

    /// The priority of the rule that sends lookups to the table.
    pub fn rule_priority(&self) -> u32 {
        self.rule_priority
    }
}

/// A route as remapd states it: the (normalized) prefix into an interface index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Wanted {
    pub(crate) prefix: Ipv4Net,
    pub(crate) oif: u32,
}

impl RouteApplier for NetlinkRoutes {
    fn apply(&mut self, routes: &[RouteSpec]) -> Result<RouteReport, NetError> {
        let (table, priority) = (self.table, self.rule_priority);
        self.netlink.run("applying routes", |handle| async move {
            converge(&Rtnetlink(&handle), table, priority, routes).await
        })
    }

    fn protected_addresses(
        &self,
        endpoints: &[Ipv4Addr],
    ) -> Result<Vec<ProtectedAddress>, NetError> {
        self.netlink.run(
            "reading this gateway's addresses and routes",
            |handle| async move { super::gateway::protected_addresses(&handle, endpoints).await },
        )
    }

    fn teardown(&mut self) -> Result<(), NetError> {
        let (table, priority) = (self.table, self.rule_priority);
        self.netlink
            .run("tearing down routes", |handle| async move {
                clear(&Rtnetlink(&handle), table, priority).await
            })
    }
}

/// Makes `table` hold exactly `routes` and ensures the rule exists, make-before-break.
/// Order: every interface resolved (nothing changes when one is missing), the rule
/// (nothing changes when it conflicts with another rule), then every missing route — a
/// prefix that is in the table on another interface (or not in remapd's shape) is
/// replaced in one request, so its traffic never sees a moment without a route — and
/// only then the routes that are no longer wanted, from a fresh dump. A failure leaves
/// every old route in place.
pub(crate) async fn converge<K: RoutingKernel>(
    kernel: &K,
    table: u32,
    priority: u32,
    routes: &[RouteSpec],
) -> Result<RouteReport, NetError> {
    let links = kernel.links().await?;
    let wanted = resolve(routes, &links)?;
    ensure_rule(kernel, table, priority).await?;
    let mut report = RouteReport::default();
    let (present, extra) = split_dump(kernel.table_routes(table, &links).await?, &wanted);
    report.unchanged = present.len();
    for (w, interface) in &wanted {
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
    let (_, extra) = split_dump(kernel.table_routes(table, &links).await?, &wanted);
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
    prefix: Option<Ipv4Net>,
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

/// Removes every route in `table`, then remapd's rule.
pub(crate) async fn clear<K: RoutingKernel>(
    kernel: &K,
    table: u32,
    priority: u32,
) -> Result<(), NetError> {
    let links = kernel.links().await?;
    for dumped in kernel.table_routes(table, &links).await? {
        if kernel.delete_route(dumped.route, &dumped.shown).await? {
            info!(route = %dumped.shown, table, "removed route");
        }
    }
    for (rule, deletable) in kernel.our_rules(table, priority).await? {
        delete_rule(kernel, rule, deletable, table, priority).await?;
    }
    Ok(())
}

/// Adds remapd's rule unless it is there (older kernels accepted exact duplicates:
/// those are removed, one is kept).
async fn ensure_rule<K: RoutingKernel>(
    kernel: &K,
    table: u32,
    priority: u32,
) -> Result<(), NetError> {
    let mut rules = kernel.our_rules(table, priority).await?.into_iter();
    if rules.next().is_some() {
        for (duplicate, deletable) in rules {
            delete_rule(kernel, duplicate, deletable, table, priority).await?;
        }
        debug!(table, priority, "rule already present");
        return Ok(());
    }
    kernel.add_rule(table, priority).await?;
    info!(table, priority, "added rule");
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
    let mut by_prefix: BTreeMap<Ipv4Net, &str> = BTreeMap::new();
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

    fn n(s: &str) -> Ipv4Net {
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
                    })
                    .collect(),
            ),
            rules: std::sync::Mutex::new(
                rules
                    .iter()
                    .map(|selector| {
                        Some(KernelRule {
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
        Op::DeleteRoute(shown.into())
    }

    const ADD_RULE: Op = Op::AddRule {
        table: T,
        priority: P,
    };
    const DEL_RULE: Op = Op::DeleteRule {
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
            let result = block_on(converge(&k, T, P, &want(&wanted)));
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

    /// A failing addition stops the convergence where it is: every old route is still
    /// there (nothing is deleted before every addition is made), and the reconciler's
    /// re-apply of the previous route set converges again.
    #[test]
    fn a_failed_addition_stops_and_the_previous_set_converges_again() {
        let mut k = kernel(&[("30.0.0.0/24", 11, None)], &[None]);
        k.fail_add = Some(n("40.0.0.0/24"));
        let e = block_on(converge(
            &k,
            T,
            P,
            &want(&[("40.0.0.0/24", "rmd-b"), ("60.0.0.0/24", "rmd-b")]),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("Network is down"), "{e}");
        assert_eq!(k.ops(), vec![add("40.0.0.0/24", "rmd-b")]);
        assert_eq!(k.table(T), vec!["30.0.0.0/24 dev rmd-a".to_owned()]);
        k.fail_add = None;
        let r = block_on(converge(&k, T, P, &want(&[("30.0.0.0/24", "rmd-a")]))).unwrap();
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
        block_on(clear(&k, T, P)).unwrap();
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
        let e = block_on(clear(&k, T, P)).unwrap_err();
        assert!(
            e.to_string().contains("would delete that one instead"),
            "{e}"
        );
        assert_eq!(k.ops(), vec![del("30.0.0.0/24 dev rmd-a")]);
    }
}
