//! Translation rules as the control plane states them, and the pure logic that turns a
//! desired set into map operations against what the kernel map holds now.
//!
//! Nothing here touches the kernel, so all of it is unit-tested without root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use remapd_common::{
    FAMILY_IPV4, FAMILY_IPV6, MAX_RULES, RULE_KEY_SELECTOR_BITS, RuleKey, RuleValue,
};

pub use remapd_model::rule::{AddressField, Direction, TranslationRule};

/// Why a desired rule set cannot be applied. Nothing is changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// `from` and `to` differ in length, so host bits could not be kept.
    #[error(
        "rule `{rule}`: prefix lengths differ (/{from} vs /{to}); a translation keeps host bits, so both sides need the same length"
    )]
    PrefixLengthMismatch {
        /// The rule, as text.
        rule: String,
        /// Length of `from`.
        from: u8,
        /// Length of `to`.
        to: u8,
    },
    /// `from` or `to` has host bits set, which usually means a typo.
    #[error("rule `{rule}`: {prefix} has host bits set; did you mean {normalized}?")]
    HostBitsSet {
        /// The rule, as text.
        rule: String,
        /// The offending prefix.
        prefix: IpNet,
        /// The prefix with host bits cleared.
        normalized: IpNet,
    },
    /// `from` and `to` are of different families.
    #[error("rule `{rule}`: one prefix is IPv4 and the other IPv6; a translation keeps the family")]
    FamilyMismatch {
        /// The rule, as text.
        rule: String,
    },
    /// Two rules match the same prefix on the same hook and field but translate differently.
    #[error(
        "rules `{first}` and `{second}` match the same prefix on the same hook but translate it differently"
    )]
    Conflict {
        /// One rule.
        first: String,
        /// The other.
        second: String,
    },
    /// An interface name is empty or longer than the kernel allows.
    #[error("rule `{rule}`: interface name {interface:?} is not a valid Linux interface name")]
    BadInterfaceName {
        /// The rule, as text.
        rule: String,
        /// The name.
        interface: String,
    },
    /// Two managed hooks fall into the same slot of the hook table.
    #[error(
        "hook {first} has no free slot in the dataplane's hook table (its slots are held by {second}); recreate one of the interfaces so it gets another index"
    )]
    HookSlotCollision {
        /// One hook.
        first: String,
        /// The other.
        second: String,
    },
    /// An ingress border names a prefix with host bits set, or no interface.
    #[error("ingress border of {interface:?}: {reason}")]
    BadBorder {
        /// Interface name.
        interface: String,
        /// What is wrong.
        reason: String,
    },
    /// More rules than the map has room for.
    #[error("{needed} rules needed but the dataplane holds at most {max}")]
    TableFull {
        /// Rules needed at the peak of the update.
        needed: usize,
        /// Map capacity.
        max: u32,
    },
}

/// Whether `name` can be a Linux interface name.
pub(crate) fn valid_interface_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 15 && !name.contains(['/', ' ', '\0'])
}

/// Smallest MSS clamp accepted: RFC 879's default MSS; below it TCP gets very slow.
pub const MSS_CLAMP_MIN: u16 = 536;
/// Largest MSS clamp accepted: a 65,535-byte IP packet minus IP and TCP headers.
pub const MSS_CLAMP_MAX: u16 = 65495;

/// Checks ingress borders on their own: valid interface names, one border per
/// interface, no host bits in any prefix, an MSS clamp in range.
pub fn validate_borders(borders: &[super::hooks::IngressBorder]) -> Result<(), RuleError> {
    let mut seen = BTreeSet::new();
    for border in borders {
        let bad = |reason: String| RuleError::BadBorder {
            interface: border.interface.clone(),
            reason,
        };
        if !valid_interface_name(&border.interface) {
            return Err(bad("not a valid Linux interface name".into()));
        }
        if !seen.insert(border.interface.as_str()) {
            return Err(bad("more than one border for the interface".into()));
        }
        if let Some(mss) = border.mss_clamp
            && !(MSS_CLAMP_MIN..=MSS_CLAMP_MAX).contains(&mss)
        {
            return Err(bad(format!(
                "mss_clamp {mss} is outside {MSS_CLAMP_MIN}-{MSS_CLAMP_MAX}"
            )));
        }
        for prefix in border.sources.iter().chain(&border.destinations) {
            if prefix.trunc() != *prefix {
                return Err(bad(format!(
                    "{prefix} has host bits set; did you mean {}?",
                    prefix.trunc()
                )));
            }
        }
    }
    Ok(())
}

