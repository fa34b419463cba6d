//! Write remapd remapping policies in Rust.
//!
//! A policy is a type implementing [`Policy`]; [`export_policy!`] turns it into the
//! `decide` export of the `remap:policy@0.1.0` component world when the crate is built
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

/// An IPv4 prefix. `addr` is the host-order network address (host bits zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// Network address, host order (10.1.0.0 is `0x0a01_0000`).
    pub addr: u32,
    /// Prefix length, 0..=32.
    pub prefix_len: u8,
}

impl Cidr {
    /// A prefix; fails when the length exceeds 32 or host bits are set.
    pub fn new(addr: u32, prefix_len: u8) -> Result<Self, String> {
        if prefix_len > 32 {
            return Err(format!("prefix length {prefix_len} exceeds 32"));
        }
        let c = Self { addr, prefix_len };
        if addr & !c.mask() != 0 {
            return Err(format!("{c} has host bits set"));
        }
        Ok(c)
    }

    /// Parses "a.b.c.d/len".
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: missing /len"))?;
        let octets: Vec<u8> = addr
            .split('.')
            .map(|o| o.parse::<u8>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{s:?}: bad address"))?;
        let [a, b, c, d] = octets[..] else {
            return Err(format!("{s:?}: bad address"));
        };
        let len: u8 = len
            .parse()
            .map_err(|_| format!("{s:?}: bad prefix length"))?;
        Self::new(u32::from_be_bytes([a, b, c, d]), len)
    }

    /// The netmask as a host-order integer.
    pub fn mask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len.min(32)))
        }
    }

    /// Number of addresses (2^(32-len)), as u64 so /0 fits.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix_len.min(32)))
    }

    /// Last address, host order.
    pub fn last(&self) -> u32 {
        self.addr | !self.mask()
    }

    /// True if `addr` is inside.
    pub fn contains_addr(&self, addr: u32) -> bool {
        addr & self.mask() == self.addr
    }

    /// True if `other` lies entirely inside this prefix.
    pub fn contains(&self, other: &Cidr) -> bool {
        other.prefix_len >= self.prefix_len && self.contains_addr(other.addr)
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

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.addr.to_be_bytes();
        write!(f, "{a}.{b}.{c}.{d}/{}", self.prefix_len)
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

/// The first block of `prefix_len` inside `pool` (in pool order, lowest address first)
/// that overlaps nothing in `used`. Deterministic: same inputs, same answer.
pub fn allocate(pool: &[Cidr], prefix_len: u8, used: &[Cidr]) -> Option<Cidr> {
    for range in pool {
        if prefix_len < range.prefix_len || prefix_len > 32 {
            continue;
        }
        let step = 1u64 << (32 - u32::from(prefix_len));
        let mut addr = u64::from(range.addr);
        let end = u64::from(range.addr) + range.size();
        while addr < end {
            let candidate = Cidr {
                addr: addr as u32,
                prefix_len,
            };
            // Skip past whatever blocks the candidate, not one step at a time.
            match used
                .iter()
                .filter(|u| u.overlaps(&candidate))
                .map(|u| u.last())
                .max()
            {
                None => return Some(candidate),
                Some(last) => {
                    let next = (u64::from(last) + 1).div_ceil(step) * step;
                    addr = next.max(addr + step);
                }
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
            allocate(&input.local.remap_pool, real.prefix_len, &used).ok_or_else(|| {
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

    /// Parses a list of "a.b.c.d/len"; panics on a typo (it is test code).
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
        Cidr {
            addr: c.addr,
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
        wit::Cidr {
            addr: c.addr,
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
        let pool = cidrs(&["100.64.0.0/16"]);
        let used = cidrs(&["100.64.0.0/24", "100.64.1.0/25"]);
        assert_eq!(allocate(&pool, 24, &used), Some(cidr("100.64.2.0/24")));
        assert_eq!(allocate(&pool, 25, &used), Some(cidr("100.64.1.128/25")));
        assert_eq!(allocate(&pool, 16, &used), None);
        assert_eq!(allocate(&pool, 24, &cidrs(&["100.64.0.0/16"])), None);
        // A prefix wider than the pool does not fit.
        assert_eq!(allocate(&pool, 8, &[]), None);
        // Pool order is preference order.
        let two = cidrs(&["100.65.0.0/24", "100.64.0.0/16"]);
        assert_eq!(allocate(&two, 24, &[]), Some(cidr("100.65.0.0/24")));
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
