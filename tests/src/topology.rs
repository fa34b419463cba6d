//! The seed topology: pod1 — gw1 ══ WireGuard over veth ══ gw2 — pod2, each "cluster" a
//! pod namespace behind a gateway namespace, with address plans given by the test so the
//! two sides can overlap exactly (the seed) or differ (to catch swapped CIDRs).

use std::net::SocketAddr;
use std::path::PathBuf;

use remapd::dataplane::{
    AddressField, Dataplane, DataplaneConfig, DesiredDataplane, Direction, IngressBorder,
    TranslationRule,
};

use crate::netns::{Netns, PinDir, Scratch, WireGuard, unique_prefix};

/// One cluster's pod network: addresses as "a.b.c.d/len" or IPv6 "addr/len".
#[derive(Clone, Debug)]
pub struct Cluster {
    /// (gateway address, pod address) per pod subnet; the first gives the pod's default route.
    pub subnets: Vec<(&'static str, &'static str)>,
}

/// What one gateway does: translation rules on its tunnel device, routes into the tunnel,
/// and the WireGuard allowed-ips of its peer.
#[derive(Clone, Debug, Default)]
pub struct GatewayPlan {
    /// Rules as (direction, field, from, to); the interface is the gateway's tunnel.
    pub rules: Vec<(Direction, AddressField, &'static str, &'static str)>,
    /// Prefixes routed into the tunnel.
    pub routes: Vec<&'static str>,
    /// The peer's allowed-ips.
    pub allowed_ips: Vec<&'static str>,
    /// The tunnel's ingress border as (sources, destinations) after translation; `None`:
    /// no border (everything that matches no rule passes).
    pub border: Option<(Vec<&'static str>, Vec<&'static str>)>,
}

/// A running seed topology. Everything is removed on drop.
pub struct Topology {
    /// Name prefix of every object of this topology.
    pub prefix: String,
    /// Client namespace of cluster 1.
    pub pod1: Netns,
    /// Gateway of cluster 1.
    pub gw1: Netns,
    /// Gateway of cluster 2.
    pub gw2: Netns,
    /// Client namespace of cluster 2.
    pub pod2: Netns,
    /// Tunnel of gateway 1.
    pub wg1: WireGuard,
    /// Tunnel of gateway 2.
    pub wg2: WireGuard,
    /// bpffs directory of gateway 1's dataplane.
    pub pins1: PinDir,
    /// bpffs directory of gateway 2's dataplane.
    pub pins2: PinDir,
    /// Scratch directory (keys, logs).
    pub scratch: Scratch,
}

/// Underlay addresses of the gateways.
pub const UNDERLAY_GW1: &str = "198.18.0.1";
/// Underlay address of gateway 2.
pub const UNDERLAY_GW2: &str = "198.18.0.2";
/// WireGuard listen port on both gateways.
pub const WG_PORT: u16 = 51820;

/// The seed topology without a tunnel: namespaces, veth links, addresses, routes to
/// the gateways, forwarding and strict reverse-path filtering on the gateways.
pub struct Network {
    /// Name prefix of every object.
    pub prefix: String,
    /// Scratch directory.
    pub scratch: Scratch,
    /// Client namespace of cluster 1.
    pub pod1: Netns,
    /// Gateway of cluster 1.
    pub gw1: Netns,
    /// Gateway of cluster 2.
    pub gw2: Netns,
    /// Client namespace of cluster 2.
    pub pod2: Netns,
}

impl Network {
    /// Builds it.
    pub fn build(cluster1: &Cluster, cluster2: &Cluster) -> Self {
        let prefix = unique_prefix();
        let scratch = Scratch::new(&prefix);
        let pod1 = Netns::new(&format!("{prefix}-pod1"));
        let gw1 = Netns::new(&format!("{prefix}-gw1"));
        let gw2 = Netns::new(&format!("{prefix}-gw2"));
        let pod2 = Netns::new(&format!("{prefix}-pod2"));
        for (pod, gw, cluster) in [(&pod1, &gw1, cluster1), (&pod2, &gw2, cluster2)] {
            pod.ip(&[
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "lan",
                "netns",
                gw.name(),
            ]);
            for (gw_addr, pod_addr) in &cluster.subnets {
                // IPv6 addresses without duplicate address detection: usable at once.
                let nodad: &[&str] = if pod_addr.contains(':') {
                    &["nodad"]
                } else {
                    &[]
                };
                pod.ip(&[&["addr", "add", pod_addr, "dev", "eth0"], nodad].concat());
                gw.ip(&[&["addr", "add", gw_addr, "dev", "lan"], nodad].concat());
            }
            pod.ip(&["link", "set", "eth0", "up"]);
            gw.ip(&["link", "set", "lan", "up"]);
            // The pod's default route of each family: via the gateway's address in the
            // first subnet of that family.
            for v6 in [false, true] {
                if let Some((gw_addr, _)) = cluster
                    .subnets
                    .iter()
                    .find(|(gw_addr, _)| gw_addr.contains(':') == v6)
                {
                    let via = gw_addr.split('/').next().expect("gateway address");
                    let family = if v6 { "-6" } else { "-4" };
                    pod.ip(&[family, "route", "add", "default", "via", via]);
                }
            }
            for key in [
                "net.ipv4.ip_forward",
                "net.ipv4.conf.all.rp_filter",
                "net.ipv4.conf.default.rp_filter",
                "net.ipv6.conf.all.forwarding",
            ] {
                gw.sysctl(key, "1");
            }
        }
        gw1.ip(&[
            "link",
            "add",
            "under",
            "type",
            "veth",
            "peer",
            "name",
            "under",
            "netns",
            gw2.name(),
        ]);
        gw1.ip(&["addr", "add", &format!("{UNDERLAY_GW1}/30"), "dev", "under"]);
        gw2.ip(&["addr", "add", &format!("{UNDERLAY_GW2}/30"), "dev", "under"]);
        gw1.ip(&["link", "set", "under", "up"]);
        gw2.ip(&["link", "set", "under", "up"]);
        Self {
            prefix,
            scratch,
            pod1,
            gw1,
            gw2,
            pod2,
        }
    }
}

