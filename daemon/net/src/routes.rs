//! Routes into the tunnels, with rtnetlink. remapd owns one routing table outright
//! (every IPv4 route in it is remapd's, so anything it did not ask for is removed) and
//! exactly one policy rule, `from all lookup <table> priority <priority>`, that sends
//! lookups there. Routes in other tables and all other rules are never touched.
//!
//! The appliers are synchronous and may run on a thread that has `setns`-ed into
//! another network namespace, so every call opens its own netlink socket on the
//! calling thread, driven by a current-thread runtime that lives for that call only.
//! The same helpers bring tunnel links up for [`super::wireguard`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};
use tracing::{debug, info};

use super::{NetError, ProtectedAddress, RouteApplier, RouteReport, RouteSpec};

/// `RT_TABLE_COMPAT`: what the header's 8-bit table field holds when the real id,
/// carried in an attribute, does not fit.
const RT_TABLE_COMPAT: u8 = 252;

/// Routes in one remapd-owned table plus the rule that reaches it, via rtnetlink.
#[derive(Clone, Debug)]
pub struct NetlinkRoutes {
    table: u32,
    rule_priority: u32,
}

impl NetlinkRoutes {
    /// An applier for routing table `table`, reached through a rule at `rule_priority`.
    pub fn new(table: u32, rule_priority: u32) -> Self {
        Self {
            table,
            rule_priority,
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
struct Wanted {
    prefix: Ipv4Net,
    oif: u32,
}

impl RouteApplier for NetlinkRoutes {
    fn apply(&mut self, routes: &[RouteSpec]) -> Result<RouteReport, NetError> {
        let table = self.table;
        let priority = self.rule_priority;
        let routes = routes.to_vec();
        with_netlink("applying routes", move |handle| async move {
            let links = links(&handle).await?;
            let wanted = resolve(&routes, &links)?;
            // The rule first: when it conflicts with another rule, nothing changes.
            ensure_rule(&handle, table, priority).await?;
            let names: HashMap<u32, &str> = links
                .iter()
                .map(|(name, link)| (link.index, name.as_str()))
                .collect();

            let mut report = RouteReport::default();
            let mut present = BTreeSet::new();
            let mut extra = Vec::new();
            for message in table_routes(&handle, table).await? {
                match as_wanted(&message) {
                    Some(w) if wanted.contains_key(&w) && present.insert(w) => {
                        report.unchanged += 1;
                    }
                    _ => extra.push(message),
                }
            }
            // Deletions first: a prefix moving to another interface would otherwise
            // collide with its old route.
            for message in extra {
                let shown = describe(&message, &names);
                if delete_route(&handle, message, &shown).await? {
                    info!(route = %shown, table, "removed route");
                    report.removed += 1;
                }
            }
            for (w, interface) in &wanted {
                if present.contains(w) {
                    continue;
                }
                add_route(&handle, table, *w, interface).await?;
                info!(prefix = %w.prefix, interface = %interface, table, "added route");
                report.added += 1;
            }
            Ok(report)
        })
    }

    fn protected_addresses(
        &self,
        endpoints: &[Ipv4Addr],
    ) -> Result<Vec<ProtectedAddress>, NetError> {
        with_netlink(
            "reading this gateway's addresses and routes",
            |handle| async move { super::gateway::protected_addresses(&handle, endpoints).await },
        )
    }

    fn teardown(&mut self) -> Result<(), NetError> {
        let table = self.table;
        let priority = self.rule_priority;
        with_netlink("tearing down routes", move |handle| async move {
            let links = links(&handle).await?;
            let names: HashMap<u32, &str> = links
                .iter()
                .map(|(name, link)| (link.index, name.as_str()))
                .collect();
            for message in table_routes(&handle, table).await? {
                let shown = describe(&message, &names);
                if delete_route(&handle, message, &shown).await? {
                    info!(route = %shown, table, "removed route");
                }
            }
            for (rule, deletable) in our_rules(&handle, table, priority).await? {
                delete_rule(&handle, rule, deletable, table, priority).await?;
            }
            Ok(())
        })
    }
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

/// The route if it has exactly the shape remapd installs; `None` for anything else
/// found in the table (a gateway, a metric, another scope...), which is then replaced.
fn as_wanted(message: &RouteMessage) -> Option<Wanted> {
    let h = &message.header;
    if h.address_family != AddressFamily::Inet
        || h.scope != RouteScope::Link
        || h.kind != RouteType::Unicast
        || h.tos != 0
        || h.source_prefix_length != 0
    {
        return None;
    }
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut oif = None;
    for attr in &message.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(0) => {}
            RouteAttribute::Gateway(_)
            | RouteAttribute::Via(_)
            | RouteAttribute::PrefSource(_)
            | RouteAttribute::Source(_)
            | RouteAttribute::MultiPath(_)
            | RouteAttribute::Priority(_)
            | RouteAttribute::Encap(_) => return None,
            _ => {}
        }
    }
    let prefix = Ipv4Net::new(dst, h.destination_prefix_length).ok()?;
    Some(Wanted { prefix, oif: oif? })
}

/// `prefix dev name` (or `via ...`) of a dumped route, for logs and errors.
fn describe(message: &RouteMessage, names: &HashMap<u32, &str>) -> String {
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut out = String::new();
    for attr in &message.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => out.push_str(&format!(" via {a}")),
            RouteAttribute::Oif(i) => match names.get(i) {
                Some(name) => out.push_str(&format!(" dev {name}")),
                None => out.push_str(&format!(" dev #{i}")),
            },
            _ => {}
        }
    }
    format!("{dst}/{}{out}", message.header.destination_prefix_length)
}

