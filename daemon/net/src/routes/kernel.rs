//! The kernel side of remapd's routes: [`RoutingKernel`], the few operations the
//! convergence in `mod.rs` is written against, and [`Rtnetlink`], which does them with
//! rtnetlink messages — deciding which dumped routes have exactly the shape remapd
//! installs and which rules are exactly remapd's.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use super::{Family, RTPROT_REMAPD, Wanted};
use crate::NetError;
use crate::netlink::{Link, errno, links, netlink_error};

/// `RT_TABLE_COMPAT`: what the header's 8-bit table field holds when the real id,
/// carried in an attribute, does not fit.
const RT_TABLE_COMPAT: u8 = 252;

/// A route found in a table remapd looks at.
#[derive(Clone, Debug)]
pub(crate) struct Dumped<R> {
    /// What the kernel needs to delete it.
    pub(crate) route: R,
    /// The route, if it has exactly the shape remapd installs.
    pub(crate) wanted: Option<Wanted>,
    /// Its destination prefix, whatever its shape.
    pub(crate) prefix: Option<IpNet>,
    /// It carries remapd's protocol number ([`RTPROT_REMAPD`]).
    pub(crate) ours: bool,
    /// `prefix dev name` (or `via ...`), for logs and errors.
    pub(crate) shown: String,
}

/// What the route convergence asks of the kernel. Each mutating call is one netlink
/// request; the order they come in is the convergence's (table-tested with the
/// recording kernel, without root).
pub(crate) trait RoutingKernel {
    /// A dumped route, as the kernel needs it back to delete it.
    type Route;
    /// A dumped rule, likewise.
    type Rule;
    /// The interfaces, by name.
    async fn links(&self) -> Result<BTreeMap<String, Link>, NetError>;
    /// The IPv4 and IPv6 routes of `table`.
    async fn table_routes(
        &self,
        table: u32,
        links: &BTreeMap<String, Link>,
    ) -> Result<Vec<Dumped<Self::Route>>, NetError>;
    /// Adds `prefix dev <oif> scope link proto 78 table <table>` (78: [`RTPROT_REMAPD`]).
    async fn add_route(&self, table: u32, w: Wanted, interface: &str) -> Result<(), NetError>;
    /// Replaces the route for `w.prefix` in `table` in one request (`NLM_F_REPLACE`):
    /// traffic moves from the old route to the new one with no moment without either.
    async fn replace_route(&self, table: u32, w: Wanted, interface: &str) -> Result<(), NetError>;
    /// Deletes a dumped route; `false` when it was already gone.
    async fn delete_route(&self, route: Self::Route, shown: &str) -> Result<bool, NetError>;
    /// remapd's rules of `family` (`from all lookup <table> priority <priority>`), in
    /// kernel order, each with whether deleting it is unambiguous (see [`Rtnetlink`]).
    async fn our_rules(
        &self,
        family: Family,
        table: u32,
        priority: u32,
    ) -> Result<Vec<(Self::Rule, bool)>, NetError>;
    /// Adds remapd's rule for `family`.
    async fn add_rule(&self, family: Family, table: u32, priority: u32) -> Result<(), NetError>;
    /// Deletes one of remapd's rules (already gone is fine).
    async fn delete_rule(
        &self,
        rule: Self::Rule,
        table: u32,
        priority: u32,
    ) -> Result<(), NetError>;
}

/// [`RoutingKernel`] over an rtnetlink connection.
pub(crate) struct Rtnetlink<'a>(pub(crate) &'a Handle);

impl RoutingKernel for Rtnetlink<'_> {
    type Route = RouteMessage;
    type Rule = RuleMessage;

    async fn links(&self) -> Result<BTreeMap<String, Link>, NetError> {
        links(self.0).await
    }

    async fn table_routes(
        &self,
        table: u32,
        links: &BTreeMap<String, Link>,
    ) -> Result<Vec<Dumped<RouteMessage>>, NetError> {
        let names: HashMap<u32, &str> = links
            .iter()
            .map(|(name, link)| (link.index, name.as_str()))
            .collect();
        Ok(table_routes(self.0, table)
            .await?
            .into_iter()
            .map(|route| Dumped {
                wanted: as_wanted(&route),
                prefix: destination(&route),
                ours: u8::from(route.header.protocol) == RTPROT_REMAPD,
                shown: describe(&route, &names),
                route,
            })
            .collect())
    }

    async fn add_route(&self, table: u32, w: Wanted, interface: &str) -> Result<(), NetError> {
        add_route(self.0, table, w, interface, false).await
    }

    async fn replace_route(&self, table: u32, w: Wanted, interface: &str) -> Result<(), NetError> {
        add_route(self.0, table, w, interface, true).await
    }

    async fn delete_route(&self, route: RouteMessage, shown: &str) -> Result<bool, NetError> {
        delete_route(self.0, route, shown).await
    }

    async fn our_rules(
        &self,
        family: Family,
        table: u32,
        priority: u32,
    ) -> Result<Vec<(RuleMessage, bool)>, NetError> {
        our_rules(self.0, family, table, priority).await
    }

    async fn add_rule(&self, family: Family, table: u32, priority: u32) -> Result<(), NetError> {
        add_rule(self.0, family, table, priority).await
    }

    async fn delete_rule(
        &self,
        rule: RuleMessage,
        table: u32,
        priority: u32,
    ) -> Result<(), NetError> {
        delete_rule(self.0, rule, table, priority).await
    }
}

