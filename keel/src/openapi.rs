//! The OpenAPI 3 document of the REST API, generated from the endpoint table
//! ([`crate::api::Endpoint`]) and the Rust types of the bodies (utoipa schemas), so it cannot
//! describe an API the server does not serve. The `keel-openapi` program prints it; the copy committed at
//! `keel/api/openapi.json` is checked against it by a test.

use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ComponentsBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref, RefOr, ResponseBuilder,
};
use utoipa::ToSchema;
use vmm_core::VmConfig;

use crate::api::{
    ApiError, ApiVmState, Endpoint, ExitInfo, Method, MigrationStatus, ReceiveMigrationRequest,
    Reply, RestoreRequest, SendMigrationRequest, SnapshotRequest, VmInfo, VmmPing,
};

fn schema_ref(name: &str) -> Ref {
    Ref::from_schema_name(name)
}

fn json(schema: impl Into<RefOr<Schema>>) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", json(schema_ref("ApiError")))
        .build()
}

/// The schema of `vmm_core::VmCounters` (its JSON is a map per device, written by hand).
fn counters_schema() -> Schema {
    let entry = ObjectBuilder::new()
        .property("id", ObjectBuilder::new().schema_type(Type::String))
        .required("id")
        .property(
            "kind",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("vcpu, serial, block, net, vsock, rng, virtio-<type>")),
        )
        .required("kind")
        .property(
            "counters",
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .additional_properties(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0)),
                ))
                .description(Some("counter name -> value")),
        )
        .required("counters")
        .build();
    ObjectBuilder::new()
        .property("vcpus", ArrayBuilder::new().items(entry.clone()))
        .required("vcpus")
        .property("devices", ArrayBuilder::new().items(entry))
        .required("devices")
        .description(Some(
            "vCPU exits by kind; the serial port then each virtio device with its counters",
        ))
        .into()
}

fn operation(endpoint: Endpoint) -> utoipa::openapi::path::Operation {
    let mut op = OperationBuilder::new()
        .operation_id(Some(endpoint.name().replace(['.', '-'], "_")))
        .summary(Some(endpoint.summary()));
    if let Some(schema) = endpoint.body_schema() {
        op = op.request_body(Some(
            RequestBodyBuilder::new()
                .content("application/json", json(schema_ref(schema)))
                .required(Some(utoipa::openapi::Required::True))
                .build(),
        ));
    }
    let ok = match endpoint.reply() {
        Reply::Empty => ("204", ResponseBuilder::new().description("Done").build()),
        Reply::Ping => (
            "200",
            ResponseBuilder::new()
                .description("The VMM's version and state")
                .content("application/json", json(schema_ref("VmmPing")))
                .build(),
        ),
        Reply::Info => (
            "200",
            ResponseBuilder::new()
                .description("The VM's config and state")
                .content("application/json", json(schema_ref("VmInfo")))
                .build(),
        ),
        Reply::Counters => (
            "200",
            ResponseBuilder::new()
                .description("The VM's counters")
                .content("application/json", json(schema_ref("VmCounters")))
                .build(),
        ),
        Reply::Migration => (
            "200",
            ResponseBuilder::new()
                .description("The migration's progress, report or error")
                .content("application/json", json(schema_ref("MigrationStatus")))
                .build(),
        ),
        Reply::Metrics => (
            "200",
            ResponseBuilder::new()
                .description("Prometheus text exposition format 0.0.4")
                .content(
                    "text/plain; version=0.0.4",
                    json(ObjectBuilder::new().schema_type(Type::String)),
                )
                .build(),
        ),
    };
    op = op.response(ok.0, ok.1);
    if endpoint.takes_body() {
        op = op
            .response(
                "400",
                error_response(
                    "Malformed body, or a config that does not validate (the field is named)",
                ),
            )
            .response("413", error_response("Body larger than 64 KiB"))
            .response("415", error_response("Body not JSON"));
    } else {
        op = op.response("400", error_response("A body where none is taken"));
    }
    op = op
        .response("405", error_response("Wrong method"))
        .response(
            "409",
            error_response("Not possible in the VM's current state"),
        )
        .response(
            "500",
            error_response("The VMM failed to carry out the request"),
        );
    op.build()
}

/// The API's OpenAPI document.
///
/// ```
/// let doc = keel::openapi::document();
/// assert!(doc.paths.paths.contains_key("/api/v1/vm.pause"));
/// ```
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for endpoint in Endpoint::ALL {
        let method = match endpoint.method() {
            Method::Get => HttpMethod::Get,
            Method::Put => HttpMethod::Put,
        };
        paths = paths.path(endpoint.path(), PathItem::new(method, operation(endpoint)));
    }
    let mut nested = Vec::new();
    VmConfig::schemas(&mut nested);
    VmInfo::schemas(&mut nested);
    let components = ComponentsBuilder::new()
        .schema_from::<VmConfig>()
        .schemas_from_iter(nested)
        .schema_from::<VmInfo>()
        .schema_from::<VmmPing>()
        .schema_from::<ApiVmState>()
        .schema_from::<ExitInfo>()
        .schema_from::<ApiError>()
        .schema_from::<SnapshotRequest>()
        .schema_from::<RestoreRequest>()
        .schema_from::<SendMigrationRequest>()
        .schema_from::<ReceiveMigrationRequest>()
        .schema_from::<MigrationStatus>()
        .schema_from::<vmm_core::config::RateLimitUpdate>()
        .schema("VmCounters", counters_schema())
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Keel VMM API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "One VM per keel process, driven over a Unix socket (--api-socket). \
                     Errors are JSON objects with an `error` sentence and, for config errors, \
                     the `field` at fault.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .build()
}

/// The document as pretty-printed JSON with a final newline, as committed.
pub fn document_json() -> String {
    match document().to_pretty_json() {
        Ok(text) => text + "\n",
        // Serializing plain data to a String cannot fail; keep the caller's output valid.
        Err(err) => format!("{{\"error\": \"{err}\"}}\n"),
    }
}
