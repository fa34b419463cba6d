//! Per-hook configuration: the pure logic that turns the desired rules and ingress
//! borders into the [`HookConfig`] each TC hook reads, and the allow-list trie entries
//! for borders too large to be inline.
//!
//! Nothing here touches the kernel, so all of it is unit-tested without root.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use remapd_common::{
    FAMILY_IPV6, HOOK_ALLOW_DST_TRIE, HOOK_ALLOW_SRC_TRIE, HOOK_DST_RULES, HOOK_DST_RULES_ALLOWED,
    HOOK_DST_TRIE, HOOK_ENFORCE, HOOK_PROBES, HOOK_RULES6, HOOK_SRC_RULES, HOOK_SRC_RULES_ALLOWED,
    HOOK_SRC_TRIE, HookConfig, INLINE_ALLOW, INLINE_RULES, InlineRule4, Prefix4, RuleValue,
    hook_probe,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::rules::{AddressField, Direction, MapKey, RuleError};

/// What may cross a tunnel's ingress into this cluster, checked after translation:
/// a packet passes only if its source is in `sources` and its destination in
/// `destinations`. Everything else is dropped and counted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngressBorder {
    /// The tunnel interface.
    pub interface: String,
    /// Sources the peer may use, as they look after ingress translation (both
    /// families).
    #[schema(value_type = Vec<String>)]
    pub sources: Vec<IpNet>,
    /// Destinations this cluster exported, as they look after ingress translation.
    #[schema(value_type = Vec<String>)]
    pub destinations: Vec<IpNet>,
    /// Lower the MSS option of TCP SYNs crossing this tunnel, both ways, to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mss_clamp: Option<u16>,
}

/// An ingress border resolved to its interface index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedBorder {
    /// Interface index.
    pub ifindex: u32,
    /// Allowed sources.
    pub sources: Vec<Ipv4Net>,
    /// Allowed destinations.
    pub destinations: Vec<Ipv4Net>,
    /// Allowed IPv6 sources (always in the allow trie).
    pub sources6: Vec<Ipv6Net>,
    /// Allowed IPv6 destinations.
    pub destinations6: Vec<Ipv6Net>,
    /// MSS clamp for both directions of the interface.
    pub mss_clamp: Option<u16>,
}

/// Every hook's configuration and the allow-list entries that live in the trie.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookPlan {
    /// Configuration by (ifindex, direction).
    pub configs: BTreeMap<(u32, Direction), HookConfig>,
    /// Allow-list trie keys (borders with more prefixes than fit inline).
    pub allow: BTreeSet<MapKey>,
}

impl ResolvedBorder {
    /// `border` on interface `ifindex`, its prefixes split by family.
    pub fn new(ifindex: u32, border: &IngressBorder) -> Self {
        let v4 = |list: &[IpNet]| -> Vec<Ipv4Net> {
            list.iter()
                .filter_map(|n| match n {
                    IpNet::V4(n) => Some(*n),
                    IpNet::V6(_) => None,
                })
                .collect()
        };
        let v6 = |list: &[IpNet]| -> Vec<Ipv6Net> {
            list.iter()
                .filter_map(|n| match n {
                    IpNet::V6(n) => Some(*n),
                    IpNet::V4(_) => None,
                })
                .collect()
        };
        Self {
            ifindex,
            sources: v4(&border.sources),
            destinations: v4(&border.destinations),
            sources6: v6(&border.sources),
            destinations6: v6(&border.destinations),
            mss_clamp: border.mss_clamp,
        }
    }
}

fn prefix4(net: Ipv4Net) -> Prefix4 {
    Prefix4 {
        addr: u32::from(net.network()),
        mask: u32::from(net.netmask()),
    }
}