/// The route if it has exactly the shape remapd installs; `None` for anything else
/// found in the table (a gateway, a metric, another scope...), which is then replaced.
///
/// IPv6 routes have no scope (the kernel reports universe) and get metric 1024
/// (`IP6_RT_PRIO_USER`) when added without one, as remapd adds them.
fn as_wanted(message: &RouteMessage) -> Option<Wanted> {
    let h = &message.header;
    let (scope, metric) = match h.address_family {
        AddressFamily::Inet => (RouteScope::Link, 0),
        AddressFamily::Inet6 => (RouteScope::Universe, IPV6_DEFAULT_METRIC),
        _ => return None,
    };
    if h.scope != scope || h.kind != RouteType::Unicast || h.tos != 0 || h.source_prefix_length != 0
    {
        return None;
    }
    let mut oif = None;
    for attr in &message.attributes {
        match attr {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) if *p == metric => {}
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
    Some(Wanted {
        prefix: destination(message)?,
        oif: oif?,
    })
}

/// The metric the kernel gives an IPv6 route added without one (`IP6_RT_PRIO_USER`).
const IPV6_DEFAULT_METRIC: u32 = 1024;

/// The destination prefix of an IPv4 or IPv6 route.
pub(crate) fn destination(message: &RouteMessage) -> Option<IpNet> {
    let unspecified = match message.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let dst = message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
            _ => None,
        })
        .unwrap_or(unspecified);
    if dst.is_ipv4() != unspecified.is_ipv4() {
        return None;
    }
    IpNet::new(dst, message.header.destination_prefix_length).ok()
}

/// `prefix dev name` (or `via ...`) of a dumped route, for logs and errors.
fn describe(message: &RouteMessage, names: &HashMap<u32, &str>) -> String {
    let dst = destination(message)
        .map(|d| d.to_string())
        .unwrap_or_else(|| format!("?/{}", message.header.destination_prefix_length));
    let mut out = String::new();
    for attr in &message.attributes {
        match attr {
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => out.push_str(&format!(" via {a}")),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => out.push_str(&format!(" via {a}")),
            RouteAttribute::Oif(i) => match names.get(i) {
                Some(name) => out.push_str(&format!(" dev {name}")),
                None => out.push_str(&format!(" dev #{i}")),
            },
            _ => {}
        }
    }
    // Who made it, when not remapd: what an operator needs to find its owner.
    match u8::from(message.header.protocol) {
        RTPROT_REMAPD => {}
        2 => out.push_str(" proto kernel"),
        3 => out.push_str(" proto boot"),
        4 => out.push_str(" proto static"),
        n => out.push_str(&format!(" proto {n}")),
    }
    format!("{dst}{out}")
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

/// Every IPv4 and IPv6 route in `table`. The kernel dumps all tables (no strict
/// checking on this socket), so the table is filtered here. A kernel without IPv6
/// (`ipv6.disable=1`) has no IPv6 routes.
pub(crate) async fn table_routes(
    handle: &Handle,
    table: u32,
) -> Result<Vec<RouteMessage>, NetError> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        let dumped: Result<Vec<RouteMessage>, _> =
            handle.route().get(request).execute().try_collect().await;
        let all = match dumped {
            Ok(all) => all,
            Err(e) if family == AddressFamily::Inet6 && errno(&e) == Some(libc::EAFNOSUPPORT) => {
                Vec::new()
            }
            Err(e) => {
                return Err(netlink_error(
                    format!("dumping routes of table {table}"),
                    &e,
                ));
            }
        };
        out.extend(
            all.into_iter()
                .filter(|m| m.header.address_family == family && table_of_route(m) == table),
        );
    }
    Ok(out)
}

