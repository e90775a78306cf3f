//! Prints the CRDs of `keel.dev/v1alpha1` as YAML (committed as `k8s-adapter/deploy/crds.yaml`).

fn main() -> std::process::ExitCode {
    match k8s_adapter::crd::crds_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("keel-crdgen: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
