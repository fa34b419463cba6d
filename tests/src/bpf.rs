//! Runs remapd's TC programs on test packets with `BPF_PROG_TEST_RUN`, with rules and
//! borders put into private (unpinned) maps. The kernel runs a test packet on the
//! loopback device of the caller's namespace, so rules here are keyed to ifindex 1.
//!
//! Hook configurations are built by the daemon's own `dataplane::hooks::plan`, so these
//! tests exercise exactly what the daemon writes.

use std::collections::BTreeMap;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use ipnet::{Ipv4Net, Ipv6Net};
use remapd::dataplane::hooks::{self, ResolvedBorder};
use remapd::dataplane::rules::{MapKey, Target};
use remapd::dataplane::trace::{KernelTraceTap, TraceEvent, TraceTap};
use remapd::dataplane::{AddressField, Direction};
use remapd_common::{
    HookConfig, HookCounters, RuleCounters, RuleKey, RuleValue, bench_programs, programs,
};

/// Loopback's ifindex, where test runs happen.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// The verdict remapd's programs return for a packet they let through
/// (`TC_ACT_UNSPEC`, "next program").
pub const VERDICT_NEXT: u32 = u32::MAX;
/// The verdict for a dropped packet (`TC_ACT_SHOT`).
pub const VERDICT_DROP: u32 = 2;

/// Loaded programs plus their maps.
pub struct BpfHarness {
    ebpf: aya::Ebpf,
    bench: aya::Ebpf,
    next_rule_id: u32,
    /// Rule entries of the hooks under test (what hook configurations describe).
    entries: BTreeMap<MapKey, RuleValue>,
    borders: Vec<ResolvedBorder>,
    /// Where each hook's configuration lives, assigned as the daemon assigns them.
    slots: BTreeMap<(u32, Direction), u32>,
    /// The trace maps, taken out of `ebpf` on first use.
    trace: Option<KernelTraceTap>,
}

/// Result of one run.
#[derive(Debug)]
pub struct Run {
    /// Program return value.
    pub verdict: u32,
    /// The packet after the program ran.
    pub packet: Vec<u8>,
    /// Average run time per repetition, as the kernel measured it.
    pub duration_ns: u128,
}

fn load_all(ebpf: &mut aya::Ebpf, names: &[&str]) {
    for name in names {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("program {name} missing"))
            .try_into()
            .expect("program is a classifier");
        prog.load().unwrap_or_else(|e| panic!("load {name}: {e:?}"));
    }
}

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("test prefix")
}

impl BpfHarness {
    /// Loads the embedded eBPF objects (production and bench) and every program in them.
    pub fn new() -> Self {
        Self::with_object(remapd::dataplane::load_unpinned().expect("load eBPF object"))
    }

    /// The programs with their trace code removed at load time (benchmarks: what the
    /// trace costs while none runs).
    pub fn without_trace() -> Self {
        Self::with_object(
            remapd::dataplane::load_unpinned_without_trace().expect("load eBPF object"),
        )
    }

    fn with_object(mut ebpf: aya::Ebpf) -> Self {
        load_all(
            &mut ebpf,
            &[
                programs::L2_INGRESS,
                programs::L2_EGRESS,
                programs::L3_INGRESS,
                programs::L3_EGRESS,
            ],
        );
        let mut bench = remapd::dataplane::load_bench_object().expect("load bench object");
        load_all(
            &mut bench,
            &[
                bench_programs::NOOP,
                bench_programs::ONE_HELPER,
                bench_programs::REFERENCE,
            ],
        );
        Self {
            ebpf,
            bench,
            next_rule_id: 0,
            entries: BTreeMap::new(),
            borders: Vec::new(),
            slots: BTreeMap::new(),
            trace: None,
        }
    }

    /// How many instructions the kernel's verifier walked to accept `program` (its
    /// budget is 1,000,000 per program; past it the load fails with E2BIG).
    pub fn verified_instructions(&self, program: &str) -> u32 {
        let prog: &SchedClassifier = self
            .ebpf
            .program(program)
            .unwrap_or_else(|| panic!("program {program} missing"))
            .try_into()
            .expect("program is a classifier");
        prog.info()
            .expect("program info")
            .verified_instruction_count()
            .expect("the kernel reports verified instructions")
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
        let key = MapKey::ipv4(ifindex, direction, field, net(from));
        self.insert_rule(key, |id| Target { to: net(to).into() }.value(id))
    }

