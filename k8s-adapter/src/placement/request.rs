//! A VMI (or a running launcher pod) as a `scheduling` placement request.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, NodeSelectorRequirement, PodAffinityTerm, Toleration, TopologySpreadConstraint,
};
use kube::ResourceExt;
use scheduling::model::{ServerGroupPolicy, ServerGroupSpec, TaintEffect};
use scheduling::request::{
    LabelExpression, LabelOperator, PreferredTerm, SpreadConstraint, Toleration as KeelToleration,
    TolerationOperator, TopologyKey, WhenUnsatisfiable,
};
use scheduling::PlacementRequest;

use super::{MEMORY, MILLIS_PER_VCPU_UNIT, VCPU};
use crate::api::VirtualMachineInstance;
use crate::overhead;

/// `kubernetes.io/hostname`.
pub const HOSTNAME_KEY: &str = "kubernetes.io/hostname";
/// `topology.kubernetes.io/zone`.
pub const ZONE_KEY: &str = "topology.kubernetes.io/zone";

/// A constraint Keel's placement cannot express, with the field that holds it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {why} (not supported by schedulerName: keel; use the default scheduler)")]
pub struct UnsupportedConstraint {
    /// The field, from the VMI's spec.
    pub field: String,
    /// What is not supported.
    pub why: String,
}

fn unsupported(field: impl Into<String>, why: impl Into<String>) -> UnsupportedConstraint {
    UnsupportedConstraint {
        field: field.into(),
        why: why.into(),
    }
}

/// What a workload asks of placement, whether it is a new VMI or a running launcher pod.
#[derive(Clone, Copy, Debug)]
pub struct Constraints<'a> {
    /// Its namespace (server groups are per namespace, as pod affinity is).
    pub namespace: &'a str,
    /// Its labels (matched by other workloads' pod affinity).
    pub labels: &'a BTreeMap<String, String>,
    /// nodeSelector.
    pub node_selector: &'a BTreeMap<String, String>,
    /// affinity.
    pub affinity: Option<&'a Affinity>,
    /// tolerations.
    pub tolerations: &'a [Toleration],
    /// topologySpreadConstraints.
    pub spread: &'a [TopologySpreadConstraint],
}

/// A request, and the server group it joins (declared in the cluster when first seen).
#[derive(Clone, Debug)]
pub struct Translated {
    /// The request.
    pub request: PlacementRequest,
    /// Its server group.
    pub group: Option<ServerGroupSpec>,
}

/// The request for `vmi`: its launcher pod's requests and its constraints. The id is its uid.
pub fn for_vmi(vmi: &VirtualMachineInstance) -> Result<Translated, UnsupportedConstraint> {
    let spec = &vmi.spec;
    let vcpus = spec.vcpus();
    let guest = spec
        .guest_memory_bytes()
        .map_err(|e| unsupported("spec.domain.memory.guest", e.to_string()))?;
    let memory_mb = overhead::pod_memory_bytes(vcpus, guest) >> 20;
    let cpu_units = overhead::pod_cpu_request_millis(vcpus).div_ceil(MILLIS_PER_VCPU_UNIT);
    let id = vmi.uid().unwrap_or_else(|| vmi.name_any());
    let namespace = vmi.namespace().unwrap_or_default();
    translate(
        &id,
        &[
            (MEMORY, i64::try_from(memory_mb).unwrap_or(i64::MAX)),
            (VCPU, i64::try_from(cpu_units).unwrap_or(i64::MAX)),
        ],
        &Constraints {
            namespace: &namespace,
            labels: vmi.labels(),
            node_selector: &spec.node_selector,
            affinity: spec.affinity.as_ref(),
            tolerations: &spec.tolerations,
            spread: &spec.topology_spread_constraints,
        },
    )
}

