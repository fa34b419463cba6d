//! Path explanation: what happens to a packet between a local pod and a remote one, as
//! this gateway knows the pair, without sending anything.
//!
//! The request leg and the reply leg are walked step by step — remapd's routing table,
//! the tunnel's egress rules, WireGuard's allowed-ips on both ends, the receiver's
//! ingress rules and its border — with the same prefix semantics as the dataplane
//! (longest prefix per address field, host bits kept). The peer's half is the plan the
//! same compiler gives for the peer's side of the pair, built from what the peer
//! exported (`remote.view_of_local`) and the mirrored strategy: this gateway's plan and
//! the peer's can only disagree where the peer's exports are stale, and then the answer
//! says what the exports claim.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{Capabilities, Decision, LocalCluster, Mapping, RemoteCluster, Strategy};
use crate::plan::{GatewayPlan, compile};
use crate::rule::{AddressField, Direction, TranslationRule};

/// One peering as the explainer needs it.
#[derive(Clone, Debug)]
pub struct PeeringPath<'a> {
    /// Peering name.
    pub name: &'a str,
    /// The peer, as it exported itself.
    pub remote: &'a RemoteCluster,
    /// The tunnel device.
    pub interface: &'a str,
    /// This gateway's plan for the peering; `None` when the peering is not applied.
    pub plan: Option<&'a GatewayPlan>,
    /// Why the peering has no plan, when it has none.
    pub problem: Option<&'a str>,
    /// The peer's WireGuard public key, when configured.
    pub peer_public_key: Option<&'a str>,
    /// The peer's WireGuard endpoint, when configured.
    pub endpoint: Option<String>,
}

/// Which way the explained packet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PathDirection {
    /// A local pod dials a remote pod (`from` is local, `to` is routed into a tunnel).
    Outbound,
    /// A remote pod dials a local pod (`from` is the remote pod's real address, `to` the
    /// address it dials: how its cluster sees the local pod).
    Inbound,
}

/// Which gateway a step happens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Gateway {
    /// This gateway.
    Local,
    /// The peer's gateway, from its exports.
    Peer,
}

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    /// The routing decision that puts the packet into the tunnel.
    Route,
    /// A rule on the tunnel's egress hook rewrote an address.
    EgressRewrite,
    /// WireGuard picked the peer whose allowed-ips hold the destination.
    WireguardSend,
    /// WireGuard accepted the source as one of the sending peer's allowed-ips.
    WireguardReceive,
    /// A rule on the tunnel's ingress hook rewrote an address.
    IngressRewrite,
    /// The ingress border (allow-list) let the packet in.
    Border,
    /// The packet reaches the destination pod.
    Deliver,
}

/// The packet's addresses after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Addresses {
    /// Source address.
    #[schema(value_type = String, example = "10.244.1.5")]
    pub source: IpAddr,
    /// Destination address.
    #[schema(value_type = String, example = "10.245.2.7")]
    pub destination: IpAddr,
}

/// One step of a leg.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Step {
    /// Where it happens.
    pub gateway: Gateway,
    /// What happens.
    pub kind: StepKind,
    /// The packet after the step.
    pub packet: Addresses,
    /// The rewrite rule that fired (rewrite steps); on the peer its interface is `peer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<TranslationRule>,
    /// In words.
    pub detail: String,
}

/// How a leg ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The packet reaches its destination.
    Delivered,
    /// The packet is dropped (see `reason`).
    Dropped,
    /// What happens after the last step is not known here (the peer's exports lack it).
    Unknown,
}

/// Why a leg is dropped. The border's reasons are the dataplane's drop reasons (the
/// `reason` label of `remapd_dropped_packets_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// None of remapd's routes sends the destination into a tunnel: the main table
    /// decides, which does not reach the peer.
    NoRoute,
    /// The route leads into another peering's tunnel than the one that must carry it.
    WrongTunnel,
    /// The peering has no applied plan (its decision failed or is pending).
    NotApplied,
    /// WireGuard has no peer whose allowed-ips hold the destination (sender) or the source
    /// (receiver).
    AllowedIps,
    /// Border: the destination, after translation, is not something the receiver exported.
    NotExported,
    /// Border: the source, after translation, is not an address the sender may use.
    SourceNotAllowed,
    /// The reply reaches the pod that dialed, but not from the address it dialed: the
    /// connection cannot be matched by the pod's socket.
    ReplyMismatch,
}