    /// Inserts the rule `key` with the value `value` makes of its new counter slot;
    /// returns the slot.
    fn insert_rule(&mut self, key: MapKey, value: impl FnOnce(u32) -> RuleValue) -> u32 {
        let id = self.next_rule_id;
        self.next_rule_id += 1;
        let value = value(id);
        self.insert_trie(key, value);
        self.entries.insert(key, value);
        self.sync_hooks();
        id
    }

    /// Adds an IPv6 rule on the test-run interface (the hook looks IPv6 rules up in the
    /// trie); returns its counter slot.
    pub fn add_rule6(
        &mut self,
        direction: Direction,
        field: AddressField,
        from: &str,
        to: &str,
    ) -> u32 {
        let from: Ipv6Net = from.parse().expect("test prefix");
        let to: Ipv6Net = to.parse().expect("test prefix");
        let key = MapKey::ipv6(TEST_RUN_IFINDEX, direction, field, from);
        self.insert_rule(key, |rule_id| RuleValue {
            rule_id,
            prefix_len: to.prefix_len(),
            family: remapd_common::FAMILY_IPV6,
            _pad: [0; 2],
            to_addr: to.network().octets(),
        })
    }

    /// [`BpfHarness::set_border`] for both families.
    pub fn set_border_dual(
        &mut self,
        sources: &[&str],
        destinations: &[&str],
        sources6: &[&str],
        destinations6: &[&str],
    ) {
        let v6 = |list: &[&str]| -> Vec<Ipv6Net> {
            list.iter()
                .map(|s| s.parse().expect("test prefix"))
                .collect()
        };
        self.borders = vec![ResolvedBorder {
            ifindex: TEST_RUN_IFINDEX,
            sources: sources.iter().map(|s| net(s)).collect(),
            destinations: destinations.iter().map(|s| net(s)).collect(),
            sources6: v6(sources6),
            destinations6: v6(destinations6),
            mss_clamp: None,
        }];
        self.sync_hooks();
    }

    /// Makes the test-run interface's ingress a border: after translation only
    /// `sources` -> `destinations` may pass.
    pub fn set_border(&mut self, sources: &[&str], destinations: &[&str]) {
        self.set_border_dual(sources, destinations, &[], &[]);
    }

    /// Clamps TCP SYNs' MSS option to `mss` on both directions of the test-run
    /// interface (a border that lets everything through carries the setting, as a
    /// tunnel's does).
    pub fn set_mss_clamp(&mut self, mss: u16) {
        self.borders = vec![ResolvedBorder {
            ifindex: TEST_RUN_IFINDEX,
            sources: vec![net("0.0.0.0/0")],
            destinations: vec![net("0.0.0.0/0")],
            sources6: vec!["::/0".parse().expect("prefix")],
            destinations6: vec!["::/0".parse().expect("prefix")],
            mss_clamp: Some(mss),
        }];
        self.sync_hooks();
    }

    /// Adds `count` filler rules on the test-run hook that never match the test packets:
    /// distinct /24s from 64.0.0.0 upwards (more than fit inline: the hook goes to the
    /// trie), counter slots from 1000.
    pub fn add_filler_rules(&mut self, direction: Direction, field: AddressField, count: u32) {
        for (key, value) in fillers(TEST_RUN_IFINDEX, direction, field, count) {
            self.insert_trie(key, value);
            self.entries.insert(key, value);
        }
        self.sync_hooks();
    }

    /// Adds `count` filler rules for other interfaces (other hooks of a busy gateway):
    /// they sit in the trie, and the hook under test keeps its inline rules.
    pub fn add_rules_of_other_hooks(&mut self, count: u32) {
        for i in 0..count {
            let ifindex = 100 + i / 4;
            let (key, value) = fillers(ifindex, Direction::Egress, AddressField::Destination, 1)
                .next()
                .expect("one filler");
            let mut key = key;
            key.data.addr[..4].copy_from_slice(&(0x4000_0000u32 + (i << 8)).to_be_bytes());
            self.insert_trie(key, value);
        }
    }