/// Checks a desired rule set on its own (no kernel needed): equal prefix lengths, no host
/// bits, valid interface names, no conflicting duplicates. Exact duplicates are allowed
/// and collapse into one rule.
pub fn validate(rules: &[TranslationRule]) -> Result<(), RuleError> {
    let mut seen: BTreeMap<(&str, Direction, AddressField, IpNet), &TranslationRule> =
        BTreeMap::new();
    for rule in rules {
        if !valid_interface_name(&rule.interface) {
            return Err(RuleError::BadInterfaceName {
                rule: rule.to_string(),
                interface: rule.interface.clone(),
            });
        }
        if !remapd_model::validate::same_family(&rule.from, &rule.to) {
            return Err(RuleError::FamilyMismatch {
                rule: rule.to_string(),
            });
        }
        if rule.from.prefix_len() != rule.to.prefix_len() {
            return Err(RuleError::PrefixLengthMismatch {
                rule: rule.to_string(),
                from: rule.from.prefix_len(),
                to: rule.to.prefix_len(),
            });
        }
        for prefix in [rule.from, rule.to] {
            if prefix.trunc() != prefix {
                return Err(RuleError::HostBitsSet {
                    rule: rule.to_string(),
                    prefix,
                    normalized: prefix.trunc(),
                });
            }
        }
        let key = (
            rule.interface.as_str(),
            rule.direction,
            rule.field,
            rule.from,
        );
        if let Some(previous) = seen.insert(key, rule)
            && previous.to != rule.to
        {
            return Err(RuleError::Conflict {
                first: previous.to_string(),
                second: rule.to_string(),
            });
        }
    }
    Ok(())
}

/// An LPM trie key as the daemon handles it: prefix length (selector bits included) + data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapKey {
    /// Matched bits: [`RULE_KEY_SELECTOR_BITS`] plus the address prefix length.
    pub prefix_len: u32,
    /// Key data.
    pub data: RuleKey,
}

impl MapKey {
    /// The key for a rule of either family on interface `ifindex`.
    pub fn of(ifindex: u32, direction: Direction, field: AddressField, from: IpNet) -> Self {
        match from {
            IpNet::V4(from) => Self::ipv4(ifindex, direction, field, from),
            IpNet::V6(from) => Self::ipv6(ifindex, direction, field, from),
        }
    }

    /// The key for an IPv4 rule on interface `ifindex`.
    pub fn ipv4(ifindex: u32, direction: Direction, field: AddressField, from: Ipv4Net) -> Self {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&from.network().octets());
        Self::new(
            ifindex,
            direction,
            field,
            FAMILY_IPV4,
            from.prefix_len(),
            addr,
        )
    }

    /// The key for an IPv6 rule (or allow-list prefix) on interface `ifindex`.
    pub fn ipv6(ifindex: u32, direction: Direction, field: AddressField, from: Ipv6Net) -> Self {
        let addr = from.network().octets();
        Self::new(
            ifindex,
            direction,
            field,
            FAMILY_IPV6,
            from.prefix_len(),
            addr,
        )
    }

    fn new(
        ifindex: u32,
        direction: Direction,
        field: AddressField,
        family: u8,
        prefix_len: u8,
        addr: [u8; 16],
    ) -> Self {
        Self {
            prefix_len: RULE_KEY_SELECTOR_BITS + u32::from(prefix_len),
            data: RuleKey {
                ifindex,
                direction: direction.wire(),
                field: field.wire(),
                family,
                _pad: 0,
                addr,
            },
        }
    }

    /// The matched IPv4 prefix, if this is a well-formed IPv4 key.
    pub fn ipv4_prefix(&self) -> Option<Ipv4Net> {
        if self.data.family != FAMILY_IPV4 {
            return None;
        }
        let len = self.prefix_len.checked_sub(RULE_KEY_SELECTOR_BITS)?;
        let len = u8::try_from(len).ok()?;
        let [a, b, c, d, ..] = self.data.addr;
        Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len).ok()
    }

    /// The matched prefix of either family, if this is a well-formed key.
    pub fn prefix(&self) -> Option<IpNet> {
        if self.data.family == FAMILY_IPV6 {
            let len = self.prefix_len.checked_sub(RULE_KEY_SELECTOR_BITS)?;
            let len = u8::try_from(len).ok()?;
            return Ipv6Net::new(Ipv6Addr::from(self.data.addr), len)
                .ok()
                .map(IpNet::V6);
        }
        self.ipv4_prefix().map(IpNet::V4)
    }
}

