//! Built-in policy `both-on-2`: one gateway does every rewrite for the pair, the other
//! only routes. The NAT side is the one named by the `nat-side` setting (`local` or
//! `remote`); without it, the side that can run the NAT dataplane, and when both can,
//! the cluster whose name sorts last ("cluster 2").

use remapd_policy_sdk::{Decision, DecisionInput, Policy, Strategy, allocate_views, log};

/// The policy.
pub struct BothOn2;

impl Policy for BothOn2 {
    fn decide(input: &DecisionInput) -> Result<Decision, String> {
        let local_nat = input.local.capabilities.nat_dataplane;
        let remote_nat = input.remote.capabilities.nat_dataplane;
        let strategy = match input.setting("nat-side") {
            Some("local") => Strategy::BothOnLocal,
            Some("remote") => Strategy::BothOnRemote,
            Some(other) => {
                return Err(format!(
                    "setting nat-side={other:?}: expected \"local\" or \"remote\""
                ));
            }
            None => match (local_nat, remote_nat) {
                (true, false) => Strategy::BothOnLocal,
                (false, true) => Strategy::BothOnRemote,
                (false, false) => return Err("neither gateway can run the NAT dataplane".into()),
                (true, true) if input.local.name > input.remote.name => Strategy::BothOnLocal,
                (true, true) => Strategy::BothOnRemote,
            },
        };
        let mappings = allocate_views(input)?;
        log(&format!(
            "both-on-2 with {}: {strategy:?}",
            input.remote.name
        ));
        Ok(Decision { strategy, mappings })
    }
}

remapd_policy_sdk::export_policy!(BothOn2);

#[cfg(test)]
mod tests {
    use super::*;
    use remapd_policy_sdk::testing::{input, run};

    fn named(local: &str, remote: &str) -> DecisionInput {
        let mut i = input(&["40.0.0.0/24"], &["30.0.0.0/16"], &["40.0.0.0/24"]);
        i.local.name = local.into();
        i.remote.name = remote.into();
        i
    }

    #[test]
    fn cluster_2_does_the_work_by_default() {
        assert_eq!(
            run::<BothOn2>(&named("cluster-1", "cluster-2"))
                .0
                .unwrap()
                .strategy,
            Strategy::BothOnRemote
        );
        assert_eq!(
            run::<BothOn2>(&named("cluster-2", "cluster-1"))
                .0
                .unwrap()
                .strategy,
            Strategy::BothOnLocal
        );
    }

    #[test]
    fn setting_and_capabilities_choose_the_side() {
        let mut i = named("cluster-1", "cluster-2");
        i.settings.push(("nat-side".into(), "local".into()));
        assert_eq!(
            run::<BothOn2>(&i).0.unwrap().strategy,
            Strategy::BothOnLocal
        );
        let mut i = named("cluster-2", "cluster-1");
        i.local.capabilities.nat_dataplane = false;
        assert_eq!(
            run::<BothOn2>(&i).0.unwrap().strategy,
            Strategy::BothOnRemote
        );
        let mut i = named("a", "b");
        i.settings.push(("nat-side".into(), "sideways".into()));
        assert!(run::<BothOn2>(&i).0.unwrap_err().contains("sideways"));
    }
}
