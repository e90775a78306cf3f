//! Documents at data-centre size load from YAML as from JSON (the parser's budget is raised to a
//! documented limit, enforced with an error naming it), and bad input names the document and the
//! position. The texts are generated here, in memory.
//!
//! YAML parsing in a debug build costs about 5 µs per node, so the documents here are as terse as
//! their scale allows (flat hosts in flow style; a stream where most events are releases): the point
//! is that nothing in the library stops at a size, which the node and event counts prove (10× and
//! 3× over the parser's defaults). `benches/placement` loads realistic documents of the same sizes
//! (NUMA trees, a 9:1 place/release stream) in release and prints the time.

use scheduling::load::{parse, parse_with_limits, Format, Limits};
use scheduling::request::{RequestStream, StreamEvent};
use scheduling::{Cluster, ClusterSpec, ModelError};
use std::fmt::Write as _;

/// `hosts` flat hosts in YAML, each with a zone and two inventories (about 1.2 million nodes for
/// 100,000 hosts: five times serde-saphyr's default budget).
fn cluster_yaml(hosts: usize) -> String {
    let mut s = String::with_capacity(hosts * 80);
    s.push_str("hosts:\n");
    for i in 0..hosts {
        let _ = writeln!(
            s,
            "- {{name: h{i}, zone: z{}, inventories: {{VCPU: {{total: 64}}, MEMORY_MB: {{total: 262144}}}}}}",
            i % 3
        );
    }
    s
}

/// `events` events in YAML: one placement for every nine releases (about 3.6 million nodes for a
/// million events).
fn stream_yaml(events: usize) -> String {
    let mut s = String::with_capacity(events * 24);
    s.push_str("events:\n");
    for i in 0..events {
        if i % 10 == 0 {
            let _ = writeln!(s, "- place: {{id: vm{i}, resources: {{VCPU: 2}}}}");
        } else {
            let _ = writeln!(s, "- release: vm{}", i - i % 10);
        }
    }
    s
}

#[test]
fn a_100k_host_yaml_cluster_loads() {
    let text = cluster_yaml(100_000);
    let spec: ClusterSpec = parse(&text, Format::Yaml).expect("100k hosts load");
    assert_eq!(spec.hosts.len(), 100_000);
    assert_eq!(spec.hosts[99_999].name, "h99999");
    let cluster = Cluster::from_spec(&spec).expect("and validate");
    assert_eq!(cluster.host_count(), 100_000);
    assert_eq!(cluster.slots().len(), 200_000);
}

#[test]
fn a_1m_event_yaml_stream_loads() {
    let text = stream_yaml(1_000_000);
    let stream: RequestStream = parse(&text, Format::Yaml).expect("1M events load");
    assert_eq!(stream.events.len(), 1_000_000);
    assert!(matches!(&stream.events[19], StreamEvent::Release(id) if id == "vm10"));
    assert!(matches!(&stream.events[999_990], StreamEvent::Place(r) if r.id == "vm999990"));
}

#[test]
fn a_document_over_the_node_limit_is_refused_naming_the_limit_and_the_document() {
    let text = stream_yaml(1_000);
    let limits = Limits {
        max_yaml_nodes: 2_000,
        ..Limits::default()
    };
    let Err(err) = parse_with_limits::<RequestStream>(&text, Format::Yaml, &limits) else {
        panic!("over the limit, yet parsed")
    };
    assert!(
        matches!(&err, ModelError::DocumentTooLarge { what, limit: "max_yaml_nodes", max: 2_000, .. }
            if what == "request stream"),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("request stream (YAML): "),
        "{err}"
    );
    assert!(
        err.to_string().contains("`max_yaml_nodes` of 2000"),
        "{err}"
    );
}
