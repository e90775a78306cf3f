//! Reading cluster descriptions and request streams from JSON or YAML text.
//!
//! The serde types ([`crate::ClusterSpec`], [`crate::PlacementRequest`],
//! [`crate::request::RequestStream`]) are the same for both formats. YAML goes through `serde-saphyr`
//! (behind the default `yaml` feature): a maintained, panic-free parser, unlike the archived
//! `serde_yaml`.

use crate::error::{ModelError, ParseError};
use serde::de::DeserializeOwned;
use std::path::Path;

/// A document format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// YAML (needs the `yaml` feature).
    Yaml,
}

impl Format {
    /// YAML for `.yaml`/`.yml` files (any case), JSON otherwise.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml") => {
                Format::Yaml
            }
            _ => Format::Json,
        }
    }
}

/// Parses `text` as `format` into `T`. Errors become [`ModelError::Parse`], with the parser's error
/// as the source.
pub fn parse<T: DeserializeOwned>(text: &str, format: Format) -> Result<T, ModelError> {
    match format {
        Format::Json => serde_json::from_str(text).map_err(|e| ModelError::Parse {
            format: "JSON",
            source: ParseError::new(e),
        }),
        Format::Yaml => parse_yaml(text),
    }
}

#[cfg(feature = "yaml")]
fn parse_yaml<T: DeserializeOwned>(text: &str) -> Result<T, ModelError> {
    serde_saphyr::from_str(text).map_err(|e| ModelError::Parse {
        format: "YAML",
        source: ParseError::new(e),
    })
}

#[cfg(not(feature = "yaml"))]
fn parse_yaml<T: DeserializeOwned>(_text: &str) -> Result<T, ModelError> {
    Err(ModelError::FormatUnavailable {
        format: "YAML",
        feature: "yaml",
    })
}

#[cfg(all(test, feature = "yaml"))]
mod tests {
    use super::*;
    use crate::request::{RequestStream, StreamEvent};
    use crate::{Cluster, ClusterSpec, PlacementRequest, Placer, Profile};
    use std::sync::Arc;

    const CLUSTER_YAML: &str = "
hosts:
  - name: a
    zone: z1
    traits: [HW_CPU_X86_AVX2]
    inventories:
      VCPU: {total: 16, allocation_ratio: 4.0}
      MEMORY_MB: {total: 65536}
  - name: b
    zone: z1
    inventories:
      VCPU: {total: 16}
      MEMORY_MB: {total: 32768}
";

    const CLUSTER_JSON: &str = r#"{"hosts": [
      {"name": "a", "zone": "z1", "traits": ["HW_CPU_X86_AVX2"],
       "inventories": {"VCPU": {"total": 16, "allocation_ratio": 4.0}, "MEMORY_MB": {"total": 65536}}},
      {"name": "b", "zone": "z1", "inventories": {"VCPU": {"total": 16}, "MEMORY_MB": {"total": 32768}}}]}"#;

    #[test]
    fn yaml_and_json_describe_the_same_cluster() {
        let y: ClusterSpec = parse(CLUSTER_YAML, Format::Yaml).unwrap();
        let j: ClusterSpec = parse(CLUSTER_JSON, Format::Json).unwrap();
        assert_eq!(y, j);
        let stream: RequestStream = parse(
            "
events:
  - place:
      id: vm-1
      resources: {VCPU: 8, MEMORY_MB: 8192}
      required_traits: [HW_CPU_X86_AVX2]
  - release: vm-1
",
            Format::Yaml,
        )
        .unwrap();
        let StreamEvent::Place(r) = &stream.events[0] else {
            panic!("{stream:?}")
        };
        let mut p = Placer::new(
            Arc::new(Cluster::from_spec(&y).unwrap()),
            Profile::default(),
            1,
        );
        assert_eq!(p.place(r).unwrap().host, "a");
        assert!(matches!(&stream.events[1], StreamEvent::Release(id) if id == "vm-1"));
        let one: PlacementRequest = parse("{id: x, resources: {VCPU: 1}}", Format::Yaml).unwrap();
        assert_eq!(one.resources["VCPU"], 1);
    }

    #[test]
    fn bad_yaml_is_an_error_naming_the_problem() {
        let e = parse::<ClusterSpec>(
            "hosts: [ {name: a, inventories: {VCPU: {total: x}}} ]",
            Format::Yaml,
        )
        .unwrap_err();
        assert!(matches!(e, ModelError::Parse { .. }), "{e:?}");
        assert!(std::error::Error::source(&e).is_some(), "{e:?}");
        let e =
            parse::<ClusterSpec>("hosts:\n  - name: a\n    bogus: 1\n", Format::Yaml).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(parse::<ClusterSpec>("hosts: [", Format::Yaml).is_err());
    }

    #[test]
    fn format_follows_the_extension() {
        assert_eq!(Format::from_path(Path::new("c.YML")), Format::Yaml);
        assert_eq!(Format::from_path(Path::new("c.yaml")), Format::Yaml);
        assert_eq!(Format::from_path(Path::new("c.json")), Format::Json);
        assert_eq!(Format::from_path(Path::new("c")), Format::Json);
    }
}