/// The end of a leg.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Verdict {
    /// Delivered, dropped or unknown.
    pub outcome: Outcome,
    /// Where it ends.
    pub gateway: Gateway,
    /// Why it was dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DropReason>,
    /// In words.
    pub detail: String,
}

/// One direction of the exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Leg {
    /// The packet as it leaves its pod.
    pub sent: Addresses,
    /// Every step, in order.
    pub steps: Vec<Step>,
    /// How it ends.
    pub verdict: Verdict,
    /// What the destination pod sees, when delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<Addresses>,
}

/// The path of a packet and its reply through one peering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PathExplanation {
    /// Peering.
    pub peering: String,
    /// Which way the request goes.
    pub direction: PathDirection,
    /// The peering's strategy from this gateway's point of view (none when not applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// The tunnel device.
    pub interface: String,
    /// The peer's WireGuard public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_public_key: Option<String>,
    /// The peer's WireGuard endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The request.
    pub request: Leg,
    /// The reply to what the destination received, when the request is delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Leg>,
}

/// The most paths one answer holds: overlapping peers (every cluster on 10.244.0.0/16)
/// make a remote pod's address fit every peering, and one read must stay cheap.
pub const MAX_PATHS: usize = 64;

/// Why nothing can be explained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// More peerings fit the addresses than one answer holds.
    #[error(
        "{from} -> {to} fits {count} peerings (their CIDRs overlap), more than the {MAX_PATHS} one answer holds: name one with peering="
    )]
    TooMany {
        /// Source asked about.
        from: IpAddr,
        /// Destination asked about.
        to: IpAddr,
        /// Peerings that fit.
        count: usize,
    },
    /// Neither a local pod dialing out nor a remote pod dialing in.
    #[error(
        "{from} -> {to} is no path through a peering: for a local pod dialing out, `from` must be in this cluster's CIDRs; for a remote pod dialing in, `from` must be in a peer's CIDRs and `to` an address that peer sees this cluster at"
    )]
    NoPath {
        /// Source asked about.
        from: IpAddr,
        /// Destination asked about.
        to: IpAddr,
    },
}

/// The plan of the peer's side of a pair, compiled from what it exported, or why it
/// cannot be known.
fn peer_plan(local: &LocalCluster, path: &PeeringPath<'_>) -> Result<GatewayPlan, String> {
    let plan = path
        .plan
        .ok_or_else(|| "the peering is not applied".to_owned())?;
    let mappings = match (&path.remote.view_of_local, plan.strategy) {
        (Some(view), _) => view.clone(),
        // Plain routing: the peer sees us as we are.
        (None, Strategy::None) => local
            .cidrs()
            .into_iter()
            .map(|c| Mapping {
                real: c,
                remapped: c,
            })
            .collect(),
        (None, _) => {
            return Err(format!(
                "{} did not export how it sees this cluster (remote.view_of_local): its rewrites are unknown here",
                path.remote.name
            ));
        }
    };
    let peer_local = LocalCluster {
        name: path.remote.name.clone(),
        pod_cidrs: path.remote.pod_cidrs.clone(),
        service_cidrs: path.remote.service_cidrs.clone(),
        reserved_cidrs: vec![],
        remap_pool: vec![],
    };
    let decision = Decision {
        strategy: plan.exports.strategy,
        mappings,
    };
    compile(
        &peer_local,
        Capabilities {
            nat_dataplane: path.remote.capabilities.nat_dataplane,
        },
        &plan.exports.remote,
        "peer",
        &decision,
    )
    .map_err(|e| format!("the peer's side cannot be compiled from its exports: {e}"))
}

/// Whether `nets` holds `addr`.
fn covers(nets: &[IpNet], addr: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&addr))
}

/// The longest-prefix rule of `rules` in `direction` for `field` that holds `addr`.
fn matching_rule(
    rules: &[TranslationRule],
    direction: Direction,
    field: AddressField,
    addr: IpAddr,
) -> Option<&TranslationRule> {
    rules
        .iter()
        .filter(|r| r.direction == direction && r.field == field && r.from.contains(&addr))
        .max_by_key(|r| r.from.prefix_len())
}

/// One gateway of the pair, as a leg crosses it.
struct Side<'a> {
    gateway: Gateway,
    plan: &'a GatewayPlan,
    /// Whether it runs remapd's dataplane (rules and border).
    dataplane: bool,
}

