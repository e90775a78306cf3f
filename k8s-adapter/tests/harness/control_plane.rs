//! etcd, kube-apiserver and kube-scheduler as child processes on 127.0.0.1, a kubeconfig, and
//! Node objects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use serde_json::json;

use super::{certs, free_port, server_binaries, HarnessError};

/// One server process, killed when dropped.
pub struct Server {
    /// Its name.
    pub name: String,
    /// The process.
    pub child: Child,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
}

impl Server {
    fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<Server, HarnessError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| HarnessError::io(&log, e))?;
        let err_file = file.try_clone().map_err(|e| HarnessError::io(&log, e))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err_file)
            .spawn()
            .map_err(|e| HarnessError::io(program, e))?;
        Ok(Server {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(3000);
        text.get(start..).unwrap_or_default().to_string()
    }

    /// Kills it (SIGKILL) and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Node to create.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Name.
    pub name: String,
    /// Allocatable CPU (`8`, `3500m`).
    pub cpu: String,
    /// Allocatable memory (`16Gi`).
    pub memory: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Taints as `key=value:Effect`.
    pub taints: Vec<String>,
}

impl NodeSpec {
    /// A node with `cpu` and `memory` and no labels or taints.
    pub fn new(name: &str, cpu: &str, memory: &str) -> Self {
        NodeSpec {
            name: name.to_string(),
            cpu: cpu.to_string(),
            memory: memory.to_string(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
        }
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Adds a taint (`key=value:Effect`).
    pub fn taint(mut self, taint: &str) -> Self {
        self.taints.push(taint.to_string());
        self
    }
}

/// A running control plane.
pub struct ControlPlane {
    /// Its directory (data, certificates, logs, kubeconfig).
    pub dir: PathBuf,
    /// The server binaries' directory.
    pub bin: PathBuf,
    /// The kubeconfig (token auth, system:masters).
    pub kubeconfig: PathBuf,
    /// kube-apiserver's port on 127.0.0.1.
    pub api_port: u16,
    etcd: Option<Server>,
    apiserver: Option<Server>,
    scheduler: Option<Server>,
    apiserver_args: Vec<String>,
}

const TOKEN: &str = "keel-test-admin-token";

impl ControlPlane {
    /// Starts etcd, kube-apiserver (waits for `/readyz`) and, with `scheduler`, kube-scheduler.
    pub fn start(dir: &Path, scheduler: bool) -> Result<ControlPlane, HarnessError> {
        let bin = server_binaries()?;
        std::fs::create_dir_all(dir).map_err(|e| HarnessError::io(dir, e))?;
        let certs = certs::generate(&dir.join("pki"))?;
        let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_dir = dir.join("etcd");
        let s = |p: &Path| p.display().to_string();
        let etcd = Server::spawn(
            "etcd",
            &bin.join("etcd"),
            &[
                "--name=keel-test".into(),
                format!("--data-dir={}", s(&etcd_dir)),
                format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-cluster=keel-test=http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            dir.join("etcd.log"),
        )?;
        let tokens = dir.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!("{TOKEN},keel-admin,keel-admin-uid,\"system:masters\"\n"),
        )
        .map_err(|e| HarnessError::io(&tokens, e))?;
        let apiserver_args = vec![
            format!("--etcd-servers=http://127.0.0.1:{client_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--tls-cert-file={}", s(&certs.server_cert)),
            format!("--tls-private-key-file={}", s(&certs.server_key)),
            format!("--client-ca-file={}", s(&certs.ca)),
            format!("--token-auth-file={}", s(&tokens)),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!(
                "--service-account-key-file={}",
                s(&certs.service_account_pub)
            ),
            format!(
                "--service-account-signing-key-file={}",
                s(&certs.service_account_key)
            ),
            "--service-cluster-ip-range=10.96.0.0/24".into(),
            // The kubernetes Service endpoints cannot be a loopback address.
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={}", s(&dir.join("apiserver-certs"))),
            // No controller-manager creates service accounts or removes the not-ready taint
            // that TaintNodesByCondition puts on new Nodes.
            "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        let kubeconfig = dir.join("kubeconfig");
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: keel-test\n  cluster:\n    server: https://127.0.0.1:{api_port}\n    certificate-authority: {}\nusers:\n- name: keel-admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: keel-test\n  context:\n    cluster: keel-test\n    user: keel-admin\n    namespace: default\ncurrent-context: keel-test\n",
            s(&certs.ca)
        );
        std::fs::write(&kubeconfig, config).map_err(|e| HarnessError::io(&kubeconfig, e))?;
        let mut plane = ControlPlane {
            dir: dir.to_path_buf(),
            bin,
            kubeconfig,
            api_port,
            etcd: Some(etcd),
            apiserver: None,
            scheduler: None,
            apiserver_args,
        };
        plane.start_apiserver()?;
        if scheduler {
            plane.scheduler = Some(Server::spawn(
                "kube-scheduler",
                &plane.bin.join("kube-scheduler"),
                &[
                    format!("--kubeconfig={}", s(&plane.kubeconfig)),
                    format!("--authentication-kubeconfig={}", s(&plane.kubeconfig)),
                    format!("--authorization-kubeconfig={}", s(&plane.kubeconfig)),
                    "--leader-elect=false".into(),
                    "--secure-port=0".into(),
                    "--v=1".into(),
                ],
                plane.dir.join("kube-scheduler.log"),
            )?);
        }
        Ok(plane)
    }

    /// Starts kube-apiserver (again) and waits until `/readyz` answers ok.
    pub fn start_apiserver(&mut self) -> Result<(), HarnessError> {
        let server = Server::spawn(
            "kube-apiserver",
            &self.bin.join("kube-apiserver"),
            &self.apiserver_args,
            self.dir.join("kube-apiserver.log"),
        )?;
        self.apiserver = Some(server);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return Ok(());
            }
            let exited = self
                .apiserver
                .as_mut()
                .is_some_and(|s| matches!(s.child.try_wait(), Ok(Some(_))));
            if exited || Instant::now() > deadline {
                return Err(HarnessError::NotReady {
                    what: "kube-apiserver".into(),
                    log: self
                        .apiserver
                        .as_ref()
                        .map(Server::log_tail)
                        .unwrap_or_default(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills kube-apiserver (SIGKILL).
    pub fn kill_apiserver(&mut self) {
        if let Some(mut server) = self.apiserver.take() {
            server.kill();
        }
    }

    /// Runs the real `kubectl` against this cluster.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(self.bin.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Runs `kubectl` with `input` on its standard input (`-f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(self.bin.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).expect("write to kubectl");
        }
        child.wait_with_output().expect("wait for kubectl")
    }

    /// Runs `kubectl`, returns its stdout, fails with its stderr.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String, HarnessError> {
        let out = self.kubectl(args);
        if !out.status.success() {
            return Err(HarnessError::Command {
                command: format!("kubectl {}", args.join(" ")),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A kube-rs client for this cluster.
    pub async fn client(&self) -> Result<Client, HarnessError> {
        let file = Kubeconfig::read_from(&self.kubeconfig).map_err(|e| HarnessError::Command {
            command: "read kubeconfig".into(),
            output: e.to_string(),
        })?;
        let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .map_err(|e| HarnessError::Command {
                command: "kubeconfig".into(),
                output: e.to_string(),
            })?;
        Ok(Client::try_from(config)?)
    }

    /// Creates a Node with allocatable resources, labels, taints and a Ready condition (the
    /// status a kubelet would post).
    pub async fn create_node(&self, client: &Client, spec: &NodeSpec) -> Result<(), HarnessError> {
        let nodes: Api<Node> = Api::all(client.clone());
        let taints: Vec<serde_json::Value> = spec
            .taints
            .iter()
            .map(|t| {
                let (kv, effect) = t.rsplit_once(':').unwrap_or((t, "NoSchedule"));
                let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
                json!({"key": key, "value": value, "effect": effect})
            })
            .collect();
        let mut labels = spec.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), spec.name.clone());
        labels.insert("kubernetes.io/os".into(), "linux".into());
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": spec.name, "labels": labels},
            "spec": {"taints": taints},
        }))
        .map_err(|e| HarnessError::Command {
            command: "node json".into(),
            output: e.to_string(),
        })?;
        nodes.create(&PostParams::default(), &node).await?;
        let resources = json!({"cpu": spec.cpu, "memory": spec.memory, "pods": "110"});
        let status = json!({"status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "the Keel test harness stands in for the kubelet",
                            "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "v1.37.2",
                         "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "",
                         "containerRuntimeVersion": "", "kubeProxyVersion": ""},
        }});
        nodes
            .patch_status(&spec.name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok(())
    }

    /// The kube-scheduler's log.
    pub fn scheduler_log(&self) -> String {
        self.scheduler
            .as_ref()
            .map(Server::log_tail)
            .unwrap_or_default()
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Clients first, then the store.
        self.scheduler.take();
        self.apiserver.take();
        self.etcd.take();
        // etcd's data (preallocated WAL and snapshot files, hundreds of MiB a test) goes with a
        // test that passed; a failing test keeps it beside the logs for a look.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(self.dir.join("etcd"));
        }
    }
}
