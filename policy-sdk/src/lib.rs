//! Write remapd remapping policies in Rust.
//!
//! A policy is a type implementing [`Policy`]; [`export_policy!`] turns it into the
//! `decide` export of the `remap:policy@0.2.0` component world when the crate is built
//! for `wasm32-unknown-unknown` (and does nothing in native builds, so the same crate is
//! unit-tested with plain `cargo test` through [`testing`]).
//!
//! ```
//! use remapd_policy_sdk::{Decision, DecisionInput, Policy, Strategy, allocate_views};
//!
//! pub struct AlwaysSplit;
//!
//! impl Policy for AlwaysSplit {
//!     fn decide(input: &DecisionInput) -> Result<Decision, String> {
//!         Ok(Decision { strategy: Strategy::Split, mappings: allocate_views(input)? })
//!     }
//! }
//! remapd_policy_sdk::export_policy!(AlwaysSplit);
//! ```
//!
//! Build and upload (see the README): `remapd-policy-build path/to/crate -o policy.wasm`,
//! then `curl -X PUT --data-binary @policy.wasm -H 'content-type: application/wasm' …`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4: 32-bit addresses.
    Ipv4,
    /// IPv6: 128-bit addresses.
    Ipv6,
}

impl Family {
    /// The family of `addr`.
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::Ipv4,
            IpAddr::V6(_) => Self::Ipv6,
        }
    }

    /// Address width in bits: 32 or 128.
    pub fn bits(self) -> u8 {
        match self {
            Self::Ipv4 => 32,
            Self::Ipv6 => 128,
        }
    }

    /// The address of this family whose integer value is `value` (IPv4 keeps the low
    /// 32 bits).
    fn address(self, value: u128) -> IpAddr {
        match self {
            Self::Ipv4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
            Self::Ipv6 => IpAddr::V6(Ipv6Addr::from(value)),
        }
    }
}

/// An IPv4 or IPv6 prefix: the network address (host bits zero) and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length, 0..=32 for IPv4, 0..=128 for IPv6.
    pub prefix_len: u8,
}

impl Cidr {
    /// A prefix; fails when the length exceeds the family's width or host bits are set.
    pub fn new(addr: impl Into<IpAddr>, prefix_len: u8) -> Result<Self, String> {
        let addr = addr.into();
        let bits = Family::of(&addr).bits();
        if prefix_len > bits {
            return Err(format!("prefix length {prefix_len} exceeds {bits}"));
        }
        let c = Self { addr, prefix_len };
        if c.value() & c.host_mask() != 0 {
            return Err(format!("{c} has host bits set"));
        }
        Ok(c)
    }

    /// Parses "a.b.c.d/len" or an IPv6 "addr/len".
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: missing /len"))?;
        let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?}: bad address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| format!("{s:?}: bad prefix length"))?;
        Self::new(addr, len)
    }

    /// Its family.
    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    /// The network address as an integer of the family's width.
    fn value(&self) -> u128 {
        value_of(&self.addr)
    }

    /// The host bits, set, as an integer of the family's width (`!mask`).
    pub fn host_mask(&self) -> u128 {
        let host_bits = self.family().bits().saturating_sub(self.prefix_len);
        1u128
            .checked_shl(u32::from(host_bits))
            .unwrap_or(0)
            .wrapping_sub(1)
    }

    /// Number of addresses (2^(width-len)), saturating at `u128::MAX` for `::/0`.
    pub fn size(&self) -> u128 {
        self.host_mask().saturating_add(1)
    }

    /// Last address.
    pub fn last(&self) -> IpAddr {
        self.family().address(self.value() | self.host_mask())
    }

    /// True if `addr` is inside (never for an address of the other family).
    pub fn contains_addr(&self, addr: &IpAddr) -> bool {
        let network = self.value() & !self.host_mask();
        Family::of(addr) == self.family() && value_of(addr) & !self.host_mask() == network
    }

    /// True if `other` lies entirely inside this prefix.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.prefix_len >= self.prefix_len && self.contains_addr(&other.addr)
    }

    /// True if the two prefixes share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// True if this prefix overlaps any in `set`.
    pub fn overlaps_any(&self, set: &[Cidr]) -> bool {
        set.iter().any(|c| self.overlaps(c))
    }
}

/// An address as an integer of its family's width.
fn value_of(addr: &IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// What a gateway can do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Runs remapd's NAT dataplane.
    pub nat_dataplane: bool,
}