/// The table a route is in (its attribute, else the header's 8-bit field).
pub(crate) fn table_of_route(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table))
}

/// Every IPv4 route in `table`. The kernel dumps all tables (no strict checking on
/// this socket), so the table is filtered here.
/// The IPv4 routes of routing table `table`.
pub(crate) async fn table_routes(
    handle: &Handle,
    table: u32,
) -> Result<Vec<RouteMessage>, NetError> {
    let mut request = RouteMessage::default();
    request.header.address_family = AddressFamily::Inet;
    let all: Vec<RouteMessage> = handle
        .route()
        .get(request)
        .execute()
        .try_collect()
        .await
        .map_err(|e| netlink_error(format!("dumping routes of table {table}"), &e))?;
    Ok(all
        .into_iter()
        .filter(|m| m.header.address_family == AddressFamily::Inet && table_of_route(m) == table)
        .collect())
}

async fn add_route(
    handle: &Handle,
    table: u32,
    w: Wanted,
    interface: &str,
) -> Result<(), NetError> {
    let mut message = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(w.prefix.network(), w.prefix.prefix_len())
        .output_interface(w.oif)
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::Static)
        .table_id(table)
        .build();
    if table > 255 {
        // The real id is in the attribute; say so in the header the way iproute2 does
        // rather than leaving the builder's "main" there.
        message.header.table = RT_TABLE_COMPAT;
    }
    handle.route().add(message).execute().await.map_err(|e| {
        if errno(&e) == Some(libc::ENODEV) {
            NetError::InterfaceNotFound(interface.to_owned())
        } else {
            netlink_error(
                format!("adding route {} dev {interface} table {table}", w.prefix),
                &e,
            )
        }
    })
}

/// Deletes one dumped route; `false` when it was already gone.
async fn delete_route(
    handle: &Handle,
    dumped: RouteMessage,
    shown: &str,
) -> Result<bool, NetError> {
    // Only what identifies the route: the dump also carries read-only attributes
    // (cache info, metrics) that have no business in a delete request.
    let mut message = dumped;
    message.attributes.retain(|a| {
        matches!(
            a,
            RouteAttribute::Destination(_)
                | RouteAttribute::Oif(_)
                | RouteAttribute::Gateway(_)
                | RouteAttribute::Via(_)
                | RouteAttribute::Priority(_)
                | RouteAttribute::Table(_)
                | RouteAttribute::PrefSource(_)
                | RouteAttribute::MultiPath(_)
        )
    });
    match handle.route().del(message).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(false),
        Err(e) => Err(netlink_error(format!("deleting route {shown}"), &e)),
    }
}

fn table_of_rule(rule: &RuleMessage) -> u32 {
    rule.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(rule.header.table))
}