impl Topology {
    /// Builds namespaces, veth links, addresses, the WireGuard tunnel and the routes of
    /// both plans. Rules are not applied: see [`Topology::apply`].
    pub fn build(
        cluster1: &Cluster,
        cluster2: &Cluster,
        plan1: &GatewayPlan,
        plan2: &GatewayPlan,
    ) -> Self {
        let Network {
            prefix,
            scratch,
            pod1,
            gw1,
            gw2,
            pod2,
        } = Network::build(cluster1, cluster2);

        let wg1 = WireGuard::start(&gw1, &format!("{prefix}a"), WG_PORT, &scratch.path);
        let wg2 = WireGuard::start(&gw2, &format!("{prefix}b"), WG_PORT, &scratch.path);
        let ep = |a: &str| SocketAddr::new(a.parse().expect("addr"), WG_PORT);
        wg1.set_peer(&gw1, &wg2.public_key, ep(UNDERLAY_GW2), &plan1.allowed_ips);
        wg2.set_peer(&gw2, &wg1.public_key, ep(UNDERLAY_GW1), &plan2.allowed_ips);
        for (gw, wg, plan) in [(&gw1, &wg1, plan1), (&gw2, &wg2, plan2)] {
            for route in &plan.routes {
                gw.ip(&["route", "add", route, "dev", &wg.name]);
            }
        }
        let pins1 = PinDir::new(&prefix, "gw1");
        let pins2 = PinDir::new(&prefix, "gw2");
        Self {
            prefix,
            pod1,
            gw1,
            gw2,
            pod2,
            wg1,
            wg2,
            pins1,
            pins2,
            scratch,
        }
    }

    /// The dataplane config of gateway 1 or 2.
    pub fn dataplane_config(&self, gateway: u8) -> DataplaneConfig {
        DataplaneConfig {
            pin_dir: if gateway == 1 {
                self.pins1.path.clone()
            } else {
                self.pins2.path.clone()
            },
            ..DataplaneConfig::default()
        }
    }

    /// The plan's rules with the gateway's tunnel name filled in.
    pub fn rules(&self, gateway: u8, plan: &GatewayPlan) -> Vec<TranslationRule> {
        let wg = if gateway == 1 {
            &self.wg1.name
        } else {
            &self.wg2.name
        };
        plan.rules
            .iter()
            .map(|(direction, field, from, to)| TranslationRule {
                interface: wg.clone(),
                direction: *direction,
                field: *field,
                from: from.parse().expect("rule prefix"),
                to: to.parse().expect("rule prefix"),
            })
            .collect()
    }

    /// The plan's rules and border with the gateway's tunnel name filled in.
    pub fn desired(&self, gateway: u8, plan: &GatewayPlan) -> DesiredDataplane {
        let wg = if gateway == 1 {
            &self.wg1.name
        } else {
            &self.wg2.name
        };
        let nets = |v: &[&str]| v.iter().map(|s| s.parse().expect("prefix")).collect();
        DesiredDataplane {
            rules: self.rules(gateway, plan),
            borders: plan
                .border
                .iter()
                .map(|(sources, destinations)| IngressBorder {
                    interface: wg.clone(),
                    sources: nets(sources),
                    destinations: nets(destinations),
                    mss_clamp: None,
                })
                .collect(),
        }
    }

    /// Applies a plan's rules and border on a gateway through the daemon's dataplane
    /// module, from a thread inside the gateway's namespace.
    pub fn apply(&self, gateway: u8, plan: &GatewayPlan) -> remapd::dataplane::ApplyReport {
        self.apply_with(gateway, plan, remapd::dataplane::AttachMode::Auto)
    }