/// The request for a workload with `resources` (class, amount) and `constraints`.
pub fn translate(
    id: &str,
    resources: &[(&str, i64)],
    constraints: &Constraints<'_>,
) -> Result<Translated, UnsupportedConstraint> {
    let mut request = PlacementRequest::new(id, resources);
    request.node_selector = constraints.node_selector.clone();
    request.tolerations = constraints
        .tolerations
        .iter()
        .enumerate()
        .map(|(i, t)| toleration(i, t))
        .collect::<Result<_, _>>()?;
    let mut group = None;
    if let Some(affinity) = constraints.affinity {
        node_affinity(affinity, &mut request)?;
        group = pod_affinity(affinity, constraints)?;
    }
    for (i, spread) in constraints.spread.iter().enumerate() {
        let field = format!("spec.topologySpreadConstraints[{i}]");
        let key = match spread.topology_key.as_str() {
            ZONE_KEY => TopologyKey::Zone,
            other => {
                return Err(unsupported(
                    field,
                    format!("topologyKey {other} (only {ZONE_KEY})"),
                ))
            }
        };
        let name = group_name(
            "spread",
            constraints.namespace,
            spread
                .label_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref()),
            &field,
        )?;
        if !selects(
            constraints.labels,
            spread
                .label_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref()),
        ) {
            return Err(unsupported(
                field,
                "the labelSelector must select the VMI itself",
            ));
        }
        if group
            .as_ref()
            .is_some_and(|g: &ServerGroupSpec| g.name != name)
        {
            return Err(unsupported(
                field,
                "topology spread together with pod (anti-)affinity",
            ));
        }
        request.topology_spread.push(SpreadConstraint {
            key,
            max_skew: u32::try_from(spread.max_skew.max(1)).unwrap_or(1),
            when_unsatisfiable: match spread.when_unsatisfiable.as_str() {
                "ScheduleAnyway" => WhenUnsatisfiable::ScheduleAnyway,
                _ => WhenUnsatisfiable::DoNotSchedule,
            },
        });
        group.get_or_insert(ServerGroupSpec {
            name,
            policy: ServerGroupPolicy::SoftAntiAffinity,
            max_per_host: None,
        });
    }
    request.server_group = group.as_ref().map(|g| g.name.clone());
    Ok(Translated { request, group })
}

fn toleration(i: usize, t: &Toleration) -> Result<KeelToleration, UnsupportedConstraint> {
    let field = || format!("spec.tolerations[{i}]");
    let operator = match t.operator.as_deref() {
        None | Some("Equal") => TolerationOperator::Equal,
        Some("Exists") => TolerationOperator::Exists,
        Some(other) => return Err(unsupported(field(), format!("operator {other}"))),
    };
    let effect = match t.effect.as_deref() {
        None | Some("") => None,
        Some("NoSchedule") => Some(TaintEffect::NoSchedule),
        Some("PreferNoSchedule") => Some(TaintEffect::PreferNoSchedule),
        Some("NoExecute") => Some(TaintEffect::NoExecute),
        Some(other) => return Err(unsupported(field(), format!("effect {other}"))),
    };
    Ok(KeelToleration {
        key: t.key.clone().unwrap_or_default(),
        operator,
        value: t.value.clone().unwrap_or_default(),
        effect,
    })
}

fn expression(
    field: &str,
    r: &NodeSelectorRequirement,
) -> Result<LabelExpression, UnsupportedConstraint> {
    let operator = match r.operator.as_str() {
        "In" => LabelOperator::In,
        "NotIn" => LabelOperator::NotIn,
        "Exists" => LabelOperator::Exists,
        "DoesNotExist" => LabelOperator::DoesNotExist,
        other => return Err(unsupported(field, format!("operator {other}"))),
    };
    Ok(LabelExpression {
        key: r.key.clone(),
        operator,
        values: r.values.clone().unwrap_or_default(),
    })
}

fn node_affinity(
    affinity: &Affinity,
    request: &mut PlacementRequest,
) -> Result<(), UnsupportedConstraint> {
    let Some(node) = &affinity.node_affinity else {
        return Ok(());
    };
    if let Some(required) = &node.required_during_scheduling_ignored_during_execution {
        let base = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution";
        match required.node_selector_terms.as_slice() {
            [] => {}
            [term] => {
                if term.match_fields.as_ref().is_some_and(|f| !f.is_empty()) {
                    return Err(unsupported(
                        format!("{base}.nodeSelectorTerms[0].matchFields"),
                        "field selectors",
                    ));
                }
                for (i, r) in term.match_expressions.iter().flatten().enumerate() {
                    let field = format!("{base}.nodeSelectorTerms[0].matchExpressions[{i}]");
                    request.node_affinity.push(expression(&field, r)?);
                }
            }
            _ => {
                return Err(unsupported(
                    format!("{base}.nodeSelectorTerms"),
                    "more than one term (ORed terms)",
                ))
            }
        }
    }
    for (i, preferred) in node
        .preferred_during_scheduling_ignored_during_execution
        .iter()
        .flatten()
        .enumerate()
    {
        for (j, r) in preferred
            .preference
            .match_expressions
            .iter()
            .flatten()
            .enumerate()
        {
            let field = format!("spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[{i}].preference.matchExpressions[{j}]");
            request.preferred_affinity.push(PreferredTerm {
                weight: i64::from(preferred.weight),
                expression: expression(&field, r)?,
            });
        }
    }
    Ok(())
}

fn selects(labels: &BTreeMap<String, String>, selector: Option<&BTreeMap<String, String>>) -> bool {
    selector.is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

fn group_name(
    kind: &str,
    namespace: &str,
    selector: Option<&BTreeMap<String, String>>,
    field: &str,
) -> Result<String, UnsupportedConstraint> {
    let selector = selector
        .filter(|s| !s.is_empty())
        .ok_or_else(|| unsupported(field, "a labelSelector without matchLabels"))?;
    let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(format!("{kind}:{namespace}:{}", labels.join(",")))
}

fn one_term<'a>(
    terms: Option<&'a Vec<PodAffinityTerm>>,
    field: &str,
) -> Result<Option<&'a PodAffinityTerm>, UnsupportedConstraint> {
    match terms.map(Vec::as_slice) {
        None | Some([]) => Ok(None),
        Some([term]) => Ok(Some(term)),
        Some(_) => Err(unsupported(field, "more than one term")),
    }
}