/// A real CIDR and how the other side sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mapping {
    /// The real prefix.
    pub real: Cidr,
    /// The prefix it is seen as.
    pub remapped: Cidr,
}

/// The cluster the deciding gateway belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalCluster {
    /// Name.
    pub name: String,
    /// Pod CIDRs.
    pub pod_cidrs: Vec<Cidr>,
    /// Service CIDRs.
    pub service_cidrs: Vec<Cidr>,
    /// Never to be used for remapped CIDRs.
    pub reserved_cidrs: Vec<Cidr>,
    /// Where remapped CIDRs may come from.
    pub remap_pool: Vec<Cidr>,
    /// Remapped CIDRs other peerings hold.
    pub allocated: Vec<Cidr>,
    /// What this gateway can do.
    pub capabilities: Capabilities,
}

impl LocalCluster {
    /// Every prefix a remapped CIDR must not overlap: pods, services, reserved, allocated.
    pub fn occupied(&self) -> Vec<Cidr> {
        let mut v = self.pod_cidrs.clone();
        v.extend(&self.service_cidrs);
        v.extend(&self.reserved_cidrs);
        v.extend(&self.allocated);
        v
    }
}

/// The peer cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteCluster {
    /// Name.
    pub name: String,
    /// Real pod CIDRs.
    pub pod_cidrs: Vec<Cidr>,
    /// Real service CIDRs.
    pub service_cidrs: Vec<Cidr>,
    /// What its gateway can do.
    pub capabilities: Capabilities,
    /// How it sees our CIDRs, when known.
    pub view_of_local: Option<Vec<Mapping>>,
}

impl RemoteCluster {
    /// Pod then service CIDRs: every remote prefix that needs a local view.
    pub fn cidrs(&self) -> Vec<Cidr> {
        let mut v = self.pod_cidrs.clone();
        v.extend(&self.service_cidrs);
        v
    }
}

/// Everything a policy is given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecisionInput {
    /// This side.
    pub local: LocalCluster,
    /// The peer.
    pub remote: RemoteCluster,
    /// Settings given with the peering.
    pub settings: Vec<(String, String)>,
}

impl DecisionInput {
    /// The value of a setting.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// How the pair translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// No overlap: plain routing.
    None,
    /// Each side translates the peer's addresses.
    Split,
    /// This side does every rewrite.
    BothOnLocal,
    /// The remote side does every rewrite.
    BothOnRemote,
}

/// A policy's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The strategy.
    pub strategy: Strategy,
    /// The local view of every remote CIDR.
    pub mappings: Vec<Mapping>,
}

/// A remapping policy.
pub trait Policy {
    /// Decides how this gateway and the remote remap each other.
    fn decide(input: &DecisionInput) -> Result<Decision, String>;
}

/// Writes a line to remapd's log (in native builds: to the [`testing`] log).
pub fn log(message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::log(message);
    #[cfg(not(target_arch = "wasm32"))]
    testing::record_log(message);
}

/// The first block of `prefix_len` addresses of `family` inside `pool` (in pool order,
/// lowest address first; prefixes of the other family are skipped) that overlaps
/// nothing in `used`. Deterministic: same inputs, same answer.
pub fn allocate(pool: &[Cidr], family: Family, prefix_len: u8, used: &[Cidr]) -> Option<Cidr> {
    if prefix_len > family.bits() {
        return None;
    }
    for range in pool.iter().filter(|r| r.family() == family) {
        if prefix_len < range.prefix_len {
            continue;
        }
        let block_mask = Cidr {
            addr: range.addr,
            prefix_len,
        }
        .host_mask();
        let end = range.value() | range.host_mask();
        let mut addr = range.value() & !range.host_mask();
        loop {
            let candidate = Cidr {
                addr: family.address(addr),
                prefix_len,
            };
            // Skip past whatever blocks the candidate, not one step at a time.
            let Some(last) = used
                .iter()
                .filter(|u| u.overlaps(&candidate))
                .map(|u| u.value() | u.host_mask())
                .max()
            else {
                return Some(candidate);
            };
            // The first aligned block after both the candidate and its last blocker;
            // none when that would leave the range (or the address space).
            match (last.max(addr) | block_mask).checked_add(1) {
                Some(next) if next <= end => addr = next,
                _ => break,
            }
        }
    }
    None
}

