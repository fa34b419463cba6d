//! Built-in policy `split`: always split — each gateway translates only the peer's
//! addresses (DNAT of remapped -> real on the way out, SNAT of real -> remapped on the
//! way in), so the tunnel carries real addresses. Needs the NAT dataplane on both sides.

use remapd_policy_sdk::{Decision, DecisionInput, Policy, Strategy, allocate_views, log};

/// The policy.
pub struct Split;

impl Policy for Split {
    fn decide(input: &DecisionInput) -> Result<Decision, String> {
        if !input.remote.capabilities.nat_dataplane {
            return Err(format!(
                "split needs both gateways to translate, and {} cannot run the NAT dataplane; use both-on-2 or auto",
                input.remote.name
            ));
        }
        let mappings = allocate_views(input)?;
        log(&format!(
            "split with {}: {} mapping(s)",
            input.remote.name,
            mappings.len()
        ));
        Ok(Decision {
            strategy: Strategy::Split,
            mappings,
        })
    }
}

remapd_policy_sdk::export_policy!(Split);

#[cfg(test)]
mod tests {
    use super::*;
    use remapd_policy_sdk::testing::{cidr, input, run};

    #[test]
    fn splits_and_remaps_overlapping_cidrs_from_the_pool() {
        let i = input(
            &["10.1.0.0/16"],
            &["172.20.0.0/14"],
            &["10.1.0.0/16", "10.2.0.0/24"],
        );
        let (d, logs) = run::<Split>(&i);
        let d = d.unwrap();
        assert_eq!(d.strategy, Strategy::Split);
        assert_eq!(d.mappings[0].real, cidr("10.1.0.0/16"));
        assert_eq!(d.mappings[0].remapped, cidr("172.20.0.0/16"));
        assert_eq!(
            d.mappings[1].remapped,
            cidr("10.2.0.0/24"),
            "free locally: kept"
        );
        assert_eq!(logs.len(), 1);
    }

    #[test]
    fn refuses_a_remote_without_nat() {
        let mut i = input(&["10.1.0.0/16"], &["172.20.0.0/14"], &["10.1.0.0/16"]);
        i.remote.capabilities.nat_dataplane = false;
        let err = run::<Split>(&i).0.unwrap_err();
        assert!(err.contains("cannot run the NAT dataplane"), "{err}");
    }
}