    fn insert_trie(&mut self, key: MapKey, value: RuleValue) {
        let mut rules: LpmTrie<&mut MapData, RuleKey, RuleValue> = LpmTrie::try_from(
            self.ebpf
                .map_mut(remapd_common::RULES_MAP)
                .expect("rules map"),
        )
        .expect("rules map type");
        rules
            .insert(&Key::new(key.prefix_len, key.data), value, 0)
            .expect("insert rule");
    }

    /// Writes every hook configuration the daemon would write for the current rules and
    /// borders (always into buffer 0 of the slot).
    fn sync_hooks(&mut self) {
        let plan = hooks::plan(&self.entries, &self.borders).expect("hook plan");
        {
            let mut allow: LpmTrie<&mut MapData, RuleKey, u32> = LpmTrie::try_from(
                self.ebpf
                    .map_mut(remapd_common::ALLOW_MAP)
                    .expect("allow map"),
            )
            .expect("allow map type");
            for key in &plan.allow {
                allow
                    .insert(&Key::new(key.prefix_len, key.data), 1, 0)
                    .expect("insert allow entry");
            }
        }
        let wanted = plan.configs.keys().copied().collect();
        self.slots = hooks::assign_slots(&wanted, &self.slots).expect("hook slots");
        for (hook, config) in &plan.configs {
            let slot = self.slots[hook];
            let mut configs: Array<&mut MapData, HookConfig> = Array::try_from(
                self.ebpf
                    .map_mut(remapd_common::HOOK_CONFIG_MAP)
                    .expect("hook config map"),
            )
            .expect("hook config map type");
            configs
                .set(slot * 2, *config, 0)
                .expect("write hook config");
            let mut index: Array<&mut MapData, u32> = Array::try_from(
                self.ebpf
                    .map_mut(remapd_common::HOOK_INDEX_MAP)
                    .expect("hook index map"),
            )
            .expect("hook index map type");
            index.set(slot, 1, 0).expect("write hook index");
        }
    }

    /// Runs `program` once on `packet`.
    pub fn run(&mut self, program: &str, packet: &[u8]) -> Run {
        self.run_repeat(program, packet, 1)
    }

