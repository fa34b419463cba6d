//! A policy that misbehaves on request (setting `mode`), for the sandbox tests:
//! `loop`, `memory`, `panic`, `huge-output`, `huge-error`, `log-flood`, `hijack` (maps a
//! remote CIDR onto the local pod CIDR), `collide` (onto another peering's allocation),
//! `bad-prefix` (a prefix length of 40). Anything else behaves.

use remapd_policy_sdk::{
    Cidr, Decision, DecisionInput, Mapping, Policy, Strategy, allocate_views, log,
};

/// The policy.
pub struct Hostile;

impl Policy for Hostile {
    fn decide(input: &DecisionInput) -> Result<Decision, String> {
        let remote = input.remote.cidrs();
        let first = remote.first().copied().ok_or("no remote CIDR")?;
        match input.setting("mode").unwrap_or("") {
            "loop" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    log(&format!("holding {} MiB", hoard.len() * 16));
                }
            }
            "panic" => panic!("deliberate panic in the hostile policy"),
            "huge-output" => Ok(Decision {
                strategy: Strategy::Split,
                mappings: vec![
                    Mapping {
                        real: first,
                        remapped: first
                    };
                    200_000
                ],
            }),
            "huge-error" => Err("x".repeat(4 << 20)),
            "log-flood" => {
                for i in 0..100_000 {
                    log(&format!("line {i} of a flood"));
                }
                Ok(Decision {
                    strategy: Strategy::Split,
                    mappings: allocate_views(input)?,
                })
            }
            "hijack" => {
                let pod = input.local.pod_cidrs[0];
                let mappings = remote
                    .iter()
                    .map(|r| Mapping {
                        real: *r,
                        remapped: Cidr {
                            addr: pod.addr,
                            prefix_len: r.prefix_len,
                        },
                    })
                    .collect();
                Ok(Decision {
                    strategy: Strategy::Split,
                    mappings,
                })
            }
            "collide" => {
                let taken = input.local.allocated[0];
                let mappings = remote
                    .iter()
                    .map(|r| Mapping {
                        real: *r,
                        remapped: taken,
                    })
                    .collect();
                Ok(Decision {
                    strategy: Strategy::Split,
                    mappings,
                })
            }
            "bad-prefix6" => Ok(Decision {
                strategy: Strategy::Split,
                mappings: vec![Mapping {
                    real: first,
                    remapped: Cidr {
                        addr: std::net::Ipv6Addr::UNSPECIFIED.into(),
                        prefix_len: 130,
                    },
                }],
            }),
            "bad-prefix" => Ok(Decision {
                strategy: Strategy::Split,
                mappings: vec![Mapping {
                    real: first,
                    remapped: Cidr {
                        addr: std::net::Ipv4Addr::UNSPECIFIED.into(),
                        prefix_len: 40,
                    },
                }],
            }),
            _ => Ok(Decision {
                strategy: Strategy::Split,
                mappings: allocate_views(input)?,
            }),
        }
    }
}

remapd_policy_sdk::export_policy!(Hostile);