fn pod_affinity(
    affinity: &Affinity,
    constraints: &Constraints<'_>,
) -> Result<Option<ServerGroupSpec>, UnsupportedConstraint> {
    let anti = affinity.pod_anti_affinity.as_ref().and_then(|a| {
        a.required_during_scheduling_ignored_during_execution
            .as_ref()
    });
    let with = affinity.pod_affinity.as_ref().and_then(|a| {
        a.required_during_scheduling_ignored_during_execution
            .as_ref()
    });
    let anti_field = "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution";
    let with_field = "spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution";
    let terms = [
        (
            one_term(anti, anti_field)?,
            anti_field,
            "anti",
            ServerGroupPolicy::AntiAffinity,
        ),
        (
            one_term(with, with_field)?,
            with_field,
            "affinity",
            ServerGroupPolicy::Affinity,
        ),
    ];
    let mut group = None;
    for (term, field, kind, policy) in terms {
        let Some(term) = term else { continue };
        if group.is_some() {
            return Err(unsupported(
                field,
                "pod affinity together with pod anti-affinity",
            ));
        }
        if term.topology_key != HOSTNAME_KEY {
            return Err(unsupported(
                format!("{field}[0].topologyKey"),
                format!("{} (only {HOSTNAME_KEY})", term.topology_key),
            ));
        }
        let selector = term
            .label_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref());
        if !selects(constraints.labels, selector) {
            return Err(unsupported(
                format!("{field}[0].labelSelector"),
                "the labelSelector must select the VMI itself (a group of alike VMs)",
            ));
        }
        group = Some(ServerGroupSpec {
            name: group_name(kind, constraints.namespace, selector, field)?,
            policy,
            max_per_host: None,
        });
    }
    Ok(group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        NodeAffinity, NodeSelector, NodeSelectorTerm, PodAntiAffinity,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn constraints<'a>(
        l: &'a BTreeMap<String, String>,
        sel: &'a BTreeMap<String, String>,
        affinity: Option<&'a Affinity>,
        tolerations: &'a [Toleration],
    ) -> Constraints<'a> {
        Constraints {
            namespace: "ns",
            labels: l,
            node_selector: sel,
            affinity,
            tolerations,
            spread: &[],
        }
    }

    #[test]
    fn selectors_affinity_and_tolerations_become_request_fields() {
        let l = labels(&[("app", "web")]);
        let sel = labels(&[("disk", "ssd")]);
        let affinity = Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: ZONE_KEY.into(),
                            operator: "In".into(),
                            values: Some(vec!["a".into(), "b".into()]),
                        }]),
                        match_fields: None,
                    }],
                }),
                ..Default::default()
            }),
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(labels(&[("app", "web")])),
                        ..Default::default()
                    }),
                    topology_key: HOSTNAME_KEY.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let tolerations = [Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("vm".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }];
        let t = translate(
            "u1",
            &[(MEMORY, 138), (VCPU, 2)],
            &constraints(&l, &sel, Some(&affinity), &tolerations),
        )
        .unwrap();
        let r = &t.request;
        assert_eq!(r.resources[MEMORY], 138);
        assert_eq!(r.node_selector["disk"], "ssd");
        assert_eq!(r.node_affinity[0].operator, LabelOperator::In);
        assert_eq!(r.tolerations[0].to_string(), "dedicated=vm:NoSchedule");
        let group = t.group.unwrap();
        assert_eq!(group.name, "anti:ns:app=web");
        assert_eq!(group.policy, ServerGroupPolicy::AntiAffinity);
        assert_eq!(r.server_group.as_deref(), Some("anti:ns:app=web"));
    }

    #[test]
    fn constraints_keel_cannot_express_are_refused_with_their_field() {
        let l = labels(&[]);
        let sel = labels(&[]);
        let two_terms = Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![
                        NodeSelectorTerm::default(),
                        NodeSelectorTerm::default(),
                    ],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = translate(
            "u",
            &[(VCPU, 1)],
            &constraints(&l, &sel, Some(&two_terms), &[]),
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms");
        let gt = [Toleration {
            operator: Some("Gt".into()),
            ..Default::default()
        }];
        let err = translate("u", &[(VCPU, 1)], &constraints(&l, &sel, None, &gt)).unwrap_err();
        assert_eq!(err.to_string(), "spec.tolerations[0]: operator Gt (not supported by schedulerName: keel; use the default scheduler)");
    }
}
