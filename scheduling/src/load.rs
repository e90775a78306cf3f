//! Reading cluster descriptions and request streams from JSON or YAML text or files.
//!
//! The serde types ([`crate::ClusterSpec`], [`crate::PlacementRequest`],
//! [`crate::request::RequestStream`], [`crate::Placement`]) are the same for both formats. YAML goes
//! through `serde-saphyr` (behind the default `yaml` feature): a maintained, panic-free parser, unlike
//! the archived `serde_yaml`.
//!
//! **Size budget.** Any document that validates loads, up to the [`Limits`] in force, which are
//! documented and enforced the same way for both formats: by default a document may be up to
//! [`Limits::DEFAULT_MAX_BYTES`] (1 GiB) long and, in YAML, hold up to
//! [`Limits::DEFAULT_MAX_YAML_NODES`] (200 million) nodes, far beyond a 100,000-host cluster (about
//! 10 million nodes with NUMA trees) or a stream of a million requests. A document over a limit is
//! refused with [`ModelError::DocumentTooLarge`], naming the document, the limit and its value; no
//! parser limit is ever reported as a syntax error.
//!
//! **Errors** name what was being parsed (`cluster description`, `request stream`, the file's path
//! when read from a file) and, when the parser knows it, the line and column
//! ([`ModelError::Parse`]). **Duplicate keys** are refused in both formats: YAML by the parser,
//! JSON by the serde types (every map of the input types refuses a key given twice, and structs
//! refuse a field given twice).

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

    fn name(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::Yaml => "YAML",
        }
    }
}

/// A type that can be loaded as a whole document: its name is what parse errors call it.
pub trait Document: DeserializeOwned {
    /// What parse errors call a document of this type (`cluster description`, ...).
    const WHAT: &'static str;
}

impl Document for crate::ClusterSpec {
    const WHAT: &'static str = "cluster description";
}

impl Document for crate::PlacementRequest {
    const WHAT: &'static str = "placement request";
}

impl Document for Vec<crate::PlacementRequest> {
    const WHAT: &'static str = "list of placement requests";
}

impl Document for crate::request::RequestStream {
    const WHAT: &'static str = "request stream";
}

impl Document for crate::Placement {
    const WHAT: &'static str = "placement";
}

impl Document for Vec<crate::Placement> {
    const WHAT: &'static str = "list of placements";
}

/// Size limits enforced on every document loaded (see the module documentation).
///
/// ```
/// use scheduling::load::{parse_with_limits, Format, Limits};
/// use scheduling::{ClusterSpec, ModelError};
/// let tiny = Limits { max_bytes: 16, ..Limits::default() };
/// let err = parse_with_limits::<ClusterSpec>(r#"{"hosts": [{"name": "a"}]}"#, Format::Json, &tiny)
///     .unwrap_err();
/// assert!(matches!(err, ModelError::DocumentTooLarge { limit: "max_bytes", .. }));
/// assert_eq!(err.to_string(), "cluster description (JSON): 26 bytes exceeds the limit \
///     `max_bytes` of 16; raise it in scheduling::load::Limits");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest document, in bytes (both formats).
    pub max_bytes: usize,
    /// Most YAML nodes (scalars, sequences and mappings; about 100 per host with two NUMA nodes,
    /// about 10 per request).
    pub max_yaml_nodes: usize,
    /// Deepest YAML nesting of sequences and mappings (JSON: `serde_json`'s own limit of 128).
    pub max_yaml_depth: usize,
}

impl Limits {
    /// Default [`Limits::max_bytes`]: 1 GiB.
    pub const DEFAULT_MAX_BYTES: usize = 1 << 30;
    /// Default [`Limits::max_yaml_nodes`]: 200 million.
    pub const DEFAULT_MAX_YAML_NODES: usize = 200_000_000;
    /// Default [`Limits::max_yaml_depth`]: 64 (a provider tree nests at most 8 levels, each two
    /// YAML levels deep).
    pub const DEFAULT_MAX_YAML_DEPTH: usize = 64;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_yaml_nodes: Self::DEFAULT_MAX_YAML_NODES,
            max_yaml_depth: Self::DEFAULT_MAX_YAML_DEPTH,
        }
    }
}

/// Parses `text` as `format` into `T`, within the default [`Limits`]. Errors name what `T` is.
pub fn parse<T: Document>(text: &str, format: Format) -> Result<T, ModelError> {
    parse_with_limits(text, format, &Limits::default())
}

/// Parses `text` as `format` into `T` within `limits`.
pub fn parse_with_limits<T: Document>(
    text: &str,
    format: Format,
    limits: &Limits,
) -> Result<T, ModelError> {
    parse_named(text, format, limits, T::WHAT.to_string())
}