/// The prefix a rule value translates to, if it is well formed.
pub fn target_prefix(value: &RuleValue) -> Option<IpNet> {
    match value.family {
        FAMILY_IPV4 => {
            let [a, b, c, d, ..] = value.to_addr;
            Ipv4Net::new(Ipv4Addr::new(a, b, c, d), value.prefix_len)
                .ok()
                .map(IpNet::V4)
        }
        FAMILY_IPV6 => Ipv6Net::new(Ipv6Addr::from(value.to_addr), value.prefix_len)
            .ok()
            .map(IpNet::V6),
        _ => None,
    }
}

/// What a rule translates to, without its counter slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Replacement prefix.
    pub to: IpNet,
}

impl Target {
    /// The family byte and address bytes stored in a rule value.
    fn wire(self) -> (u8, [u8; 16]) {
        let mut to_addr = [0u8; 16];
        match self.to {
            IpNet::V4(to) => {
                to_addr[..4].copy_from_slice(&to.network().octets());
                (FAMILY_IPV4, to_addr)
            }
            IpNet::V6(to) => (FAMILY_IPV6, to.network().octets()),
        }
    }

    /// The map value for this target with counter slot `rule_id`.
    pub fn value(self, rule_id: u32) -> RuleValue {
        let (family, to_addr) = self.wire();
        RuleValue {
            rule_id,
            prefix_len: self.to.prefix_len(),
            family,
            _pad: [0; 2],
            to_addr,
        }
    }

    fn matches(self, value: &RuleValue) -> bool {
        let (family, to_addr) = self.wire();
        value.family == family
            && value.prefix_len == self.to.prefix_len()
            && value.to_addr == to_addr
    }
}

/// Map operations that turn the current map into the desired one. Applied in the order
/// `upsert` then `remove`, so traffic never sees a gap: a rule that stays is never
/// deleted, a changed rule is replaced in place (one atomic map update), and stale
/// rules go last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleDiff {
    /// New rules, with freshly allocated counter slots (zero their counters first).
    pub insert: Vec<(MapKey, RuleValue)>,
    /// Rules whose target changed; they keep their counter slot.
    pub update: Vec<(MapKey, RuleValue)>,
    /// Rules no longer wanted.
    pub remove: Vec<MapKey>,
    /// Rules already as desired.
    pub unchanged: usize,
}

impl RuleDiff {
    /// True when the map already holds exactly the desired rules.
    pub fn is_empty(&self) -> bool {
        self.insert.is_empty() && self.update.is_empty() && self.remove.is_empty()
    }
}

