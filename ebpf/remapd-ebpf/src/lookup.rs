//! Rule and allow-list lookups for one hook: inline in the [`HookConfig`] (a bounded scan,
//! no helper call) or, for hooks with more entries than fit inline, in an LPM trie.

use aya_ebpf::maps::lpm_trie::Key;
use remapd_common::{
    FAMILY_IPV4, FIELD_SOURCE, HOOK_ALLOW_DST_TRIE, HOOK_ALLOW_SRC_TRIE, HOOK_DST_RULES,
    HOOK_DST_TRIE, HOOK_SRC_RULES, HOOK_SRC_TRIE, HookConfig, INLINE_ALLOW, INLINE_RULES,
    InlineRule4, Prefix4, RULE_KEY_SELECTOR_BITS, RuleKey, translate_ipv4,
};

use crate::{ALLOW, RULES};

/// Counter slot meaning "no rule".
pub(crate) const NO_RULE: u32 = u32::MAX;

/// A lookup result: where to count it and what the address becomes. Every field is
/// always initialised (no `Option` payloads): the verifier rejects programs that spill
/// uninitialised registers, which is what LLVM makes of a `None`'s undefined payload.
#[derive(Clone, Copy)]
pub(crate) struct Rewrite {
    /// Counter slot, or [`NO_RULE`] when nothing matched.
    pub rule_id: u32,
    /// The translated address (host order); meaningless on a miss.
    pub to: u32,
}

impl Rewrite {
    pub(crate) const MISS: Self = Self {
        rule_id: NO_RULE,
        to: 0,
    };

    #[inline(always)]
    pub(crate) fn hit(&self) -> bool {
        self.rule_id != NO_RULE
    }
}

#[inline(always)]
fn trie_key(ifindex: u32, direction: u8, field: u8, addr: u32) -> Key<RuleKey> {
    let b = addr.to_be_bytes();
    let mut key_addr = [0u8; 16];
    key_addr[0] = b[0];
    key_addr[1] = b[1];
    key_addr[2] = b[2];
    key_addr[3] = b[3];
    Key::new(
        RULE_KEY_SELECTOR_BITS + 32,
        RuleKey {
            ifindex,
            direction,
            field,
            family: FAMILY_IPV4,
            _pad: 0,
            addr: key_addr,
        },
    )
}

/// Looks `addr` (host order) up among the hook's rules for `field`.
#[inline(always)]
pub(crate) fn lookup(
    config: &HookConfig,
    ifindex: u32,
    direction: u8,
    field: u8,
    addr: u32,
) -> Rewrite {
    let source = field == FIELD_SOURCE;
    let (has, trie) = if source {
        (HOOK_SRC_RULES, HOOK_SRC_TRIE)
    } else {
        (HOOK_DST_RULES, HOOK_DST_TRIE)
    };
    if config.flags & has == 0 {
        return Rewrite::MISS;
    }
    if config.flags & trie != 0 {
        return trie_lookup(ifindex, direction, field, addr);
    }
    if source {
        scan_rules(&config.src_rules, config.n_src_rules, addr)
    } else {
        scan_rules(&config.dst_rules, config.n_dst_rules, addr)
    }
}

/// Looks `addr` (host order) up among the first `n` of a hook's inline rules.
#[inline(always)]
pub(crate) fn scan_rules(rules: &[InlineRule4; INLINE_RULES], n: u32, addr: u32) -> Rewrite {
    // Sorted longest prefix first by the daemon: the first match is the longest.
    for i in 0..INLINE_RULES {
        if i as u32 >= n {
            break;
        }
        let rule = &rules[i];
        if addr & rule.mask == rule.from {
            return Rewrite {
                rule_id: rule.rule_id,
                to: rule.to | (addr & !rule.mask),
            };
        }
    }
    Rewrite::MISS
}

#[inline(always)]
fn trie_lookup(ifindex: u32, direction: u8, field: u8, addr: u32) -> Rewrite {
    let Some(rule) = RULES.get(&trie_key(ifindex, direction, field, addr)) else {
        return Rewrite::MISS;
    };
    if rule.family != FAMILY_IPV4 || rule.rule_id == NO_RULE || rule.prefix_len > 32 {
        return Rewrite::MISS;
    }
    let to_prefix = u32::from_be_bytes([
        rule.to_addr[0],
        rule.to_addr[1],
        rule.to_addr[2],
        rule.to_addr[3],
    ]);
    Rewrite {
        rule_id: rule.rule_id,
        to: translate_ipv4(addr, to_prefix, rule.prefix_len),
    }
}

/// Whether `addr` (host order, after translation) is in the hook's allow-list for
/// `field`. Border hooks only; the allow-list is always on the ingress side.
#[inline(always)]
pub(crate) fn allowed(config: &HookConfig, ifindex: u32, field: u8, addr: u32) -> bool {
    let source = field == FIELD_SOURCE;
    let trie = if source {
        HOOK_ALLOW_SRC_TRIE
    } else {
        HOOK_ALLOW_DST_TRIE
    };
    if config.flags & trie != 0 {
        let key = trie_key(ifindex, remapd_common::DIRECTION_INGRESS, field, addr);
        return ALLOW.get(&key).is_some();
    }
    if source {
        scan_allow(&config.allow_src, config.n_allow_src, addr)
    } else {
        scan_allow(&config.allow_dst, config.n_allow_dst, addr)
    }
}

/// Whether `addr` (host order) is in one of the first `n` prefixes of an inline
/// allow-list.
#[inline(always)]
pub(crate) fn scan_allow(list: &[Prefix4; INLINE_ALLOW], n: u32, addr: u32) -> bool {
    for i in 0..INLINE_ALLOW {
        if i as u32 >= n {
            break;
        }
        if addr & list[i].mask == list[i].addr {
            return true;
        }
    }
    false
}

/// Whether `addr` (host order, after translation) is in the border's allow-list for
/// `field`, looked up in the trie, which holds every border's allow-lists whether or
/// not they also fit inline. One helper call and no loop: for the rare paths (ICMP
/// error quotes) where the verifier cannot afford another inline scan.
#[inline(always)]
pub(crate) fn allowed_by_trie(ifindex: u32, field: u8, addr: u32) -> bool {
    let key = trie_key(ifindex, remapd_common::DIRECTION_INGRESS, field, addr);
    ALLOW.get(&key).is_some()
}