/// Where, why and in words a leg stops.
type Blocked = (Gateway, DropReason, String);

/// Builds one leg.
struct LegWalk {
    sent: Addresses,
    packet: Addresses,
    steps: Vec<Step>,
}

impl LegWalk {
    fn new(source: IpAddr, destination: IpAddr) -> Self {
        let packet = Addresses {
            source,
            destination,
        };
        Self {
            sent: packet,
            packet,
            steps: Vec::new(),
        }
    }

    fn step(&mut self, gateway: Gateway, kind: StepKind, detail: String) {
        self.steps.push(Step {
            gateway,
            kind,
            packet: self.packet,
            rule: None,
            detail,
        });
    }

    fn end(
        self,
        gateway: Gateway,
        outcome: Outcome,
        reason: Option<DropReason>,
        detail: String,
    ) -> Leg {
        let received = (outcome == Outcome::Delivered).then_some(self.packet);
        Leg {
            sent: self.sent,
            steps: self.steps,
            verdict: Verdict {
                outcome,
                gateway,
                reason,
                detail,
            },
            received,
        }
    }

    fn drop(self, gateway: Gateway, reason: DropReason, detail: String) -> Leg {
        self.end(gateway, Outcome::Dropped, Some(reason), detail)
    }

    fn blocked(self, (gateway, reason, detail): Blocked) -> Leg {
        self.drop(gateway, reason, detail)
    }

    /// The rules of `side` in `direction`: source first, then destination (the order is
    /// immaterial: the two fields are looked up independently on the original packet).
    fn rewrite(&mut self, side: &Side<'_>, direction: Direction) {
        let before = self.packet;
        let kind = match direction {
            Direction::Egress => StepKind::EgressRewrite,
            Direction::Ingress => StepKind::IngressRewrite,
        };
        for field in [AddressField::Source, AddressField::Destination] {
            let addr = match field {
                AddressField::Source => before.source,
                AddressField::Destination => before.destination,
            };
            let Some(rule) = matching_rule(&side.plan.rules, direction, field, addr) else {
                continue;
            };
            let Some(new) = (Mapping {
                real: rule.from,
                remapped: rule.to,
            })
            .apply(addr) else {
                continue;
            };
            match field {
                AddressField::Source => self.packet.source = new,
                AddressField::Destination => self.packet.destination = new,
            }
            self.steps.push(Step {
                gateway: side.gateway,
                kind,
                packet: self.packet,
                rule: Some(rule.clone()),
                detail: format!("{field} {addr} -> {new} ({} -> {})", rule.from, rule.to),
            });
        }
    }

    /// WireGuard on the sender: the peer whose allowed-ips hold the destination.
    fn send(&mut self, from: &Side<'_>, peer_key: Option<&str>) -> Result<(), Blocked> {
        if !covers(&from.plan.allowed_ips, self.packet.destination) {
            return Err((
                from.gateway,
                DropReason::AllowedIps,
                format!(
                    "WireGuard: {} is not in the peer's allowed-ips ({}); no peer takes it",
                    self.packet.destination,
                    list(&from.plan.allowed_ips)
                ),
            ));
        }
        let to_whom = match (from.gateway, peer_key) {
            (Gateway::Local, Some(k)) => format!("to the peer {k}"),
            (Gateway::Local, None) => "to the peer".to_owned(),
            (Gateway::Peer, _) => "to this gateway".to_owned(),
        };
        self.step(
            from.gateway,
            StepKind::WireguardSend,
            format!(
                "WireGuard sends it {to_whom}: {} is in the allowed-ips ({})",
                self.packet.destination,
                list(&from.plan.allowed_ips)
            ),
        );
        Ok(())
    }