/// Reads and parses a file (YAML if named `.yaml`/`.yml`, else JSON) within `limits`. Errors name
/// the file as well as what `T` is.
pub fn from_file<T: Document>(path: &Path, limits: &Limits) -> Result<T, ModelError> {
    let shown = path.display().to_string();
    let len = std::fs::metadata(path)
        .map_err(|e| io_error(&shown, e))?
        .len();
    let format = Format::from_path(path);
    let what = format!("{} `{shown}`", T::WHAT);
    if len > limits.max_bytes as u64 {
        return Err(too_large(what, format, "max_bytes", limits.max_bytes, len));
    }
    let text = std::fs::read_to_string(path).map_err(|e| io_error(&shown, e))?;
    parse_named(&text, format, limits, what)
}

fn io_error(path: &str, e: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.to_string(),
        source: ParseError::new(e),
    }
}

fn too_large(
    what: String,
    format: Format,
    limit: &'static str,
    max: usize,
    bytes: u64,
) -> ModelError {
    ModelError::DocumentTooLarge {
        what,
        format: format.name(),
        limit,
        max: max as u64,
        found: format!("{bytes} bytes"),
    }
}

fn parse_named<T: DeserializeOwned>(
    text: &str,
    format: Format,
    limits: &Limits,
    what: String,
) -> Result<T, ModelError> {
    if text.len() > limits.max_bytes {
        return Err(too_large(
            what,
            format,
            "max_bytes",
            limits.max_bytes,
            text.len() as u64,
        ));
    }
    match format {
        Format::Json => serde_json::from_str(text).map_err(|e| {
            // serde_json reports line 0 for errors without a position (e.g. from a custom type).
            let line = (e.line() > 0).then_some(e.line() as u64);
            ModelError::Parse {
                what,
                format: "JSON",
                line,
                column: line.map(|_| e.column() as u64),
                source: ParseError::new(e),
            }
        }),
        Format::Yaml => parse_yaml(text, limits, what),
    }
}

#[cfg(feature = "yaml")]
fn parse_yaml<T: DeserializeOwned>(
    text: &str,
    limits: &Limits,
    what: String,
) -> Result<T, ModelError> {
    use serde_saphyr::budget::{Budget, BudgetBreach};
    let mut budget = Budget::default();
    budget.max_nodes = limits.max_yaml_nodes;
    // Every node is at most a start and an end event, plus the stream's and document's own.
    budget.max_events = limits.max_yaml_nodes.saturating_mul(2).saturating_add(16);
    budget.max_total_scalar_bytes = limits.max_bytes;
    budget.max_reader_input_bytes = Some(limits.max_bytes);
    budget.max_depth = limits.max_yaml_depth;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let over = |limit: &'static str, max: usize, found: String| ModelError::DocumentTooLarge {
            what: what.clone(),
            format: "YAML",
            limit,
            max: max as u64,
            found,
        };
        let mut inner = &e;
        while let serde_saphyr::Error::WithSnippet { error, .. }
        | serde_saphyr::Error::AliasError { error, .. } = inner
        {
            inner = error;
        }
        if let serde_saphyr::Error::Budget { breach, .. } = inner {
            match breach {
                BudgetBreach::Nodes { nodes } => {
                    return over(
                        "max_yaml_nodes",
                        limits.max_yaml_nodes,
                        format!("{nodes} nodes"),
                    )
                }
                BudgetBreach::Events { events } => {
                    return over(
                        "max_yaml_nodes",
                        limits.max_yaml_nodes,
                        format!("{events} parser events (two per node)"),
                    )
                }
                BudgetBreach::Depth { depth } => {
                    return over(
                        "max_yaml_depth",
                        limits.max_yaml_depth,
                        format!("nesting depth {depth}"),
                    )
                }
                BudgetBreach::ScalarBytes { total_scalar_bytes } => {
                    return over(
                        "max_bytes",
                        limits.max_bytes,
                        format!("{total_scalar_bytes} bytes of scalars"),
                    )
                }
                _ => {}
            }
        }
        let location = e.location();
        ModelError::Parse {
            what,
            format: "YAML",
            line: location.map(|l| l.line()),
            column: location.map(|l| l.column()),
            source: ParseError::new(e),
        }
    })
}

#[cfg(not(feature = "yaml"))]
fn parse_yaml<T: DeserializeOwned>(
    _text: &str,
    _limits: &Limits,
    _what: String,
) -> Result<T, ModelError> {
    Err(ModelError::FormatUnavailable {
        format: "YAML",
        feature: "yaml",
    })
}

