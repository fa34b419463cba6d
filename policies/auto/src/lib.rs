//! Built-in policy `auto` (the default): no overlap -> `none`; both gateways translate
//! -> `split`; only this one -> `both-on-local`; only the remote -> `both-on-remote`;
//! neither -> refused. Remapped CIDRs come from the pool,
//! same prefix length as the real ones, preferring the real prefix itself when it is
//! free locally.

use remapd_policy_sdk::{Decision, DecisionInput, Policy, Strategy, allocate_views, disjoint, log};

/// The policy.
pub struct Auto;

impl Policy for Auto {
    fn decide(input: &DecisionInput) -> Result<Decision, String> {
        let (local_nat, remote_nat) = (
            input.local.capabilities.nat_dataplane,
            input.remote.capabilities.nat_dataplane,
        );
        let strategy = if disjoint(input) {
            Strategy::None
        } else {
            match (local_nat, remote_nat) {
                (true, true) => Strategy::Split,
                (true, false) => Strategy::BothOnLocal,
                (false, true) => Strategy::BothOnRemote,
                (false, false) => {
                    return Err(format!(
                        "the CIDRs overlap {} and neither gateway can translate",
                        input.remote.name
                    ));
                }
            }
        };
        let mappings = allocate_views(input)?;
        log(&format!("auto with {}: {strategy:?}", input.remote.name));
        Ok(Decision { strategy, mappings })
    }
}

remapd_policy_sdk::export_policy!(Auto);

#[cfg(test)]
mod tests {
    use super::*;
    use remapd_policy_sdk::testing::{cidr, input, run};

    #[test]
    fn disjoint_clusters_route_plainly() {
        let i = input(&["10.1.0.0/16"], &["100.64.0.0/10"], &["10.2.0.0/16"]);
        let d = run::<Auto>(&i).0.unwrap();
        assert_eq!(d.strategy, Strategy::None);
        assert_eq!(d.mappings[0].remapped, cidr("10.2.0.0/16"));
    }

    #[test]
    fn overlap_splits() {
        let i = input(&["40.0.0.0/24"], &["30.0.0.0/16"], &["40.0.0.0/24"]);
        let d = run::<Auto>(&i).0.unwrap();
        assert_eq!(d.strategy, Strategy::Split);
        assert_eq!(d.mappings[0].remapped, cidr("30.0.0.0/24"));
    }

    #[test]
    fn dual_stack_overlap_splits_with_a_view_of_each_family() {
        let i = input(
            &["40.0.0.0/24", "fd00:40::/56"],
            &["30.0.0.0/16", "fd00:30::/48"],
            &["40.0.0.0/24", "fd00:40::/56"],
        );
        let d = run::<Auto>(&i).0.unwrap();
        assert_eq!(d.strategy, Strategy::Split);
        assert_eq!(d.mappings[0].remapped, cidr("30.0.0.0/24"));
        assert_eq!(d.mappings[1].remapped, cidr("fd00:30::/56"));
        // Without an IPv6 pool the IPv6 overlap cannot be remapped: refused by name.
        let no_pool6 = input(
            &["40.0.0.0/24", "fd00:40::/56"],
            &["30.0.0.0/16"],
            &["40.0.0.0/24", "fd00:40::/56"],
        );
        let refused = run::<Auto>(&no_pool6).0.unwrap_err();
        assert!(refused.contains("fd00:40::/56"), "{refused}");
    }

    #[test]
    fn a_remote_without_nat_gets_both_on_local() {
        let mut i = input(&["40.0.0.0/24"], &["30.0.0.0/16"], &["40.0.0.0/24"]);
        i.remote.capabilities.nat_dataplane = false;
        assert_eq!(run::<Auto>(&i).0.unwrap().strategy, Strategy::BothOnLocal);
    }

    #[test]
    fn a_local_gateway_without_nat_leaves_both_rewrites_to_the_remote() {
        let mut i = input(&["40.0.0.0/24"], &["30.0.0.0/16"], &["40.0.0.0/24"]);
        i.local.capabilities.nat_dataplane = false;
        assert_eq!(run::<Auto>(&i).0.unwrap().strategy, Strategy::BothOnRemote);
        i.remote.capabilities.nat_dataplane = false;
        let refused = run::<Auto>(&i).0.unwrap_err();
        assert!(
            refused.contains("neither gateway can translate"),
            "{refused}"
        );
    }

    #[test]
    fn service_cidrs_and_other_allocations_are_avoided() {
        let mut i = input(&["40.0.0.0/24"], &["30.0.0.0/16"], &["40.0.0.0/24"]);
        i.local.allocated.push(cidr("30.0.0.0/24"));
        i.remote.service_cidrs.push(cidr("40.0.0.0/24"));
        let d = run::<Auto>(&i).0.unwrap();
        assert_eq!(d.mappings[0].remapped, cidr("30.0.1.0/24"));
        assert_eq!(d.mappings[1].remapped, cidr("30.0.2.0/24"));
    }

    #[test]
    fn an_exhausted_pool_is_an_error() {
        let i = input(
            &["40.0.0.0/24"],
            &["30.0.0.0/24"],
            &["40.0.0.0/24", "40.0.0.0/25"],
        );
        assert!(run::<Auto>(&i).0.unwrap_err().contains("no free"));
    }
}