/// True for exactly `from all lookup <table> priority <priority>` and nothing more:
/// a rule with any selector is someone else's, even at the same priority and table.
fn is_our_rule(rule: &RuleMessage, table: u32, priority: u32) -> bool {
    let h = &rule.header;
    if h.family != AddressFamily::Inet
        || h.action != RuleAction::ToTable
        || h.src_len != 0
        || h.dst_len != 0
        || h.tos != 0
        || !h.flags.is_empty()
        || table_of_rule(rule) != table
    {
        return false;
    }
    let mut has_priority = false;
    for attr in &rule.attributes {
        match attr {
            RuleAttribute::Priority(p) if *p == priority => has_priority = true,
            // Always reported; "unset" is all ones.
            RuleAttribute::SuppressPrefixLen(u32::MAX)
            | RuleAttribute::SuppressIfGroup(u32::MAX)
            | RuleAttribute::FwMark(0)
            | RuleAttribute::FwMask(0)
            | RuleAttribute::L3MDev(false)
            | RuleAttribute::Table(_)
            | RuleAttribute::Protocol(_)
            // Newer kernels' attributes this crate does not know are reported only
            // when set by their creator too, but treating them as selectors would make
            // the kernel's own duplicate check (EEXIST) and this one disagree.
            | RuleAttribute::Other(_) => {}
            _ => return false,
        }
    }
    has_priority
}

/// remapd's rules, in kernel order, each with whether deleting it is unambiguous.
///
/// The kernel matches a delete request's unset selectors as wildcards and removes the
/// first rule that fits, so deleting `from all lookup T priority P` would remove an
/// earlier `from 10.0.0.0/8 lookup T priority P`. remapd's rule is normally first (the
/// kernel refuses to add it behind such a rule, and later ones go behind it); when it
/// is not, it is left alone rather than risk removing someone else's.
async fn our_rules(
    handle: &Handle,
    table: u32,
    priority: u32,
) -> Result<Vec<(RuleMessage, bool)>, NetError> {
    let all: Vec<RuleMessage> = handle
        .rule()
        .get(IpVersion::V4)
        .execute()
        .try_collect()
        .await
        .map_err(|e| netlink_error("dumping IPv4 rules", &e))?;
    let mut shadowed = false;
    let mut out = Vec::new();
    for rule in all {
        if is_our_rule(&rule, table, priority) {
            out.push((rule, !shadowed));
        } else if rule.header.family == AddressFamily::Inet
            && rule.header.action == RuleAction::ToTable
            && table_of_rule(&rule) == table
            && priority_of_rule(&rule) == Some(priority)
        {
            shadowed = true;
        }
    }
    Ok(out)
}

fn priority_of_rule(rule: &RuleMessage) -> Option<u32> {
    rule.attributes.iter().find_map(|a| match a {
        RuleAttribute::Priority(p) => Some(*p),
        _ => None,
    })
}

async fn ensure_rule(handle: &Handle, table: u32, priority: u32) -> Result<(), NetError> {
    let mut rules = our_rules(handle, table, priority).await?.into_iter();
    if rules.next().is_some() {
        // Older kernels accepted exact duplicates; keep one.
        for (duplicate, deletable) in rules {
            delete_rule(handle, duplicate, deletable, table, priority).await?;
        }
        debug!(table, priority, "rule already present");
        return Ok(());
    }
    handle
        .rule()
        .add()
        .v4()
        .table_id(table)
        .priority(priority)
        .action(RuleAction::ToTable)
        .execute()
        .await
        .map_err(|e| {
            let what = format!("adding rule from all lookup {table} priority {priority}");
            if errno(&e) == Some(libc::EEXIST) {
                // The kernel counts a rule with more selectors, same table and priority,
                // as this one.
                NetError::Netlink {
                    what,
                    reason: format!(
                        "another rule at priority {priority} already looks up table {table}; \
                         remapd needs that priority and table to itself"
                    ),
                }
            } else {
                netlink_error(what, &e)
            }
        })?;
    info!(table, priority, "added rule");
    Ok(())
}

async fn delete_rule(
    handle: &Handle,
    rule: RuleMessage,
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
    match handle.rule().del(rule).execute().await {
        Ok(()) => {
            info!(table, priority, "removed rule");
            Ok(())
        }
        Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(netlink_error(
            format!("deleting rule from all lookup {table} priority {priority}"),
            &e,
        )),
    }
}

/// A network interface of the calling thread's namespace.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Link {
    /// Interface index.
    pub(crate) index: u32,
    /// Administratively up.
    pub(crate) up: bool,
}