/// The local view of every remote CIDR: the real prefix itself when it is free locally,
/// otherwise a block of the same length from the pool. Errors name the CIDR that did not fit.
pub fn allocate_views(input: &DecisionInput) -> Result<Vec<Mapping>, String> {
    let mut used = input.local.occupied();
    let mut out = Vec::new();
    for real in input.remote.cidrs() {
        let remapped = if !real.overlaps_any(&used) {
            real
        } else {
            allocate(
                &input.local.remap_pool,
                real.family(),
                real.prefix_len,
                &used,
            )
            .ok_or_else(|| {
                format!(
                    "no free /{} left in the remap pool for remote CIDR {real}",
                    real.prefix_len
                )
            })?
        };
        used.push(remapped);
        out.push(Mapping { real, remapped });
    }
    Ok(out)
}

/// True when no remote CIDR overlaps anything the local cluster occupies.
pub fn disjoint(input: &DecisionInput) -> bool {
    let occupied = input.local.occupied();
    input
        .remote
        .cidrs()
        .iter()
        .all(|c| !c.overlaps_any(&occupied))
}

/// Native test harness: build inputs tersely and run a policy without wasm.
pub mod testing {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        static LOG: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn record_log(message: &str) {
        LOG.with(|l| {
            let mut log = l.borrow_mut();
            // Bounded, like the host's log: a policy in a loop must not eat the test's memory.
            if log.len() < 10_000 {
                log.push(message.to_owned());
            }
        });
    }

    /// Runs `P::decide` and returns its result with the lines it logged.
    pub fn run<P: Policy>(input: &DecisionInput) -> (Result<Decision, String>, Vec<String>) {
        LOG.with(|l| l.borrow_mut().clear());
        let result = P::decide(input);
        let logs = LOG.with(|l| l.borrow_mut().drain(..).collect());
        (result, logs)
    }

    /// Parses a list of "a.b.c.d/len" or IPv6 "addr/len"; panics on a typo (it is test
    /// code).
    pub fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter()
            .map(|s| Cidr::parse(s).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    /// Parses one CIDR.
    pub fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    /// An input with the given local pods and pool, remote pods, and NAT on both sides.
    pub fn input(local_pods: &[&str], pool: &[&str], remote_pods: &[&str]) -> DecisionInput {
        DecisionInput {
            local: LocalCluster {
                name: "cluster-1".into(),
                pod_cidrs: cidrs(local_pods),
                remap_pool: cidrs(pool),
                capabilities: Capabilities {
                    nat_dataplane: true,
                },
                ..LocalCluster::default()
            },
            remote: RemoteCluster {
                name: "cluster-2".into(),
                pod_cidrs: cidrs(remote_pods),
                capabilities: Capabilities {
                    nat_dataplane: true,
                },
                ..RemoteCluster::default()
            },
            settings: Vec::new(),
        }
    }
}

/// Glue between the component ABI and [`Policy`]; used by [`export_policy!`].
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "policy",
        pub_export_macro: true,
        export_macro_name: "__remapd_export_policy_world",
        default_bindings_module: "remapd_policy_sdk::bindings",
    });
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __wasm {
    use super::bindings::remap::policy::types as wit;
    use super::*;

    fn cidr_in(c: wit::Cidr) -> Cidr {
        let addr = match c.addr {
            wit::IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            wit::IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
            }
        };
        Cidr {
            addr,
            prefix_len: c.prefix_len,
        }
    }

    fn cidrs_in(v: Vec<wit::Cidr>) -> Vec<Cidr> {
        v.into_iter().map(cidr_in).collect()
    }

    fn mapping_in(m: wit::Mapping) -> Mapping {
        Mapping {
            real: cidr_in(m.real),
            remapped: cidr_in(m.remapped),
        }
    }

    fn cidr_out(c: Cidr) -> wit::Cidr {
        let addr = match c.addr {
            IpAddr::V4(a) => {
                let [a, b, c, d] = a.octets();
                wit::IpAddress::Ipv4((a, b, c, d))
            }
            IpAddr::V6(a) => {
                let [a, b, c, d, e, f, g, h] = a.segments();
                wit::IpAddress::Ipv6((a, b, c, d, e, f, g, h))
            }
        };
        wit::Cidr {
            addr,
            prefix_len: c.prefix_len,
        }
    }

    /// Converts, installs a panic hook that logs the message (wasm panics lose it
    /// otherwise), and calls the policy.
    pub fn decide<P: Policy>(input: wit::DecisionInput) -> Result<wit::Decision, String> {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                super::bindings::log(&format!("policy panicked: {info}"));
            }))
        });
        let input = DecisionInput {
            local: LocalCluster {
                name: input.local.name,
                pod_cidrs: cidrs_in(input.local.pod_cidrs),
                service_cidrs: cidrs_in(input.local.service_cidrs),
                reserved_cidrs: cidrs_in(input.local.reserved_cidrs),
                remap_pool: cidrs_in(input.local.remap_pool),
                allocated: cidrs_in(input.local.allocated),
                capabilities: Capabilities {
                    nat_dataplane: input.local.capabilities.nat_dataplane,
                },
            },
            remote: RemoteCluster {
                name: input.remote.name,
                pod_cidrs: cidrs_in(input.remote.pod_cidrs),
                service_cidrs: cidrs_in(input.remote.service_cidrs),
                capabilities: Capabilities {
                    nat_dataplane: input.remote.capabilities.nat_dataplane,
                },
                view_of_local: input
                    .remote
                    .view_of_local
                    .map(|v| v.into_iter().map(mapping_in).collect()),
            },
            settings: input.settings,
        };
        let decision = P::decide(&input)?;
        Ok(wit::Decision {
            strategy: match decision.strategy {
                Strategy::None => wit::Strategy::None,
                Strategy::Split => wit::Strategy::Split,
                Strategy::BothOnLocal => wit::Strategy::BothOnLocal,
                Strategy::BothOnRemote => wit::Strategy::BothOnRemote,
            },
            mappings: decision
                .mappings
                .into_iter()
                .map(|m| wit::Mapping {
                    real: cidr_out(m.real),
                    remapped: cidr_out(m.remapped),
                })
                .collect(),
        })
    }
}