    /// [`Topology::apply`] with an explicit attachment mechanism.
    pub fn apply_with(
        &self,
        gateway: u8,
        plan: &GatewayPlan,
        attach_mode: remapd::dataplane::AttachMode,
    ) -> remapd::dataplane::ApplyReport {
        let desired = self.desired(gateway, plan);
        let mut config = self.dataplane_config(gateway);
        config.attach_mode = attach_mode;
        let ns = if gateway == 1 { &self.gw1 } else { &self.gw2 };
        ns.in_ns(move || {
            let mut dataplane = Dataplane::open(&config).expect("open dataplane");
            dataplane
                .apply(&desired)
                .expect("apply the desired dataplane")
        })
    }

    /// Opens gateway `gateway`'s dataplane with `config` (another build's programs, say)
    /// and applies a plan, returning what the dataplane said.
    pub fn try_apply_config(
        &self,
        gateway: u8,
        plan: &GatewayPlan,
        config: DataplaneConfig,
    ) -> Result<(remapd::dataplane::ApplyReport, bool), remapd::dataplane::DataplaneError> {
        let desired = self.desired(gateway, plan);
        let ns = if gateway == 1 { &self.gw1 } else { &self.gw2 };
        ns.in_ns(move || {
            let mut dataplane = Dataplane::open(&config)?;
            let upgraded = dataplane.upgraded();
            Ok((dataplane.apply(&desired)?, upgraded))
        })
    }

    /// The dataplane status of a gateway.
    pub fn status(&self, gateway: u8) -> remapd::dataplane::DataplaneStatus {
        let config = self.dataplane_config(gateway);
        let ns = if gateway == 1 { &self.gw1 } else { &self.gw2 };
        ns.in_ns(move || {
            Dataplane::open_existing(&config)
                .expect("open dataplane")
                .status()
                .expect("status")
        })
    }

    /// A path in the scratch directory.
    pub fn scratch_file(&self, name: &str) -> PathBuf {
        self.scratch.path.join(name)
    }
}

/// The seed clusters: both 40.0.0.0/24, pod 40.0.0.1 behind gateway 40.0.0.2.
pub fn seed_cluster() -> Cluster {
    Cluster {
        subnets: vec![("40.0.0.2/24", "40.0.0.1/24")],
    }
}

/// The seed, dual-stack: 40.0.0.0/24 and fd00:40::/64 (inside the pod CIDR
/// fd00:40::/56) on both sides; the gateway is .2 / ::2, the pod .1 / ::1.
pub fn dual_stack_cluster() -> Cluster {
    Cluster {
        subnets: vec![
            ("40.0.0.2/24", "40.0.0.1/24"),
            ("fd00:40::2/64", "fd00:40::1/64"),
        ],
    }
}

/// Split strategy for the seed (cluster 1 sees cluster 2 at 30/24, cluster 2 sees
/// cluster 1 at 60/24): each gateway rewrites only the peer's addresses.
pub fn seed_split() -> (GatewayPlan, GatewayPlan) {
    use AddressField::*;
    use Direction::*;
    let gw1 = GatewayPlan {
        rules: vec![
            (Egress, Destination, "30.0.0.0/24", "40.0.0.0/24"),
            (Ingress, Source, "40.0.0.0/24", "30.0.0.0/24"),
        ],
        routes: vec!["30.0.0.0/24"],
        allowed_ips: vec!["40.0.0.0/24"],
        border: Some((vec!["30.0.0.0/24"], vec!["40.0.0.0/24"])),
    };
    let gw2 = GatewayPlan {
        rules: vec![
            (Ingress, Source, "40.0.0.0/24", "60.0.0.0/24"),
            (Egress, Destination, "60.0.0.0/24", "40.0.0.0/24"),
        ],
        routes: vec!["60.0.0.0/24"],
        allowed_ips: vec!["40.0.0.0/24"],
        border: Some((vec!["60.0.0.0/24"], vec!["40.0.0.0/24"])),
    };
    (gw1, gw2)
}

/// Both-on-2 for the seed: gateway 1 only routes 30/24 into the tunnel; gateway 2 does
/// every rewrite in both directions.
pub fn seed_both_on_2() -> (GatewayPlan, GatewayPlan) {
    use AddressField::*;
    use Direction::*;
    let gw1 = GatewayPlan {
        rules: vec![],
        routes: vec!["30.0.0.0/24"],
        allowed_ips: vec!["30.0.0.0/24"],
        border: Some((vec!["30.0.0.0/24"], vec!["40.0.0.0/24"])),
    };
    let gw2 = GatewayPlan {
        rules: vec![
            (Ingress, Destination, "30.0.0.0/24", "40.0.0.0/24"),
            (Ingress, Source, "40.0.0.0/24", "60.0.0.0/24"),
            (Egress, Source, "40.0.0.0/24", "30.0.0.0/24"),
            (Egress, Destination, "60.0.0.0/24", "40.0.0.0/24"),
        ],
        routes: vec!["60.0.0.0/24"],
        allowed_ips: vec!["40.0.0.0/24"],
        border: Some((vec!["60.0.0.0/24"], vec!["40.0.0.0/24"])),
    };
    (gw1, gw2)
}