/// The interfaces of the calling thread's namespace, by name.
pub(crate) async fn links(handle: &Handle) -> Result<BTreeMap<String, Link>, NetError> {
    let mut stream = handle.link().get().execute();
    let mut out = BTreeMap::new();
    while let Some(message) = stream
        .try_next()
        .await
        .map_err(|e| netlink_error("dumping links", &e))?
    {
        let name = message.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        if let Some(name) = name {
            out.insert(
                name,
                Link {
                    index: message.header.index,
                    up: message.header.flags.contains(LinkFlags::Up),
                },
            );
        }
    }
    Ok(out)
}

/// Sets a link administratively up.
pub(crate) async fn set_link_up(handle: &Handle, index: u32, name: &str) -> Result<(), NetError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| netlink_error(format!("setting {name} up"), &e))
}

/// Runs `f` with a netlink connection opened on the calling thread (so in that
/// thread's network namespace), on a runtime private to this call.
pub(crate) fn with_netlink<T, F, Fut>(what: &str, f: F) -> Result<T, NetError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, NetError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NetError::Netlink {
            what: format!("{what}: starting a runtime"),
            reason: e.to_string(),
        })?;
    runtime.block_on(async {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetError::Netlink {
                what: format!("{what}: opening a netlink socket"),
                reason: e.to_string(),
            })?;
        let driver = tokio::spawn(connection);
        let out = f(handle).await;
        driver.abort();
        out
    })
}

/// The errno of a netlink error reply, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// A netlink failure while doing `what`, with the errno's text when the kernel sent one.
pub(crate) fn netlink_error(what: impl Into<String>, e: &rtnetlink::Error) -> NetError {
    let reason = match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    };
    NetError::Netlink {
        what: what.into(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: Ipv4Addr, len: u8, attrs: Vec<RouteAttribute>) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = len;
        m.header.scope = RouteScope::Link;
        m.header.kind = RouteType::Unicast;
        m.header.table = RT_TABLE_COMPAT;
        m.attributes.push(RouteAttribute::Table(7878));
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        m.attributes.extend(attrs);
        m
    }

    /// The daemon calls the appliers from blocking tasks of its runtime; the per-call
    /// runtime must work there.
    #[tokio::test]
    async fn netlink_works_from_a_blocking_task() {
        let links = tokio::task::spawn_blocking(|| {
            with_netlink(
                "listing links",
                |handle| async move { links(&handle).await },
            )
        })
        .await
        .unwrap()
        .unwrap();
        assert!(links.contains_key("lo"), "{links:?}");
    }

    #[test]
    fn only_the_installed_shape_counts_as_wanted() {
        let ours = route(Ipv4Addr::new(10, 1, 0, 0), 16, vec![RouteAttribute::Oif(3)]);
        assert_eq!(table_of_route(&ours), 7878);
        assert_eq!(
            as_wanted(&ours),
            Some(Wanted {
                prefix: "10.1.0.0/16".parse().unwrap(),
                oif: 3
            })
        );
        let via = route(
            Ipv4Addr::new(10, 1, 0, 0),
            16,
            vec![
                RouteAttribute::Oif(3),
                RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(1, 2, 3, 4))),
            ],
        );
        assert_eq!(as_wanted(&via), None);
        let metric = route(
            Ipv4Addr::new(10, 1, 0, 0),
            16,
            vec![RouteAttribute::Oif(3), RouteAttribute::Priority(100)],
        );
        assert_eq!(as_wanted(&metric), None);
        let mut universe = ours.clone();
        universe.header.scope = RouteScope::Universe;
        assert_eq!(as_wanted(&universe), None);
    }

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

    #[test]
    fn rule_identity_ignores_reported_defaults_but_not_selectors() {
        let mut r = RuleMessage::default();
        r.header.family = AddressFamily::Inet;
        r.header.action = RuleAction::ToTable;
        r.header.table = RT_TABLE_COMPAT;
        r.attributes = vec![
            RuleAttribute::Table(7878),
            RuleAttribute::Priority(7878),
            RuleAttribute::SuppressPrefixLen(u32::MAX),
            RuleAttribute::Protocol(RouteProtocol::Unspec),
        ];
        assert!(is_our_rule(&r, 7878, 7878));
        assert!(!is_our_rule(&r, 7878, 7879));
        assert!(!is_our_rule(&r, 7879, 7878));
        let mut from = r.clone();
        from.header.src_len = 16;
        assert!(!is_our_rule(&from, 7878, 7878));
        let mut iif = r.clone();
        iif.attributes.push(RuleAttribute::Iifname("eth0".into()));
        assert!(!is_our_rule(&iif, 7878, 7878));
    }
}