async fn add_route(
    handle: &Handle,
    table: u32,
    w: Wanted,
    interface: &str,
    replace: bool,
) -> Result<(), NetError> {
    let mut message = match w.prefix {
        IpNet::V4(prefix) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(prefix.network(), prefix.prefix_len())
            .output_interface(w.oif)
            .scope(RouteScope::Link)
            .protocol(RouteProtocol::from(RTPROT_REMAPD))
            .table_id(table)
            .build(),
        // IPv6 has no route scope; the kernel gives the route its default metric.
        IpNet::V6(prefix) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(prefix.network(), prefix.prefix_len())
            .output_interface(w.oif)
            .protocol(RouteProtocol::from(RTPROT_REMAPD))
            .table_id(table)
            .build(),
    };
    if table > 255 {
        // The real id is in the attribute; say so in the header the way iproute2 does
        // rather than leaving the builder's "main" there.
        message.header.table = RT_TABLE_COMPAT;
    }
    let request = handle.route().add(message);
    let request = if replace { request.replace() } else { request };
    let verb = if replace { "replacing" } else { "adding" };
    request.execute().await.map_err(|e| {
        if errno(&e) == Some(libc::ENODEV) {
            NetError::InterfaceNotFound(interface.to_owned())
        } else {
            netlink_error(
                format!("{verb} route {} dev {interface} table {table}", w.prefix),
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
fn is_our_rule(rule: &RuleMessage, family: Family, table: u32, priority: u32) -> bool {
    let h = &rule.header;
    if h.family != family.netlink()
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
    family: Family,
    table: u32,
    priority: u32,
) -> Result<Vec<(RuleMessage, bool)>, NetError> {
    let version = match family {
        Family::V4 => IpVersion::V4,
        Family::V6 => IpVersion::V6,
    };
    let dumped: Result<Vec<RuleMessage>, _> =
        handle.rule().get(version).execute().try_collect().await;
    let all = match dumped {
        Ok(all) => all,
        // No IPv6 in this kernel: no IPv6 rules either.
        Err(e) if family == Family::V6 && errno(&e) == Some(libc::EAFNOSUPPORT) => Vec::new(),
        Err(e) => return Err(netlink_error(format!("dumping {family} rules"), &e)),
    };
    let mut shadowed = false;
    let mut out = Vec::new();
    for rule in all {
        if is_our_rule(&rule, family, table, priority) {
            out.push((rule, !shadowed));
        } else if rule.header.family == family.netlink()
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

async fn add_rule(
    handle: &Handle,
    family: Family,
    table: u32,
    priority: u32,
) -> Result<(), NetError> {
    let request = handle.rule().add();
    let sent = match family {
        Family::V4 => {
            request
                .v4()
                .table_id(table)
                .priority(priority)
                .action(RuleAction::ToTable)
                .execute()
                .await
        }
        Family::V6 => {
            request
                .v6()
                .table_id(table)
                .priority(priority)
                .action(RuleAction::ToTable)
                .execute()
                .await
        }
    };
    sent.map_err(|e| {
        let what = format!("adding {family} rule from all lookup {table} priority {priority}");
        if errno(&e) == Some(libc::EAFNOSUPPORT) {
            return NetError::Netlink {
                what,
                reason: "this gateway's kernel has no IPv6 (booted with ipv6.disable=1?), and \
                         a peering routes IPv6 CIDRs: remove them from the cluster and the \
                         peering, or enable IPv6"
                    .into(),
            };
        }
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
    })
}

async fn delete_rule(
    handle: &Handle,
    rule: RuleMessage,
    table: u32,
    priority: u32,
) -> Result<(), NetError> {
    match handle.rule().del(rule).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(netlink_error(
            format!("deleting rule from all lookup {table} priority {priority}"),
            &e,
        )),
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

    /// An IPv6 route as the kernel dumps the one remapd adds: scope universe, metric
    /// 1024. Another metric, or a gateway, is not remapd's shape.
    #[test]
    fn an_ipv6_route_of_remapd_shape_counts_as_wanted() {
        let dst: Ipv6Addr = "fd00:30::".parse().unwrap();
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet6;
        m.header.destination_prefix_length = 56;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.header.protocol = RouteProtocol::from(RTPROT_REMAPD);
        m.attributes = vec![
            RouteAttribute::Table(7878),
            RouteAttribute::Destination(RouteAddress::Inet6(dst)),
            RouteAttribute::Oif(3),
            RouteAttribute::Priority(1024),
        ];
        let wanted = Wanted {
            prefix: "fd00:30::/56".parse().unwrap(),
            oif: 3,
        };
        assert_eq!(as_wanted(&m), Some(wanted));
        assert_eq!(destination(&m), Some(wanted.prefix));
        assert_eq!(
            describe(&m, &HashMap::from([(3, "wg0")])),
            "fd00:30::/56 dev wg0"
        );
        let mut metric = m.clone();
        metric.attributes[3] = RouteAttribute::Priority(100);
        assert_eq!(as_wanted(&metric), None);
        let mut via = m.clone();
        via.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet6(
                "fe80::1".parse().unwrap(),
            )));
        assert_eq!(as_wanted(&via), None);
        // An IPv4 route keeps needing scope link and no metric.
        let mut as_v4 = m.clone();
        as_v4.header.address_family = AddressFamily::Inet;
        assert_eq!(as_wanted(&as_v4), None);
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
        assert!(is_our_rule(&r, Family::V4, 7878, 7878));
        assert!(!is_our_rule(&r, Family::V6, 7878, 7878));
        assert!(!is_our_rule(&r, Family::V4, 7878, 7879));
        assert!(!is_our_rule(&r, Family::V4, 7879, 7878));
        let mut from = r.clone();
        from.header.src_len = 16;
        assert!(!is_our_rule(&from, Family::V4, 7878, 7878));
        let mut iif = r.clone();
        iif.attributes.push(RuleAttribute::Iifname("eth0".into()));
        assert!(!is_our_rule(&iif, Family::V4, 7878, 7878));
    }
}
