//! Runs remapd's TC programs on test packets with `BPF_PROG_TEST_RUN`, with rules put
//! into private (unpinned) maps. The kernel runs a test packet on the loopback device of
//! the caller's namespace, so rules here are keyed to ifindex 1.

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use ipnet::Ipv4Net;
use remapd::dataplane::rules::MapKey;
use remapd::dataplane::{AddressField, Direction};
use remapd_common::{FAMILY_IPV4, RuleCounters, RuleKey, RuleValue, programs};

/// Loopback's ifindex, where test runs happen.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// The verdict every remapd program returns (`TC_ACT_UNSPEC`, "next program").
pub const VERDICT_NEXT: u32 = u32::MAX;

/// Loaded programs plus their maps.
pub struct BpfHarness {
    ebpf: aya::Ebpf,
    next_rule_id: u32,
}

/// Result of one run.
pub struct Run {
    /// Program return value.
    pub verdict: u32,
    /// The packet after the program ran.
    pub packet: Vec<u8>,
    /// Average run time per repetition, as the kernel measured it.
    pub duration_ns: u128,
}

impl BpfHarness {
    /// Loads the embedded eBPF object and every program in it.
    pub fn new() -> Self {
        let mut ebpf = remapd::dataplane::load_unpinned().expect("load eBPF object");
        for name in [
            programs::L2_INGRESS,
            programs::L2_EGRESS,
            programs::L3_INGRESS,
            programs::L3_EGRESS,
            programs::BENCH_NOOP,
            programs::BENCH_ONE_HELPER,
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("program {name} missing"))
                .try_into()
                .expect("program is a classifier");
            prog.load().unwrap_or_else(|e| panic!("load {name}: {e:?}"));
        }
        Self {
            ebpf,
            next_rule_id: 0,
        }
    }

    /// Adds a rule on the test-run interface; returns its counter slot.
    pub fn add_rule(
        &mut self,
        direction: Direction,
        field: AddressField,
        from: &str,
        to: &str,
    ) -> u32 {
        self.add_rule_on(TEST_RUN_IFINDEX, direction, field, from, to)
    }

    /// Adds a rule on interface `ifindex`; returns its counter slot.
    pub fn add_rule_on(
        &mut self,
        ifindex: u32,
        direction: Direction,
        field: AddressField,
        from: &str,
        to: &str,
    ) -> u32 {
        let from: Ipv4Net = from.parse().expect("test prefix");
        let to: Ipv4Net = to.parse().expect("test prefix");
        let key = MapKey::ipv4(ifindex, direction, field, from);
        let id = self.next_rule_id;
        self.next_rule_id += 1;
        let mut to_addr = [0u8; 16];
        to_addr[..4].copy_from_slice(&to.network().octets());
        let value = RuleValue {
            rule_id: id,
            prefix_len: to.prefix_len(),
            family: FAMILY_IPV4,
            _pad: [0; 2],
            to_addr,
        };
        self.rules()
            .insert(&Key::new(key.prefix_len, key.data), value, 0)
            .expect("insert rule");
        self.mark_hook(ifindex, direction, field);
        id
    }

    /// Adds `count` filler rules that never match the test packets (to measure scale):
    /// distinct /24s from 64.0.0.0 upwards, counter slots from 1000.
    pub fn add_filler_rules(&mut self, direction: Direction, field: AddressField, count: u32) {
        self.fill(direction, field, count);
        self.mark_hook(TEST_RUN_IFINDEX, direction, field);
    }

    fn fill(&mut self, direction: Direction, field: AddressField, count: u32) {
        let mut rules = self.rules();
        for i in 0..count {
            let net = Ipv4Net::new((0x4000_0000u32 + (i << 8)).into(), 24).expect("prefix");
            let key = MapKey::ipv4(TEST_RUN_IFINDEX, direction, field, net);
            let mut to_addr = [0u8; 16];
            to_addr[..4].copy_from_slice(&[198, 18, 0, 0]);
            let value = RuleValue {
                rule_id: 1000 + i,
                prefix_len: 24,
                family: FAMILY_IPV4,
                _pad: [0; 2],
                to_addr,
            };
            rules
                .insert(&Key::new(key.prefix_len, key.data), value, 0)
                .expect("insert filler rule");
        }
    }

    /// Sets the hook-summary bit the dataplane module would set for a rule.
    fn mark_hook(&mut self, ifindex: u32, direction: Direction, field: AddressField) {
        let mut hooks: Array<&mut MapData, u32> = Array::try_from(
            self.ebpf
                .map_mut(remapd_common::HOOKS_MAP)
                .expect("hooks map"),
        )
        .expect("hooks map type");
        let slot = remapd_common::hook_slot(ifindex, direction.wire());
        let bits = hooks.get(&slot, 0).expect("read hooks");
        hooks
            .set(slot, bits | (1 << field.wire()), 0)
            .expect("write hooks");
    }

    fn rules(&mut self) -> LpmTrie<&mut MapData, RuleKey, RuleValue> {
        LpmTrie::try_from(
            self.ebpf
                .map_mut(remapd_common::RULES_MAP)
                .expect("rules map"),
        )
        .expect("rules map type")
    }

    /// Runs `program` once on `packet`.
    pub fn run(&mut self, program: &str, packet: &[u8]) -> Run {
        self.run_repeat(program, packet, 1)
    }

    /// Runs `program` `repeat` times on the same packet buffer (each pass sees the
    /// previous pass's output).
    pub fn run_repeat(&mut self, program: &str, packet: &[u8], repeat: u32) -> Run {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .unwrap_or_else(|| panic!("program {program} missing"))
            .try_into()
            .expect("classifier");
        let mut out = vec![0u8; packet.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("test run of {program}: {e:?}"));
        out.truncate(result.data_size_out as usize);
        Run {
            verdict: result.return_value,
            packet: out,
            duration_ns: result.duration.as_nanos(),
        }
    }

    /// Packets and bytes counted for a rule, summed over CPUs.
    pub fn counters(&self, rule_id: u32) -> (u64, u64) {
        let map: PerCpuArray<&MapData, RuleCounters> = PerCpuArray::try_from(
            self.ebpf
                .map(remapd_common::COUNTERS_MAP)
                .expect("counters map"),
        )
        .expect("counters map type");
        let values = map.get(&rule_id, 0).expect("read counters");
        values
            .iter()
            .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes))
    }

    /// The exception counters (malformed, helper failed, bad rule id), summed over CPUs.
    pub fn exceptions(&self) -> [u64; 3] {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(remapd_common::EXCEPTIONS_MAP)
                .expect("exceptions map"),
        )
        .expect("exceptions map type");
        let read = |i: u32| map.get(&i, 0).expect("read exceptions").iter().sum::<u64>();
        [read(0), read(1), read(2)]
    }
}

impl Default for BpfHarness {
    fn default() -> Self {
        Self::new()
    }
}