/// Builds every hook's configuration from the final rule entries (with their counter
/// slots) and the resolved borders.
pub fn plan(
    rules: &BTreeMap<MapKey, RuleValue>,
    borders: &[ResolvedBorder],
) -> Result<HookPlan, RuleError> {
    let mut out = HookPlan::default();
    // Rules per hook and field, longest prefix first.
    let mut by_hook: BTreeMap<(u32, Direction), [Vec<InlineRule4>; 2]> = BTreeMap::new();
    for (key, value) in rules {
        // IPv6 rules are looked up in the trie only: the hook just says it has some.
        if key.data.family == FAMILY_IPV6
            && let Some(direction) = Direction::from_wire(key.data.direction)
        {
            let ifindex = key.data.ifindex;
            out.configs
                .entry((ifindex, direction))
                .or_insert_with(|| HookConfig {
                    ifindex,
                    direction: u32::from(direction.wire()),
                    ..HookConfig::default()
                })
                .flags |= HOOK_RULES6;
            continue;
        }
        // A key that does not decode can never match a packet: it has no hook to describe.
        let (Some(from), Some(direction), Some(field)) = (
            key.ipv4_prefix(),
            Direction::from_wire(key.data.direction),
            AddressField::from_wire(key.data.field),
        ) else {
            continue;
        };
        let [a, b, c, d, ..] = value.to_addr;
        let rule = InlineRule4 {
            from: u32::from(from.network()),
            mask: u32::from(from.netmask()),
            to: u32::from_be_bytes([a, b, c, d]),
            rule_id: value.rule_id,
        };
        let lists = by_hook.entry((key.data.ifindex, direction)).or_default();
        lists[usize::from(field == AddressField::Destination)].push(rule);
    }
    for ((ifindex, direction), lists) in by_hook {
        let config = out
            .configs
            .entry((ifindex, direction))
            .or_insert_with(|| HookConfig {
                ifindex,
                direction: u32::from(direction.wire()),
                ..HookConfig::default()
            });
        let [mut src, mut dst] = lists;
        for (list, has, trie) in [
            (&mut src, HOOK_SRC_RULES, HOOK_SRC_TRIE),
            (&mut dst, HOOK_DST_RULES, HOOK_DST_TRIE),
        ] {
            if list.is_empty() {
                continue;
            }
            config.flags |= has;
            if list.len() > INLINE_RULES {
                config.flags |= trie;
                list.clear();
            }
            // Longest prefix first: the program takes the first match.
            list.sort_by_key(|r| std::cmp::Reverse(r.mask.count_ones()));
        }
        config.n_src_rules = src.len() as u32;
        config.n_dst_rules = dst.len() as u32;
        config.src_rules[..src.len()].copy_from_slice(&src);
        config.dst_rules[..dst.len()].copy_from_slice(&dst);
    }
    for border in borders {
        let config = out
            .configs
            .entry((border.ifindex, Direction::Ingress))
            .or_insert_with(|| HookConfig {
                ifindex: border.ifindex,
                direction: u32::from(Direction::Ingress.wire()),
                ..HookConfig::default()
            });
        config.flags |= HOOK_ENFORCE;
        config.mss_clamp = border.mss_clamp.map_or(0, u32::from);
        for (prefixes, field, trie) in [
            (&border.sources, AddressField::Source, HOOK_ALLOW_SRC_TRIE),
            (
                &border.destinations,
                AddressField::Destination,
                HOOK_ALLOW_DST_TRIE,
            ),
        ] {
            let prefixes = Ipv4Net::aggregate(prefixes);
            // Every allow-list is in the trie, where the program checks ICMP error
            // quotes; short ones are also inline, for the per-packet check.
            out.allow.extend(
                prefixes
                    .iter()
                    .map(|p| MapKey::ipv4(border.ifindex, Direction::Ingress, field, *p)),
            );
            if prefixes.len() > INLINE_ALLOW {
                config.flags |= trie;
                continue;
            }
            let (list, n) = if field == AddressField::Source {
                (&mut config.allow_src, &mut config.n_allow_src)
            } else {
                (&mut config.allow_dst, &mut config.n_allow_dst)
            };
            for (slot, p) in list.iter_mut().zip(&prefixes) {
                *slot = prefix4(*p);
            }
            *n = prefixes.len() as u32;
        }
        for (prefixes, field) in [
            (&border.sources6, AddressField::Source),
            (&border.destinations6, AddressField::Destination),
        ] {
            out.allow.extend(
                Ipv6Net::aggregate(prefixes)
                    .iter()
                    .map(|p| MapKey::ipv6(border.ifindex, Direction::Ingress, field, *p)),
            );
        }
        if let Some(mss) = border.mss_clamp {
            // Outgoing SYNs too: the egress hook exists for the clamp alone if it has
            // no rules (a peering that only routes).
            out.configs
                .entry((border.ifindex, Direction::Egress))
                .or_insert_with(|| HookConfig {
                    ifindex: border.ifindex,
                    direction: u32::from(Direction::Egress.wire()),
                    ..HookConfig::default()
                })
                .mss_clamp = u32::from(mss);
        }
    }
    for config in out.configs.values_mut() {
        mark_rules_allowed(config);
    }
    Ok(out)
}