    /// WireGuard on the sender, the receiver's ingress rules and border; `Ok(())` when the
    /// packet passes all of them.
    fn cross(
        &mut self,
        from: &Side<'_>,
        to: &Side<'_>,
        peer_key: Option<&str>,
    ) -> Result<(), Blocked> {
        self.send(from, peer_key)?;
        if !covers(&to.plan.allowed_ips, self.packet.source) {
            return Err((
                to.gateway,
                DropReason::AllowedIps,
                format!(
                    "WireGuard: source {} is not in the sender's allowed-ips ({})",
                    self.packet.source,
                    list(&to.plan.allowed_ips)
                ),
            ));
        }
        self.step(
            to.gateway,
            StepKind::WireguardReceive,
            format!(
                "WireGuard accepts source {} (allowed-ips {})",
                self.packet.source,
                list(&to.plan.allowed_ips)
            ),
        );
        if !to.dataplane {
            return Ok(());
        }
        self.rewrite(to, Direction::Ingress);
        let border = &to.plan.border;
        if !covers(&border.destinations, self.packet.destination) {
            return Err((
                to.gateway,
                DropReason::NotExported,
                format!(
                    "border: {} is not in what this side exported ({})",
                    self.packet.destination,
                    list(&border.destinations)
                ),
            ));
        }
        if !covers(&border.sources, self.packet.source) {
            return Err((
                to.gateway,
                DropReason::SourceNotAllowed,
                format!(
                    "border: source {} is not one the peer may use ({})",
                    self.packet.source,
                    list(&border.sources)
                ),
            ));
        }
        self.step(
            to.gateway,
            StepKind::Border,
            format!(
                "border admits {} -> {}",
                self.packet.source, self.packet.destination
            ),
        );
        Ok(())
    }
}

fn list(nets: &[IpNet]) -> String {
    if nets.is_empty() {
        return "none".to_owned();
    }
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The peering whose route (one of remapd's) holds `addr` (longest prefix over every
/// peering's routes), with the prefix.
fn route_of<'a>(
    peerings: &'a [PeeringPath<'a>],
    addr: IpAddr,
) -> Option<(&'a PeeringPath<'a>, IpNet)> {
    peerings
        .iter()
        .filter_map(|p| longest(&p.plan?.routes, addr).map(|r| (p, r)))
        .max_by_key(|(_, r)| r.prefix_len())
}

