//! Placement quality of the bounded, ordered samples the default profiles use, against scoring every
//! feasible host.

use scheduling::generator::SplitMix64;
use scheduling::generator::{self, ClusterShape};
use scheduling::{Cluster, HostId, Placer, Policy, Profile, Sampling, ScanOrder};
use std::sync::Arc;

/// Mean utilisation (percent, VCPU and memory averaged, as LeastAllocated sees it) of `host` before
/// a 2 vCPU / 4 GiB VM was added to it.
fn load_before(p: &Placer, host: HostId) -> f64 {
    let c = p.state().cluster();
    let vcpu = c.class_id("VCPU").unwrap();
    let mem = c.class_id("MEMORY_MB").unwrap();
    [(vcpu, 2), (mem, 4096)]
        .iter()
        .map(|(cl, a)| {
            (p.state().host_used(host, *cl) - a) as f64 * 100.0 / c.host_capacity(host, *cl) as f64
        })
        .sum::<f64>()
        / 2.0
}

fn spread_run(sampling: Option<Sampling>, order: Option<ScanOrder>) -> f64 {
    let spec = generator::cluster(ClusterShape::new(400, 5));
    let cluster = Arc::new(Cluster::from_spec(&spec).unwrap());
    // An uneven start: packed mixed VMs, then more on the first feasible host from a rotating start.
    let one = Sampling {
        min_feasible: 1,
        percentage: 1,
        max_feasible: 1,
    };
    let profile = Profile::for_policy(Policy::Spread)
        .with_sampling(one)
        .with_scan_order(ScanOrder::Rotating);
    let mut p = Placer::new(cluster.clone(), Profile::for_policy(Policy::Pack), 1);
    let mut r = SplitMix64::new(3);
    for i in 0..5000 {
        p.place(&generator::mixed_request(&mut r, format!("pack{i}")))
            .unwrap();
    }
    let state = p.state().clone();
    let mut p = Placer::new(cluster, profile, 1);
    *p.state_mut() = state;
    for i in 0..4000 {
        p.place(&generator::mixed_request(&mut r, format!("rr{i}")))
            .unwrap();
    }
    let state = p.state().clone();
    let mut profile = Profile::for_policy(Policy::Spread);
    if let Some(s) = sampling {
        profile = profile.with_sampling(s);
    }
    if let Some(o) = order {
        profile = profile.with_scan_order(o);
    }
    let mut p = Placer::new(state.cluster().clone(), profile, 7);
    *p.state_mut() = state;
    let mut sum = 0.0;
    let n = 300;
    for req in generator::homogeneous(n, "w1-").requests {
        let placed = p.place(&req).unwrap();
        let host = p.state().cluster().host_id(&placed.host).unwrap();
        sum += load_before(&p, host);
    }
    assert!(p.state().check_consistency().is_empty());
    sum / n as f64
}

#[test]
fn spread_with_a_small_ordered_sample_is_close_to_exhaustive() {
    let sampled = spread_run(None, None);
    let exhaustive = spread_run(Some(Sampling::EXHAUSTIVE), None);
    let rotating = spread_run(Some(Sampling::default()), Some(ScanOrder::Rotating));
    eprintln!(
        "mean load of the host chosen: default {sampled:.1}%, exhaustive {exhaustive:.1}%, rotating 64 {rotating:.1}%"
    );
    assert!(sampled <= exhaustive + 3.0, "{sampled} vs {exhaustive}");
    assert!(sampled <= rotating, "{sampled} vs {rotating}");
}