/// Sets [`HOOK_SRC_RULES_ALLOWED`] / [`HOOK_DST_RULES_ALLOWED`] on a border whose inline
/// rules of that field all translate into its inline allow-list for the field, so the
/// program can skip the allow-list scan for an address a rule translated. Both lists
/// must be inline (the flag speaks of them) and the rules non-empty.
fn mark_rules_allowed(config: &mut HookConfig) {
    if config.flags & HOOK_ENFORCE == 0 {
        return;
    }
    let within = |rule: &InlineRule4, allow: &[Prefix4]| {
        allow
            .iter()
            .any(|p| rule.mask.count_ones() >= p.mask.count_ones() && rule.to & p.mask == p.addr)
    };
    let fields = [
        (
            &config.src_rules[..config.n_src_rules as usize],
            &config.allow_src[..config.n_allow_src as usize],
            HOOK_SRC_TRIE | HOOK_ALLOW_SRC_TRIE,
            HOOK_SRC_RULES_ALLOWED,
        ),
        (
            &config.dst_rules[..config.n_dst_rules as usize],
            &config.allow_dst[..config.n_allow_dst as usize],
            HOOK_DST_TRIE | HOOK_ALLOW_DST_TRIE,
            HOOK_DST_RULES_ALLOWED,
        ),
    ];
    let mut flags = 0;
    for (rules, allow, tries, allowed) in fields {
        if config.flags & tries == 0 && !rules.is_empty() && rules.iter().all(|r| within(r, allow))
        {
            flags |= allowed;
        }
    }
    config.flags |= flags;
}