/// Exports a [`Policy`] as the component's `decide` (wasm32 builds only).
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __RemapdPolicyExport;
            impl $crate::bindings::Guest for __RemapdPolicyExport {
                fn decide(
                    input: $crate::bindings::remap::policy::types::DecisionInput,
                ) -> ::core::result::Result<
                    $crate::bindings::remap::policy::types::Decision,
                    ::std::string::String,
                > {
                    $crate::__wasm::decide::<$policy>(input)
                }
            }
            $crate::bindings::__remapd_export_policy_world!(__RemapdPolicyExport with_types_in $crate::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::testing::{cidr, cidrs, input};
    use super::*;

    #[test]
    fn parse_and_display() {
        assert_eq!(cidr("10.1.0.0/16").to_string(), "10.1.0.0/16");
        assert!(
            Cidr::parse("10.1.0.1/16")
                .unwrap_err()
                .contains("host bits")
        );
        assert!(Cidr::parse("10.1.0.0/33").is_err());
        assert!(Cidr::parse("10.1.0/16").is_err());
        assert_eq!(cidr("0.0.0.0/0").size(), 1 << 32);
        assert_eq!(
            cidr("10.1.0.0/16").last(),
            "10.1.255.255".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn overlap() {
        assert!(cidr("10.0.0.0/8").overlaps(&cidr("10.1.0.0/16")));
        assert!(cidr("10.1.0.0/16").overlaps(&cidr("10.0.0.0/8")));
        assert!(!cidr("10.1.0.0/16").overlaps(&cidr("10.2.0.0/16")));
        assert!(cidr("10.1.0.0/16").contains(&cidr("10.1.7.0/24")));
    }

    #[test]
    fn allocation_is_deterministic_aligned_and_skips_used() {
        use Family::Ipv4;
        let pool = cidrs(&["100.64.0.0/16"]);
        let used = cidrs(&["100.64.0.0/24", "100.64.1.0/25"]);
        assert_eq!(
            allocate(&pool, Ipv4, 24, &used),
            Some(cidr("100.64.2.0/24"))
        );
        assert_eq!(
            allocate(&pool, Ipv4, 25, &used),
            Some(cidr("100.64.1.128/25"))
        );
        assert_eq!(allocate(&pool, Ipv4, 16, &used), None);
        assert_eq!(allocate(&pool, Ipv4, 24, &cidrs(&["100.64.0.0/16"])), None);
        // A prefix wider than the pool does not fit.
        assert_eq!(allocate(&pool, Ipv4, 8, &[]), None);
        // Pool order is preference order.
        let two = cidrs(&["100.65.0.0/24", "100.64.0.0/16"]);
        assert_eq!(allocate(&two, Ipv4, 24, &[]), Some(cidr("100.65.0.0/24")));
        // The last block of the address space, and nothing past it.
        let top = cidrs(&["255.255.255.0/24"]);
        assert_eq!(
            allocate(&top, Ipv4, 25, &cidrs(&["255.255.255.0/25"])),
            Some(cidr("255.255.255.128/25"))
        );
        assert_eq!(allocate(&top, Ipv4, 25, &top), None);
    }

    #[test]
    fn ipv6_prefixes_parse_contain_and_allocate_like_ipv4() {
        use Family::{Ipv4, Ipv6};
        assert_eq!(cidr("fd00:30::/48").to_string(), "fd00:30::/48");
        assert!(
            Cidr::parse("fd00:30::1/48")
                .unwrap_err()
                .contains("host bits")
        );
        assert!(Cidr::parse("fd00::/129").is_err());
        assert_eq!(cidr("::/0").size(), u128::MAX);
        assert_eq!(cidr("fd00::/120").size(), 256);
        assert_eq!(
            cidr("fd00::/120").last(),
            "fd00::ff".parse::<IpAddr>().unwrap()
        );
        assert!(cidr("fd00::/8").contains(&cidr("fd00:40::/56")));
        // Families never overlap, not even ::/0 and 0.0.0.0/0.
        assert!(!cidr("::/0").overlaps(&cidr("0.0.0.0/0")));
        assert!(!cidr("::/0").contains_addr(&"10.0.0.1".parse().unwrap()));

        let pool = cidrs(&["10.0.0.0/8", "fd00:30::/48"]);
        let used = cidrs(&["fd00:30::/56", "fd00:30:0:100::/57", "10.0.0.0/16"]);
        assert_eq!(
            allocate(&pool, Ipv6, 56, &used),
            Some(cidr("fd00:30:0:200::/56"))
        );
        assert_eq!(
            allocate(&pool, Ipv6, 57, &used),
            Some(cidr("fd00:30:0:180::/57"))
        );
        assert_eq!(allocate(&pool, Ipv4, 16, &used), Some(cidr("10.1.0.0/16")));
        assert_eq!(allocate(&pool, Ipv6, 47, &[]), None, "wider than the pool");
        assert_eq!(allocate(&pool, Ipv6, 129, &[]), None);
        // The top of the IPv6 space: no overflow, no wrap.
        let top = cidrs(&["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0/124"]);
        assert_eq!(allocate(&top, Ipv6, 124, &top), None);
        assert_eq!(
            allocate(
                &top,
                Ipv6,
                125,
                &cidrs(&["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0/125"])
            ),
            Some(cidr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff8/125"))
        );
    }

    #[test]
    fn dual_stack_views_come_from_the_pool_of_their_family() {
        let i = input(
            &["40.0.0.0/24", "fd00:40::/56"],
            &["100.64.0.0/16", "fd00:30::/48"],
            &["40.0.0.0/24", "fd00:40::/56", "fd00:50::/56"],
        );
        let views = allocate_views(&i).unwrap();
        let got: Vec<String> = views.iter().map(|m| m.remapped.to_string()).collect();
        assert_eq!(got, ["100.64.0.0/24", "fd00:30::/56", "fd00:50::/56"]);
        let v4_pool_only = input(&["fd00:40::/56"], &["100.64.0.0/16"], &["fd00:40::/56"]);
        let err = allocate_views(&v4_pool_only).unwrap_err();
        assert!(
            err.contains("no free /56") && err.contains("fd00:40::/56"),
            "{err}"
        );
    }

    #[test]
    fn views_prefer_the_real_prefix_when_free() {
        let i = input(
            &["40.0.0.0/24"],
            &["100.64.0.0/16"],
            &["40.0.0.0/24", "50.0.0.0/24"],
        );
        let views = allocate_views(&i).unwrap();
        assert_eq!(
            views[0].remapped,
            cidr("100.64.0.0/24"),
            "overlapping: from the pool"
        );
        assert_eq!(
            views[1].remapped,
            cidr("50.0.0.0/24"),
            "free: seen as itself"
        );
        let full = input(
            &["40.0.0.0/24"],
            &["100.64.0.0/24"],
            &["40.0.0.0/24", "40.0.0.0/25"],
        );
        let err = allocate_views(&full).unwrap_err();
        assert!(err.contains("40.0.0.0/25"), "{err}");
    }
}
