//! Prints the keel REST API's OpenAPI 3 document (JSON), generated from the code:
//! `cargo run -p keel --bin keel-openapi > keel/api/openapi.json`.
//!
//! A program of its own rather than a `keel` subcommand, so the document generator's code is
//! not in the VMM's binary (its pages would add to every VM's resident memory).

fn main() {
    print!("{}", keel::openapi::document_json());
}