/// The slot of every hook in `wanted`. A hook keeps the slot it holds now (`live`, when
/// that is one of its probe slots), so no configuration a packet may be reading ever
/// moves; a new hook takes the first of its [`HOOK_PROBES`] slots that no other hook
/// keeps or takes. Fails, before anything is written, when all of a hook's slots are
/// taken (five hooks whose interface indexes fall on the same few slots).
pub fn assign_slots(
    wanted: &BTreeSet<(u32, Direction)>,
    live: &BTreeMap<(u32, Direction), u32>,
) -> Result<BTreeMap<(u32, Direction), u32>, RuleError> {
    let probes = |(ifindex, direction): (u32, Direction)| {
        (0..HOOK_PROBES).map(move |p| hook_probe(ifindex, direction.wire(), p))
    };
    let mut out = BTreeMap::new();
    let mut taken: BTreeMap<u32, (u32, Direction)> = BTreeMap::new();
    for &hook in wanted {
        if let Some(&slot) = live.get(&hook)
            && probes(hook).any(|p| p == slot)
            && !taken.contains_key(&slot)
        {
            out.insert(hook, slot);
            taken.insert(slot, hook);
        }
    }
    for &hook in wanted {
        if out.contains_key(&hook) {
            continue;
        }
        let Some(slot) = probes(hook).find(|s| !taken.contains_key(s)) else {
            let (ifindex, direction) = hook;
            let holders: Vec<String> = probes(hook)
                .filter_map(|s| taken.get(&s))
                .map(|(i, d)| format!("ifindex {i} {d}"))
                .collect();
            return Err(RuleError::HookSlotCollision {
                first: format!("ifindex {ifindex} {direction}"),
                second: holders.join(", "),
            });
        };
        out.insert(hook, slot);
        taken.insert(slot, hook);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Target;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn entries(
        rules: &[(u32, Direction, AddressField, &str, &str)],
    ) -> BTreeMap<MapKey, RuleValue> {
        rules
            .iter()
            .enumerate()
            .map(|(i, (ifindex, dir, field, from, to))| {
                (
                    MapKey::ipv4(*ifindex, *dir, *field, n(from)),
                    Target { to: n(to).into() }.value(i as u32),
                )
            })
            .collect()
    }

    #[test]
    fn inline_rules_are_sorted_longest_prefix_first() {
        use AddressField::*;
        use Direction::*;
        let rules = entries(&[
            (3, Egress, Destination, "172.20.0.0/16", "10.1.0.0/16"),
            (3, Egress, Destination, "172.20.7.0/24", "10.9.9.0/24"),
            (3, Ingress, Source, "10.1.0.0/16", "172.20.0.0/16"),
        ]);
        let plan = plan(&rules, &[]).unwrap();
        let egress = &plan.configs[&(3, Egress)];
        assert_eq!(egress.ifindex, 3);
        assert_eq!(egress.flags, HOOK_DST_RULES);
        assert_eq!(egress.n_dst_rules, 2);
        assert_eq!(egress.dst_rules[0].mask, 0xffff_ff00);
        assert_eq!(
            egress.dst_rules[0].to,
            u32::from(n("10.9.9.0/24").network())
        );
        assert_eq!(egress.dst_rules[1].mask, 0xffff_0000);
        let ingress = &plan.configs[&(3, Ingress)];
        assert_eq!(ingress.flags, HOOK_SRC_RULES, "no border: not enforcing");
        assert_eq!(ingress.n_src_rules, 1);
        assert!(plan.allow.is_empty());
    }

    #[test]
    fn many_rules_go_to_the_trie() {
        use AddressField::*;
        use Direction::*;
        let rules: Vec<(u32, Direction, AddressField, String, String)> = (0..=INLINE_RULES as u32)
            .map(|i| {
                (
                    5,
                    Egress,
                    Destination,
                    format!("30.0.{i}.0/24"),
                    format!("40.0.{i}.0/24"),
                )
            })
            .collect();
        let refs: Vec<_> = rules
            .iter()
            .map(|(a, b, c, d, e)| (*a, *b, *c, d.as_str(), e.as_str()))
            .collect();
        let plan = plan(&entries(&refs), &[]).unwrap();
        let config = &plan.configs[&(5, Egress)];
        assert_eq!(config.flags, HOOK_DST_RULES | HOOK_DST_TRIE);
        assert_eq!(config.n_dst_rules, 0);
    }

    #[test]
    fn a_border_enforces_and_aggregates_its_lists() {
        let border = ResolvedBorder {
            ifindex: 7,
            sources: vec![n("30.0.0.0/25"), n("30.0.0.128/25")],
            destinations: vec![n("40.0.0.0/24"), n("10.96.0.0/12")],
            sources6: vec![],
            destinations6: vec![],
            mss_clamp: None,
        };
        let plan = plan(&BTreeMap::new(), &[border]).unwrap();
        let config = &plan.configs[&(7, Direction::Ingress)];
        assert_eq!(config.flags, HOOK_ENFORCE);
        assert_eq!(config.n_allow_src, 1, "two halves aggregate into one /24");
        assert_eq!(config.allow_src[0], prefix4(n("30.0.0.0/24")));
        assert_eq!(config.n_allow_dst, 2);
        assert!(!plan.configs.contains_key(&(7, Direction::Egress)));
        // The trie holds them too (where ICMP error quotes are checked).
        assert_eq!(plan.allow.len(), 3);
    }

    #[test]
    fn ipv6_rules_flag_their_hook_and_ipv6_allow_lists_go_to_the_trie() {
        let v6 = |s: &str| -> Ipv6Net { s.parse().unwrap() };
        let mut rules = BTreeMap::new();
        rules.insert(
            MapKey::ipv6(
                9,
                Direction::Egress,
                AddressField::Destination,
                v6("fd00:30::/56"),
            ),
            crate::rules::Target {
                to: n("0.0.0.0/0").into(),
            }
            .value(3),
        );
        let border = ResolvedBorder {
            ifindex: 9,
            sources: vec![],
            destinations: vec![],
            sources6: vec![v6("fd00:30::/57"), v6("fd00:30:0:80::/57")],
            destinations6: vec![v6("fd00:40::/56")],
            mss_clamp: None,
        };
        let plan = plan(&rules, &[border]).unwrap();
        assert_eq!(plan.configs[&(9, Direction::Egress)].flags, HOOK_RULES6);
        assert_eq!(
            plan.configs[&(9, Direction::Egress)].n_dst_rules,
            0,
            "never inline"
        );
        assert_eq!(plan.configs[&(9, Direction::Ingress)].flags, HOOK_ENFORCE);
        let want = BTreeSet::from([
            MapKey::ipv6(
                9,
                Direction::Ingress,
                AddressField::Source,
                v6("fd00:30::/56"),
            ),
            MapKey::ipv6(
                9,
                Direction::Ingress,
                AddressField::Destination,
                v6("fd00:40::/56"),
            ),
        ]);
        assert_eq!(plan.allow, want, "the two halves aggregate");
    }

    #[test]
    fn a_border_marks_the_fields_whose_rules_all_translate_into_its_allow_list() {
        use AddressField::*;
        use Direction::*;
        let border = |sources: &[&str], destinations: &[&str]| ResolvedBorder {
            ifindex: 7,
            sources: sources.iter().map(|s| n(s)).collect(),
            destinations: destinations.iter().map(|s| n(s)).collect(),
            sources6: vec![],
            destinations6: vec![],
            mss_clamp: None,
        };
        let rules = entries(&[
            (7, Ingress, Source, "40.0.0.0/24", "30.0.0.0/24"),
            (7, Ingress, Source, "40.0.1.0/25", "30.0.1.0/25"),
            (7, Ingress, Destination, "60.0.0.0/24", "40.0.0.0/24"),
            // Not a border hook: never marked.
            (7, Egress, Destination, "30.0.0.0/24", "40.0.0.0/24"),
        ]);
        let flags = |b: ResolvedBorder| {
            let plan = plan(&rules, &[b]).unwrap();
            (
                plan.configs[&(7, Ingress)].flags
                    & (HOOK_SRC_RULES_ALLOWED | HOOK_DST_RULES_ALLOWED),
                plan.configs[&(7, Egress)].flags
                    & (HOOK_SRC_RULES_ALLOWED | HOOK_DST_RULES_ALLOWED),
            )
        };
        // Every target inside (one list prefix holds both source rules' targets).
        assert_eq!(
            flags(border(&["30.0.0.0/16"], &["40.0.0.0/24"])),
            (HOOK_SRC_RULES_ALLOWED | HOOK_DST_RULES_ALLOWED, 0)
        );
        // One source target only half inside, one destination target in a longer
        // allowed prefix: neither field marked, the program scans both.
        assert_eq!(
            flags(border(&["30.0.0.0/24", "30.0.1.0/26"], &["40.0.0.0/25"])),
            (0, 0)
        );
        // A target outside every allowed prefix.
        assert_eq!(
            flags(border(&["30.0.0.0/24", "30.0.1.0/24"], &["10.0.0.0/8"])),
            (HOOK_SRC_RULES_ALLOWED, 0)
        );
        // An allow-list in the trie: the flag speaks of inline lists only.
        let many: Vec<String> = (0..20).map(|i| format!("30.0.{}.0/24", i * 2)).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            flags(border(&many, &["40.0.0.0/24"])),
            (HOOK_DST_RULES_ALLOWED, 0)
        );
    }

    #[test]
    fn an_mss_clamp_configures_both_directions_of_the_tunnel() {
        let border = ResolvedBorder {
            ifindex: 7,
            sources: vec![n("30.0.0.0/24")],
            destinations: vec![n("40.0.0.0/24")],
            sources6: vec![],
            destinations6: vec![],
            mss_clamp: Some(1360),
        };
        let plan = plan(&BTreeMap::new(), &[border]).unwrap();
        assert_eq!(plan.configs[&(7, Direction::Ingress)].mss_clamp, 1360);
        let egress = &plan.configs[&(7, Direction::Egress)];
        assert_eq!(egress.mss_clamp, 1360, "an egress hook for the clamp alone");
        assert_eq!(
            (egress.flags, egress.n_src_rules, egress.n_dst_rules),
            (0, 0, 0)
        );
    }

    #[test]
    fn a_long_allow_list_goes_to_the_trie() {
        let sources: Vec<Ipv4Net> = (0..=INLINE_ALLOW as u32)
            .map(|i| n(&format!("30.{}.0.0/16", i * 2)))
            .collect();
        let border = ResolvedBorder {
            ifindex: 7,
            sources: sources.clone(),
            destinations: vec![n("40.0.0.0/24")],
            sources6: vec![],
            destinations6: vec![],
            mss_clamp: None,
        };
        let plan = plan(&BTreeMap::new(), &[border]).unwrap();
        let config = &plan.configs[&(7, Direction::Ingress)];
        assert_eq!(config.flags, HOOK_ENFORCE | HOOK_ALLOW_SRC_TRIE);
        assert_eq!(config.n_allow_dst, 1);
        assert_eq!(plan.allow.len(), sources.len() + 1);
        let in_trie = |field| {
            plan.allow
                .iter()
                .filter(|k| AddressField::from_wire(k.data.field) == Some(field))
                .count()
        };
        assert_eq!(in_trie(AddressField::Source), sources.len());
        assert_eq!(in_trie(AddressField::Destination), 1);
    }

    #[test]
    fn hooks_sharing_a_home_slot_take_the_next_ones_and_never_move() {
        use Direction::*;
        // Interface indexes 2048 apart share a home slot (the direction is the low bit).
        let wrap = remapd_common::HOOK_SLOTS / 2;
        let home = hook_probe(7, Egress.wire(), 0);
        let a = (7, Egress);
        let b = (7 + wrap, Egress);
        let c = (7 + 2 * wrap, Egress);
        let wanted = |hooks: &[(u32, Direction)]| hooks.iter().copied().collect::<BTreeSet<_>>();
        let first = assign_slots(&wanted(&[a, b]), &BTreeMap::new()).unwrap();
        assert_eq!((first[&a], first[&b]), (home, home + 1));
        // b holds its slot when a goes and c comes: c takes a's free home slot.
        let second = assign_slots(&wanted(&[b, c]), &first).unwrap();
        assert_eq!((second[&b], second[&c]), (home + 1, home));
        // Ingress of interface 8 has its home where b sits now, so it probes on: slots
        // hold either direction, and the configuration says which.
        let ingress = (8, Ingress);
        assert_eq!(hook_probe(8, Ingress.wire(), 0), home + 1);
        let third = assign_slots(&wanted(&[b, c, ingress]), &second).unwrap();
        assert_eq!(third[&ingress], home + 2);
        // A hook whose every probe slot is kept by others is refused.
        let d = (7 + 3 * wrap, Egress);
        let e = (7 + 4 * wrap, Egress);
        let full = assign_slots(&wanted(&[b, c, ingress, d]), &third).unwrap();
        assert_eq!(full[&d], home + 3);
        assert!(matches!(
            assign_slots(&wanted(&[b, c, ingress, d, e]), &full),
            Err(RuleError::HookSlotCollision { .. })
        ));
        // A live slot outside a hook's probes is not kept.
        let moved = assign_slots(&wanted(&[a]), &BTreeMap::from([(a, 5)])).unwrap();
        assert_eq!(moved[&a], home);
    }
}