/// Computes the operations from `current` (what the map holds) to `desired`.
///
/// Counter slots of new rules are never ones in use by any current entry, including
/// entries this same diff removes: those stay live until the removals run.
pub fn diff(
    current: &BTreeMap<MapKey, RuleValue>,
    desired: &BTreeMap<MapKey, Target>,
    capacity: u32,
) -> Result<RuleDiff, RuleError> {
    let mut out = RuleDiff::default();
    let used: BTreeSet<u32> = current.values().map(|v| v.rule_id).collect();
    let new_count = desired.keys().filter(|k| !current.contains_key(k)).count();
    // Peak size: every current entry plus every new one, before removals run.
    let peak = current.len() + new_count;
    if peak > capacity as usize {
        return Err(RuleError::TableFull {
            needed: peak,
            max: capacity,
        });
    }
    let mut free_ids = (0..capacity).filter(|id| !used.contains(id));
    for (key, target) in desired {
        match current.get(key) {
            Some(value) if target.matches(value) => out.unchanged += 1,
            Some(value) => out.update.push((*key, target.value(value.rule_id))),
            None => {
                let id = free_ids.next().ok_or(RuleError::TableFull {
                    needed: peak,
                    max: capacity,
                })?;
                out.insert.push((*key, target.value(id)));
            }
        }
    }
    out.remove = current
        .keys()
        .filter(|k| !desired.contains_key(k))
        .copied()
        .collect();
    Ok(out)
}