/// Explains `from -> to` and its reply through every peering the path may take.
///
/// `from` in this cluster's CIDRs and `to` routed into a tunnel: outbound, through the
/// tunnel the route picks. `from` in a peer's CIDRs and `to` an address that peer sees
/// this cluster at: inbound, through that peering (several peerings when their CIDRs
/// overlap). Both can hold at once (overlapping CIDRs are the point): both are answered.
/// `only` keeps the paths through one peering.
pub fn explain(
    local: &LocalCluster,
    peerings: &[PeeringPath<'_>],
    from: IpAddr,
    to: IpAddr,
    only: Option<&str>,
) -> Result<Vec<PathExplanation>, ExplainError> {
    let mut out = Vec::new();
    let keep = |name: &str| only.is_none_or(|o| o == name);
    let dials_out = covers(&local.cidrs(), from);
    let routed = if dials_out {
        route_of(peerings, to)
    } else {
        None
    };
    if let Some((path, prefix)) = routed
        && keep(path.name)
    {
        out.push(outbound(local, path, prefix, from, to));
    }
    let inbound_paths: Vec<&PeeringPath<'_>> = peerings
        .iter()
        .filter(|p| keep(p.name) && covers(&p.remote.cidrs(), from) && dialable(local, p, to))
        .collect();
    let count = out.len() + inbound_paths.len();
    if count > MAX_PATHS {
        return Err(ExplainError::TooMany { from, to, count });
    }
    for path in inbound_paths {
        out.push(inbound(local, peerings, path, from, to));
    }
    // Asked about one peering that the packet does not take: say why.
    if out.is_empty()
        && dials_out
        && let Some(path) = only.and_then(|name| peerings.iter().find(|p| p.name == name))
    {
        let walk = LegWalk::new(from, to);
        let leg = match (path.plan, routed) {
            (None, _) => not_applied(walk, path),
            (Some(_), Some((via, prefix))) => walk.drop(
                Gateway::Local,
                DropReason::WrongTunnel,
                format!(
                    "{to} is routed into peering {}'s tunnel {} (route {prefix}), not {}",
                    via.name, via.interface, path.interface
                ),
            ),
            (Some(_), None) => walk.drop(
                Gateway::Local,
                DropReason::NoRoute,
                format!(
                    "none of remapd's routes holds {to}: the main table decides, and it does not lead into {}",
                    path.interface
                ),
            ),
        };
        out.push(explanation(path, PathDirection::Outbound, leg, None));
    }
    if out.is_empty() {
        return Err(ExplainError::NoPath { from, to });
    }
    Ok(out)
}

/// Whether the peer of `path` can dial `to` to reach this cluster: `to` is in how it sees
/// us (its exports), or in our real CIDRs when it exported no view.
fn dialable(local: &LocalCluster, path: &PeeringPath<'_>, to: IpAddr) -> bool {
    match &path.remote.view_of_local {
        Some(view) => view.iter().any(|m| m.remapped.contains(&to)),
        None => covers(&local.cidrs(), to),
    }
}

fn not_applied(walk: LegWalk, path: &PeeringPath<'_>) -> Leg {
    let detail = format!(
        "peering {} is not applied: {}",
        path.name,
        path.problem.unwrap_or("no decision yet")
    );
    walk.drop(Gateway::Local, DropReason::NotApplied, detail)
}

fn explanation(
    path: &PeeringPath<'_>,
    direction: PathDirection,
    request: Leg,
    reply: Option<Leg>,
) -> PathExplanation {
    PathExplanation {
        peering: path.name.to_owned(),
        direction,
        strategy: path.plan.map(|p| p.strategy),
        interface: path.interface.to_owned(),
        peer_public_key: path.peer_public_key.map(str::to_owned),
        endpoint: path.endpoint.clone(),
        request,
        reply,
    }
}

/// A local pod at `from` dials `to`, which remapd's routes send into `path`'s tunnel.
fn outbound(
    local: &LocalCluster,
    path: &PeeringPath<'_>,
    prefix: IpNet,
    from: IpAddr,
    to: IpAddr,
) -> PathExplanation {
    let Some(plan) = path.plan else {
        let leg = not_applied(LegWalk::new(from, to), path);
        return explanation(path, PathDirection::Outbound, leg, None);
    };
    let ours = Side {
        gateway: Gateway::Local,
        plan,
        dataplane: true,
    };
    let mut walk = LegWalk::new(from, to);
    walk.step(
        Gateway::Local,
        StepKind::Route,
        format!("{to} via {} (remapd's route {prefix})", path.interface),
    );
    walk.rewrite(&ours, Direction::Egress);
    let peer = match peer_plan(local, path) {
        Ok(p) => p,
        Err(why) => {
            if let Err(b) = walk.send(&ours, path.peer_public_key) {
                return explanation(path, PathDirection::Outbound, walk.blocked(b), None);
            }
            let leg = walk.end(Gateway::Peer, Outcome::Unknown, None, why);
            return explanation(path, PathDirection::Outbound, leg, None);
        }
    };
    let theirs = Side {
        gateway: Gateway::Peer,
        plan: &peer,
        dataplane: path.remote.capabilities.nat_dataplane,
    };
    if let Err(b) = walk.cross(&ours, &theirs, path.peer_public_key) {
        return explanation(path, PathDirection::Outbound, walk.blocked(b), None);
    }
    let delivered = walk.packet;
    walk.step(
        Gateway::Peer,
        StepKind::Deliver,
        format!(
            "the pod at {} in {} sees source {}",
            delivered.destination, path.remote.name, delivered.source
        ),
    );
    let request = walk.end(
        Gateway::Peer,
        Outcome::Delivered,
        None,
        format!(
            "delivered to {} in {}",
            delivered.destination, path.remote.name
        ),
    );
    // The reply: the remote pod answers the source it saw.
    let mut back = LegWalk::new(delivered.destination, delivered.source);
    let reply = match peer_route(&peer, delivered.source) {
        None => back.drop(
            Gateway::Peer,
            DropReason::NoRoute,
            format!(
                "the peer has no route for {} into the tunnel (its routes: {})",
                delivered.source,
                list(&peer.routes)
            ),
        ),
        Some(prefix) => {
            back.step(
                Gateway::Peer,
                StepKind::Route,
                format!(
                    "{} into the tunnel (peer's route {prefix})",
                    delivered.source
                ),
            );
            back.rewrite(&theirs, Direction::Egress);
            match back.cross(&theirs, &ours, None) {
                Err(b) => back.blocked(b),
                Ok(()) => finish_reply(back, Gateway::Local, from, to, &local.name),
            }
        }
    };
    explanation(path, PathDirection::Outbound, request, Some(reply))
}

/// A remote pod at `from` (its real address) dials `to` (how its cluster sees ours).
fn inbound(
    local: &LocalCluster,
    peerings: &[PeeringPath<'_>],
    path: &PeeringPath<'_>,
    from: IpAddr,
    to: IpAddr,
) -> PathExplanation {
    let mut walk = LegWalk::new(from, to);
    let Some(plan) = path.plan else {
        let leg = not_applied(walk, path);
        return explanation(path, PathDirection::Inbound, leg, None);
    };
    let peer = match peer_plan(local, path) {
        Ok(p) => p,
        Err(why) => {
            let leg = walk.end(Gateway::Peer, Outcome::Unknown, None, why);
            return explanation(path, PathDirection::Inbound, leg, None);
        }
    };
    let ours = Side {
        gateway: Gateway::Local,
        plan,
        dataplane: true,
    };
    let theirs = Side {
        gateway: Gateway::Peer,
        plan: &peer,
        dataplane: path.remote.capabilities.nat_dataplane,
    };
    let Some(prefix) = peer_route(&peer, to) else {
        let leg = walk.drop(
            Gateway::Peer,
            DropReason::NoRoute,
            format!(
                "the peer has no route for {to} into the tunnel (its routes: {})",
                list(&peer.routes)
            ),
        );
        return explanation(path, PathDirection::Inbound, leg, None);
    };
    walk.step(
        Gateway::Peer,
        StepKind::Route,
        format!("{to} into the tunnel (peer's route {prefix})"),
    );
    walk.rewrite(&theirs, Direction::Egress);
    if let Err(b) = walk.cross(&theirs, &ours, None) {
        return explanation(path, PathDirection::Inbound, walk.blocked(b), None);
    }
    let delivered = walk.packet;
    walk.step(
        Gateway::Local,
        StepKind::Deliver,
        format!(
            "the pod at {} sees source {}",
            delivered.destination, delivered.source
        ),
    );
    let request = walk.end(
        Gateway::Local,
        Outcome::Delivered,
        None,
        format!("delivered to {} in {}", delivered.destination, local.name),
    );
    let mut back = LegWalk::new(delivered.destination, delivered.source);
    let reply = match route_of(peerings, delivered.source) {
        None => back.drop(
            Gateway::Local,
            DropReason::NoRoute,
            format!("none of remapd's routes holds {}", delivered.source),
        ),
        Some((via, prefix)) if via.name != path.name => back.drop(
            Gateway::Local,
            DropReason::WrongTunnel,
            format!(
                "{} is routed into peering {}'s tunnel {} (route {prefix}), not {}",
                delivered.source, via.name, via.interface, path.interface
            ),
        ),
        Some((_, prefix)) => {
            back.step(
                Gateway::Local,
                StepKind::Route,
                format!(
                    "{} via {} (remapd's route {prefix})",
                    delivered.source, path.interface
                ),
            );
            back.rewrite(&ours, Direction::Egress);
            match back.cross(&ours, &theirs, path.peer_public_key) {
                Err(b) => back.blocked(b),
                Ok(()) => finish_reply(back, Gateway::Peer, from, to, &path.remote.name),
            }
        }
    };
    explanation(path, PathDirection::Inbound, request, Some(reply))
}

/// The peer's route (in its plan) for `addr`.
fn peer_route(peer: &GatewayPlan, addr: IpAddr) -> Option<IpNet> {
    longest(&peer.routes, addr)
}

/// The longest prefix of `routes` that holds `addr`.
fn longest(routes: &[IpNet], addr: IpAddr) -> Option<IpNet> {
    routes
        .iter()
        .filter(|r| r.contains(&addr))
        .max_by_key(|r| r.prefix_len())
        .copied()
}

/// The reply reached the dialer's side: it must come back to `dialer` from `dialed`.
fn finish_reply(
    mut back: LegWalk,
    at: Gateway,
    dialer: IpAddr,
    dialed: IpAddr,
    cluster: &str,
) -> Leg {
    let got = back.packet;
    if got.destination != dialer || got.source != dialed {
        return back.drop(
            at,
            DropReason::ReplyMismatch,
            format!(
                "the reply arrives as {} -> {}, but {dialer} dialed {dialed}",
                got.source, got.destination
            ),
        );
    }
    back.step(
        at,
        StepKind::Deliver,
        format!("the pod at {dialer} gets its reply from {dialed}"),
    );
    back.end(
        at,
        Outcome::Delivered,
        None,
        format!("reply delivered to {dialer} in {cluster}"),
    )
}

#[cfg(test)]
mod tests;