/// Deserialises a map refusing a key given twice (serde's maps keep the last value silently; YAML's
/// parser refuses duplicates itself, JSON's does not). Used on every map of the input types.
pub(crate) mod unique_keys {
    use serde::{Deserialize, Deserializer};
    use serde_with::{DeserializeAs, MapPreventDuplicates, Same};
    use std::collections::BTreeMap;

    pub fn deserialize<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        <MapPreventDuplicates<Same, Same> as DeserializeAs<'de, BTreeMap<K, V>>>::deserialize_as(d)
    }
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
    fn bad_yaml_is_an_error_naming_the_document_and_position() {
        let e = parse::<ClusterSpec>(
            "hosts: [ {name: a, inventories: {VCPU: {total: x}}} ]",
            Format::Yaml,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                ModelError::Parse {
                    line: Some(1),
                    column: Some(_),
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(std::error::Error::source(&e).is_some(), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("cannot parse cluster description (YAML) at line 1, column "),
            "{e}"
        );
        let e = parse::<RequestStream>("events:\n  - release: a\n  - bogus: 1\n", Format::Yaml)
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot parse request stream (YAML) at line 3, column "),
            "{e}"
        );
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(parse::<ClusterSpec>("hosts: [", Format::Yaml).is_err());
    }

    #[test]
    fn duplicate_keys_are_refused_in_both_formats() {
        let json = r#"{"hosts": [{"name": "a", "inventories": {"VCPU": {"total": 4}, "VCPU": {"total": 8}}}]}"#;
        let e = parse::<ClusterSpec>(json, Format::Json).unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
        assert!(
            matches!(e, ModelError::Parse { line: Some(1), .. }),
            "{e:?}"
        );
        let e = parse::<ClusterSpec>(r#"{"hosts": [{"name": "a", "name": "b"}]}"#, Format::Json)
            .unwrap_err();
        assert!(e.to_string().contains("duplicate field `name`"), "{e}");
        let e = parse::<PlacementRequest>(
            r#"{"id": "x", "resources": {"VCPU": 1, "VCPU": 2}}"#,
            Format::Json,
        )
        .unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
        let yaml = "hosts:\n  - name: a\n    inventories:\n      VCPU: {total: 4}\n      VCPU: {total: 8}\n";
        let e = parse::<ClusterSpec>(yaml, Format::Yaml).unwrap_err();
        assert!(e.to_string().to_lowercase().contains("duplicate"), "{e}");
    }

    #[test]
    fn limits_are_enforced_with_errors_naming_them() {
        let tight = Limits {
            max_yaml_nodes: 20,
            ..Limits::default()
        };
        let e = parse_with_limits::<ClusterSpec>(CLUSTER_YAML, Format::Yaml, &tight).unwrap_err();
        assert!(
            matches!(
                &e,
                ModelError::DocumentTooLarge { limit: "max_yaml_nodes", max: 20, what, .. }
                    if what == "cluster description"
            ),
            "{e:?}"
        );
        let deep = Limits {
            max_yaml_depth: 3,
            ..Limits::default()
        };
        let e = parse_with_limits::<ClusterSpec>(CLUSTER_YAML, Format::Yaml, &deep).unwrap_err();
        assert!(
            matches!(
                e,
                ModelError::DocumentTooLarge {
                    limit: "max_yaml_depth",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            parse_with_limits::<ClusterSpec>(CLUSTER_YAML, Format::Yaml, &Limits::default())
                .is_ok()
        );
    }

    #[test]
    fn files_are_named_in_errors() {
        let dir = std::env::temp_dir().join(format!("keel-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stream.yaml");
        std::fs::write(
            &path,
            "events:\n  - place: {id: a, resources: {VCPU: one}}\n",
        )
        .unwrap();
        let e = from_file::<RequestStream>(&path, &Limits::default()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot parse request stream `{}` (YAML) at line 2",
                path.display()
            )),
            "{text}"
        );
        let missing = dir.join("missing.json");
        let e = from_file::<ClusterSpec>(&missing, &Limits::default()).unwrap_err();
        assert!(matches!(e, ModelError::Io { .. }), "{e:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn format_follows_the_extension() {
        assert_eq!(Format::from_path(Path::new("c.YML")), Format::Yaml);
        assert_eq!(Format::from_path(Path::new("c.yaml")), Format::Yaml);
        assert_eq!(Format::from_path(Path::new("c.json")), Format::Json);
        assert_eq!(Format::from_path(Path::new("c")), Format::Json);
    }
}