    /// Runs `program` (of the production or the bench object) `repeat` times on the same
    /// packet buffer (each pass sees the previous pass's output).
    pub fn run_repeat(&mut self, program: &str, packet: &[u8], repeat: u32) -> Run {
        let object = if self.ebpf.program(program).is_some() {
            &mut self.ebpf
        } else {
            &mut self.bench
        };
        let prog: &mut SchedClassifier = object
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

    /// Runs `program` once on `packet` as a CHECKSUM_COMPLETE skb: the kernel seeds
    /// `skb->csum` from the packet and, after the run, fails it with `EBADMSG` when
    /// `skb->csum` no longer matches the packet's bytes (`BPF_F_TEST_SKB_CHECKSUM_COMPLETE`,
    /// which aya's test-run options cannot set; hence the raw `BPF_PROG_TEST_RUN`).
    pub fn run_checksum_complete(
        &mut self,
        program: &str,
        packet: &[u8],
    ) -> Result<Run, std::io::Error> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        const BPF_PROG_TEST_RUN: libc::c_long = 10;
        const BPF_F_TEST_SKB_CHECKSUM_COMPLETE: u32 = 1 << 2;
        let object = if self.ebpf.program(program).is_some() {
            &self.ebpf
        } else {
            &self.bench
        };
        let prog: &SchedClassifier = object
            .program(program)
            .unwrap_or_else(|| panic!("program {program} missing"))
            .try_into()
            .expect("classifier");
        let fd = prog.fd().expect("loaded").as_fd().as_raw_fd();
        let mut out = vec![0u8; packet.len() + 256];
        // `union bpf_attr`'s `test` member, as the kernel lays it out.
        #[repr(C)]
        #[derive(Default)]
        struct TestAttr {
            prog_fd: u32,
            retval: u32,
            data_size_in: u32,
            data_size_out: u32,
            data_in: u64,
            data_out: u64,
            repeat: u32,
            duration: u32,
            ctx_size_in: u32,
            ctx_size_out: u32,
            ctx_in: u64,
            ctx_out: u64,
            flags: u32,
            cpu: u32,
            batch_size: u32,
            _pad: u32,
        }
        let mut attr = TestAttr {
            prog_fd: fd as u32,
            data_size_in: packet.len() as u32,
            data_size_out: out.len() as u32,
            data_in: packet.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            flags: BPF_F_TEST_SKB_CHECKSUM_COMPLETE,
            ..TestAttr::default()
        };
        // SAFETY: `attr` is a valid, fully initialised `bpf_attr` prefix whose pointers
        // refer to live buffers of the sizes given; the kernel writes only within them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestAttr,
                std::mem::size_of::<TestAttr>(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        out.truncate(attr.data_size_out as usize);
        Ok(Run {
            verdict: attr.retval,
            packet: out,
            duration_ns: u128::from(attr.duration),
        })
    }

    /// Sets a rule of the bench reference program: destination `from` becomes `to`.
    pub fn add_reference_rule(&mut self, from: &str, to: &str) {
        let (from, to) = (net(from), net(to));
        let mut map: LpmTrie<&mut MapData, u32, [u32; 2]> = LpmTrie::try_from(
            self.bench
                .map_mut(bench_programs::REFERENCE_MAP)
                .expect("reference map"),
        )
        .expect("reference map type");
        map.insert(
            &Key::new(
                u32::from(from.prefix_len()),
                u32::from(from.network()).to_be(),
            ),
            [u32::from(to.network()), u32::from(to.prefix_len())],
            0,
        )
        .expect("insert reference rule");
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

    /// The test-run interface's hook counters for `direction`, summed over CPUs.
    pub fn hook_counters(&self, direction: Direction) -> HookCounters {
        let map: PerCpuArray<&MapData, HookCounters> = PerCpuArray::try_from(
            self.ebpf
                .map(remapd_common::HOOK_COUNTERS_MAP)
                .expect("hook counters map"),
        )
        .expect("hook counters map type");
        let slot = self.slots[&(TEST_RUN_IFINDEX, direction)];
        let values = map.get(&slot, 0).expect("read hook counters");
        let mut sum = HookCounters::default();
        for c in values.iter() {
            sum.packets += c.packets;
            sum.bytes += c.bytes;
            sum.translated += c.translated;
            sum.mss_clamped += c.mss_clamped;
            for (s, n) in sum.dropped.iter_mut().zip(c.dropped) {
                *s += n;
            }
        }
        sum
    }

    /// The trace maps of the loaded programs (the daemon's tap, on this object's maps).
    pub fn trace(&mut self) -> &mut KernelTraceTap {
        let ebpf = &mut self.ebpf;
        self.trace.get_or_insert_with(|| {
            let mut take = |name| ebpf.take_map(name).unwrap_or_else(|| panic!("map {name}"));
            KernelTraceTap::from_maps(
                take(remapd_common::TRACE_CONTROL_MAP),
                take(remapd_common::TRACE_EVENTS_MAP),
                take(remapd_common::TRACE_LOST_MAP),
            )
            .expect("trace maps")
        })
    }

    /// Every trace event waiting in the ring buffer.
    pub fn trace_events(&mut self) -> Vec<TraceEvent> {
        let mut out = vec![];
        self.trace().drain(&mut out, usize::MAX);
        out
    }

    /// Drops counted on the test-run interface's `direction` hook, by reason index.
    pub fn dropped(&self, direction: Direction) -> [u64; remapd_common::drop_reason::COUNT] {
        self.hook_counters(direction).dropped
    }
}

fn fillers(
    ifindex: u32,
    direction: Direction,
    field: AddressField,
    count: u32,
) -> impl Iterator<Item = (MapKey, RuleValue)> {
    (0..count).map(move |i| {
        let from = Ipv4Net::new((0x4000_0000u32 + (i << 8)).into(), 24).expect("prefix");
        let key = MapKey::ipv4(ifindex, direction, field, from);
        (
            key,
            Target {
                to: net("198.18.0.0/24").into(),
            }
            .value(1000 + i),
        )
    })
}

impl Default for BpfHarness {
    fn default() -> Self {
        Self::new()
    }
}