/// Default capacity for [`diff`]: the size of the kernel map.
pub const CAPACITY: u32 = MAX_RULES;

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        iface: &str,
        dir: Direction,
        field: AddressField,
        from: &str,
        to: &str,
    ) -> TranslationRule {
        TranslationRule {
            interface: iface.into(),
            direction: dir,
            field,
            from: from.parse().unwrap(),
            to: to.parse().unwrap(),
        }
    }

    fn desired_of(rules: &[(u32, TranslationRule)]) -> BTreeMap<MapKey, Target> {
        rules
            .iter()
            .map(|(ifindex, r)| {
                (
                    MapKey::of(*ifindex, r.direction, r.field, r.from),
                    Target { to: r.to },
                )
            })
            .collect()
    }

    fn apply(current: &mut BTreeMap<MapKey, RuleValue>, d: &RuleDiff) {
        for (k, v) in d.insert.iter().chain(&d.update) {
            current.insert(*k, *v);
        }
        for k in &d.remove {
            current.remove(k);
        }
    }

    #[test]
    fn validation_rejects_bad_rules() {
        use AddressField::*;
        use Direction::*;
        let bad_len = rule("wg0", Egress, Destination, "30.0.0.0/24", "40.0.0.0/16");
        assert!(matches!(
            validate(&[bad_len]),
            Err(RuleError::PrefixLengthMismatch {
                from: 24,
                to: 16,
                ..
            })
        ));
        let host_bits = rule("wg0", Egress, Destination, "30.0.0.1/24", "40.0.0.0/24");
        let err = validate(&[host_bits]).unwrap_err();
        assert!(
            err.to_string().contains("did you mean 30.0.0.0/24"),
            "{err}"
        );
        let a = rule("wg0", Egress, Destination, "30.0.0.0/24", "40.0.0.0/24");
        let b = rule("wg0", Egress, Destination, "30.0.0.0/24", "41.0.0.0/24");
        assert!(matches!(
            validate(&[a.clone(), b]),
            Err(RuleError::Conflict { .. })
        ));
        // Exact duplicates collapse; the same prefix on another field or hook is fine.
        let c = rule("wg0", Ingress, Destination, "30.0.0.0/24", "41.0.0.0/24");
        let d = rule("wg0", Egress, Source, "30.0.0.0/24", "41.0.0.0/24");
        validate(&[a.clone(), a.clone(), c, d]).unwrap();
        let long = rule(
            "a-very-long-interface-name",
            Egress,
            Source,
            "30.0.0.0/24",
            "41.0.0.0/24",
        );
        assert!(matches!(
            validate(&[long]),
            Err(RuleError::BadInterfaceName { .. })
        ));
    }

    #[test]
    fn key_round_trips_prefix() {
        let net: Ipv4Net = "10.1.0.0/16".parse().unwrap();
        let key = MapKey::ipv4(7, Direction::Ingress, AddressField::Source, net);
        assert_eq!(key.prefix_len, 64 + 16);
        assert_eq!(key.ipv4_prefix(), Some(net));
        assert_eq!(key.data.ifindex, 7);
        assert_eq!(&key.data.addr[..4], &[10, 1, 0, 0]);
        assert!(key.data.addr[4..].iter().all(|b| *b == 0));
    }

    #[test]
    fn diff_from_empty_inserts_everything_with_distinct_ids() {
        use AddressField::*;
        use Direction::*;
        let desired = desired_of(&[
            (
                3,
                rule("wg1", Egress, Destination, "30.0.0.0/24", "40.0.0.0/24"),
            ),
            (
                3,
                rule("wg1", Ingress, Source, "40.0.0.0/24", "30.0.0.0/24"),
            ),
        ]);
        let d = diff(&BTreeMap::new(), &desired, 16).unwrap();
        assert_eq!(d.insert.len(), 2);
        assert!(d.update.is_empty() && d.remove.is_empty());
        let ids: BTreeSet<u32> = d.insert.iter().map(|(_, v)| v.rule_id).collect();
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn diff_is_idempotent_and_keeps_ids() {
        use AddressField::*;
        use Direction::*;
        let desired = desired_of(&[
            (
                3,
                rule("wg1", Egress, Destination, "30.0.0.0/24", "40.0.0.0/24"),
            ),
            (
                3,
                rule("wg1", Ingress, Source, "40.0.0.0/24", "30.0.0.0/24"),
            ),
        ]);
        let mut current = BTreeMap::new();
        let d = diff(&current, &desired, 16).unwrap();
        apply(&mut current, &d);
        let again = diff(&current, &desired, 16).unwrap();
        assert!(again.is_empty());
        assert_eq!(again.unchanged, 2);
    }

    #[test]
    fn changed_target_updates_in_place_and_stale_rules_go_last() {
        use AddressField::*;
        use Direction::*;
        let first = desired_of(&[
            (
                3,
                rule("wg1", Egress, Destination, "30.0.0.0/24", "40.0.0.0/24"),
            ),
            (
                3,
                rule("wg1", Ingress, Source, "40.0.0.0/24", "30.0.0.0/24"),
            ),
        ]);
        let mut current = BTreeMap::new();
        let d = diff(&current, &first, 16).unwrap();
        apply(&mut current, &d);
        let egress_key = MapKey::ipv4(3, Egress, Destination, "30.0.0.0/24".parse().unwrap());
        let old_id = current[&egress_key].rule_id;

        let second = desired_of(&[
            (
                3,
                rule("wg1", Egress, Destination, "30.0.0.0/24", "50.0.0.0/24"),
            ),
            (
                4,
                rule("wg2", Ingress, Source, "40.0.0.0/24", "30.0.0.0/24"),
            ),
        ]);
        let d = diff(&current, &second, 16).unwrap();
        assert_eq!(d.update.len(), 1);
        assert_eq!(
            d.update[0].1.rule_id, old_id,
            "an updated rule keeps its counters"
        );
        assert_eq!(d.insert.len(), 1);
        assert_eq!(d.remove.len(), 1);
        // The new rule must not reuse the id of the rule being removed: both are live
        // between the upsert and the removal.
        let removed_id = current[&d.remove[0]].rule_id;
        assert_ne!(d.insert[0].1.rule_id, removed_id);
        apply(&mut current, &d);
        assert!(diff(&current, &second, 16).unwrap().is_empty());
    }

    #[test]
    fn capacity_counts_the_peak() {
        use AddressField::*;
        use Direction::*;
        let first = desired_of(&[(1, rule("a", Egress, Source, "1.0.0.0/8", "2.0.0.0/8"))]);
        let mut current = BTreeMap::new();
        let d = diff(&current, &first, 1).unwrap();
        apply(&mut current, &d);
        // Replacing the only rule with a different key needs two slots at the peak.
        let second = desired_of(&[(1, rule("a", Egress, Source, "3.0.0.0/8", "2.0.0.0/8"))]);
        assert!(matches!(
            diff(&current, &second, 1),
            Err(RuleError::TableFull { needed: 2, max: 1 })
        ));
        diff(&current, &second, 2).unwrap();
    }
}
