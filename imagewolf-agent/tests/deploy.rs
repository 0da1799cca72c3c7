//! The deployment files are checked by the tools that will consume them, and against the
//! agent's real flags:
//! - `deploy/kubernetes.yaml` by `kubernetes-validate --strict` (PyPI; the Kubernetes
//!   OpenAPI schemas), plus what the schema cannot say (hostNetwork, probes, secrets...);
//! - `deploy/docker-stack.yml` by `docker stack config` (the compose schema), plus keys;
//! - `deploy/registry-config.yml` by starting Debian's `docker-registry` with it;
//! - the `Dockerfile`'s ENV defaults against the flags' defaults;
//! - the image's entrypoint and healthcheck scripts by running them (the healthcheck against
//!   a live agent).
//!
//! Every environment variable named in these files must be one the agent reads, so a
//! renamed flag breaks this test rather than a deployment. Missing tools fail the test with
//! the install command; nothing skips.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::CommandFactory;
use imagewolf::docker::free_port;
use imagewolf::{ChildGuard, TempDir};
use imagewolf_agent::config::AgentConfig;
use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_imagewolf-agent");
/// Variables the image's entrypoint reads (then sets the variable without `_FILE`).
const FILE_VARS: [&str; 2] = [
    "IMAGEWOLF_WEBHOOK_TOKEN_FILE",
    "IMAGEWOLF_CLUSTER_SECRET_FILE",
];

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every YAML document of `path`, as JSON, through Debian's python3-yaml.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let python = Path::new("/usr/bin/python3");
    assert!(
        python.exists(),
        "/usr/bin/python3 missing: apt-get install -y python3-yaml"
    );
    let (ok, out, err) = run(Command::new(python).arg("-c").arg(
        "import sys, json, yaml\n\
         json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)",
    ).arg(path));
    assert!(
        ok,
        "parsing {} failed (apt-get install -y python3-yaml): {err}",
        path.display()
    );
    match serde_json::from_str(&out).unwrap() {
        Value::Array(docs) => docs,
        other => panic!("not a list of documents: {other}"),
    }
}

/// flag env var -> default value (None: no default).
fn agent_env_vars() -> BTreeMap<String, Option<String>> {
    AgentConfig::command()
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_string_lossy().into_owned();
            let default = arg
                .get_default_values()
                .first()
                .map(|v| v.to_string_lossy().into_owned());
            Some((env, default))
        })
        .collect()
}

fn assert_known_var(name: &str, file: &str) {
    let vars = agent_env_vars();
    assert!(
        vars.contains_key(name) || FILE_VARS.contains(&name) || name == "RUST_LOG",
        "{file} sets {name}, which the agent does not read (flags: {:?})",
        vars.keys().collect::<Vec<_>>()
    );
}

fn kubernetes_validate() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("kubernetes-validate"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("kubernetes-validate not installed: pip install kubernetes-validate (this test does not skip)")
        })
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes.yaml"))
}

#[test]
fn kubernetes_manifest_is_valid_and_complete() {
    let manifest = repo_file("deploy/kubernetes.yaml");
    let validate = kubernetes_validate();
    let (ok, out, err) = run(Command::new(&validate)
        .args(["--strict", "--quiet"])
        .arg(&manifest));
    assert!(
        ok,
        "kubernetes-validate rejects deploy/kubernetes.yaml:\n{out}{err}"
    );

    // The validator is not a rubber stamp: a field a DaemonSet does not have fails.
    let dir = TempDir::new("deploy").unwrap();
    let broken = dir.path().join("broken.yaml");
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(
        &broken,
        text.replace("  updateStrategy:\n", "  replicas: 3\n  updateStrategy:\n"),
    )
    .unwrap();
    let (ok, out, err) = run(Command::new(&validate).arg("--strict").arg(&broken));
    assert!(
        !ok,
        "kubernetes-validate accepted a DaemonSet with replicas:\n{out}{err}"
    );

    let docs = yaml_documents(&manifest);
    let ns = "imagewolf";
    let peers = find(&docs, "Service", "imagewolf-peers");
    assert_eq!(
        peers["spec"]["clusterIP"], "None",
        "discovery Service must be headless"
    );
    let webhook = find(&docs, "Service", "imagewolf");
    assert_eq!(webhook["spec"]["ports"][0]["port"], 8000);
    let ds = find(&docs, "DaemonSet", "imagewolf");
    assert_eq!(ds["apiVersion"], "apps/v1");
    let pod = &ds["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    for svc in [peers, webhook] {
        for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
            assert_eq!(&labels[k], v, "Service selector does not match the pods");
        }
    }
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let spec = &pod["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
    assert!(spec["tolerations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["operator"] == "Exists" && t.get("key").is_none()));
    let agent = &spec["containers"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(agent[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(agent[probe]["httpGet"]["port"], 8000, "{probe}");
    }
    for kind in ["requests", "limits"] {
        assert!(agent["resources"][kind]["memory"].is_string(), "{kind}");
        assert!(agent["resources"][kind]["cpu"].is_string(), "{kind}");
    }
    let env: BTreeMap<&str, &Value> = agent["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    for name in env.keys().filter(|n| **n != "POD_IP") {
        assert_known_var(name, "deploy/kubernetes.yaml");
    }
    assert_eq!(
        env["IMAGEWOLF_PEERS"]["value"],
        format!("dns:imagewolf-peers.{ns}.svc.cluster.local:8000")
    );
    for (var, key) in [
        ("IMAGEWOLF_WEBHOOK_TOKEN", "webhook-token"),
        ("IMAGEWOLF_CLUSTER_SECRET", "cluster-secret"),
    ] {
        assert_eq!(env[var]["valueFrom"]["secretKeyRef"]["key"], key, "{var}");
    }
    let mounts: Vec<&str> = agent["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"/var/lib/imagewolf"));
    assert!(mounts.contains(&"/var/run/docker.sock"));
    let host_paths: Vec<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert!(host_paths.contains(&"/var/lib/imagewolf"));
    assert!(host_paths.contains(&"/var/run/docker.sock"));

    // The commented containerd variant, switched on as the comments say, is valid too.
    let containerd = containerd_variant(&text);
    assert!(
        !containerd.contains("docker.sock"),
        "the containerd variant still mounts Docker:\n{containerd}"
    );
    let variant = dir.path().join("containerd.yaml");
    fs::write(&variant, &containerd).unwrap();
    let (ok, out, err) = run(Command::new(&validate)
        .args(["--strict", "--quiet"])
        .arg(&variant));
    assert!(
        ok,
        "the containerd variant is invalid:\n{out}{err}\n{containerd}"
    );
    let docs = yaml_documents(&variant);
    let agent = &find(&docs, "DaemonSet", "imagewolf")["spec"]["template"]["spec"]["containers"][0];
    let runtime = agent["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "IMAGEWOLF_RUNTIME")
        .unwrap();
    assert_eq!(runtime["value"], "containerd");
    assert!(agent["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["mountPath"] == "/run/containerd/containerd.sock"));
}

/// What an operator does to deploy/kubernetes.yaml for containerd nodes: deletes the
/// Docker entries (runtime, DOCKER_HOST, the docker-socket mount and volume) and uncomments
/// the containerd ones (`# ` removed where it stands).
fn containerd_variant(text: &str) -> String {
    const DOCKER_ITEMS: [&str; 3] = [
        "- name: IMAGEWOLF_RUNTIME",
        "- name: DOCKER_HOST",
        "- name: docker-socket",
    ];
    const YAML_STARTS: [&str; 6] = [
        "- name: ",
        "value: ",
        "mountPath: ",
        "hostPath:",
        "path: /run/containerd",
        "type: Socket",
    ];
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut skipping: Option<usize> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(depth) = skipping {
            if !t.starts_with('#') && indent(line) > depth {
                continue;
            }
            skipping = None;
        }
        if DOCKER_ITEMS.iter().any(|item| t.starts_with(item)) {
            skipping = Some(indent(line));
            continue;
        }
        match t.strip_prefix("# ") {
            Some(rest) if YAML_STARTS.iter().any(|s| rest.trim_start().starts_with(s)) => {
                out.push(format!("{}{rest}", " ".repeat(indent(line))));
            }
            _ => out.push(line.to_owned()),
        }
    }
    out.join("\n")
}

#[test]
fn swarm_stack_is_valid_and_complete() {
    let stack = repo_file("deploy/docker-stack.yml");
    assert!(
        Command::new("docker").arg("--version").output().is_ok(),
        "docker CLI missing: apt-get install -y docker.io"
    );
    // The compose schema check needs no daemon.
    let (ok, out, err) = run(Command::new("docker")
        .env("DOCKER_HOST", "unix:///nonexistent.sock")
        .args(["stack", "config", "-c"])
        .arg(&stack));
    assert!(
        ok,
        "docker stack config rejects deploy/docker-stack.yml:\n{out}{err}"
    );

    let docs = yaml_documents(&stack);
    let doc = &docs[0];
    let service = &doc["services"]["imagewolf"];
    assert_eq!(service["deploy"]["mode"], "global");
    assert_eq!(doc["networks"]["imagewolf"]["driver"], "overlay");
    let env = service["environment"].as_object().unwrap();
    for name in env.keys() {
        assert_known_var(name, "deploy/docker-stack.yml");
    }
    assert!(env["IMAGEWOLF_PEERS"]
        .as_str()
        .unwrap()
        .starts_with("dns:tasks.imagewolf"));
    let ports = service["ports"].as_array().unwrap();
    assert!(ports
        .iter()
        .any(|p| p["target"] == 6000 && p["mode"] == "host"));
    let targets: Vec<&str> = service["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["target"].as_str().unwrap())
        .collect();
    assert!(targets.contains(&"/var/run/docker.sock"));
    assert!(targets.contains(&"/var/lib/imagewolf"));
    for secret in ["imagewolf_webhook_token", "imagewolf_cluster_secret"] {
        assert_eq!(doc["secrets"][secret]["external"], true, "{secret}");
    }
    for var in FILE_VARS {
        assert!(
            env[var].as_str().unwrap().starts_with("/run/secrets/"),
            "{var}"
        );
    }
}

#[test]
fn registry_accepts_the_example_config() {
    let registry = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("docker-registry missing: apt-get install -y docker-registry"));
    let config = repo_file("deploy/registry-config.yml");
    let docs = yaml_documents(&config);
    let endpoint = &docs[0]["notifications"]["endpoints"][0];
    assert!(endpoint["url"]
        .as_str()
        .unwrap()
        .ends_with(":8000/registryNotifications"));
    let auth = endpoint["headers"]["Authorization"][0].as_str().unwrap();
    assert!(auth.starts_with("Bearer "), "{auth}");

    let dir = TempDir::new("regcfg").unwrap();
    let port = free_port().unwrap();
    let log = dir.path().join("registry.log");
    let log_file = fs::File::create(&log).unwrap();
    let mut cmd = Command::new(registry);
    cmd.arg("serve")
        .arg(&config)
        .env("REGISTRY_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
            dir.path().join("data"),
        )
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    let mut child = ChildGuard::spawn("docker-registry", &mut cmd).unwrap();
    let start = Instant::now();
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("listening on") {
            assert!(
                text.contains("configuring endpoint imagewolf")
                    && text.contains("Authorization:[Bearer "),
                "the registry did not take the notification endpoint:\n{text}"
            );
            break;
        }
        if let Ok(Some(status)) = child.child.try_wait() {
            panic!("docker-registry rejected deploy/registry-config.yml ({status}):\n{text}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "registry not up:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dockerfile_has_a_default_for_every_flag() {
    let text = fs::read_to_string(repo_file("Dockerfile")).unwrap();
    // ENV lines of the final stage, `KEY=VALUE \` continuation style.
    let final_stage = text.rsplit("\nFROM ").next().unwrap();
    let mut env = BTreeMap::new();
    let mut in_env = false;
    for line in final_stage.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("ENV ") {
            in_env = true;
            if let Some((k, v)) = rest.trim_end_matches('\\').trim().split_once('=') {
                env.insert(k.to_owned(), v.to_owned());
            }
        } else if in_env {
            if let Some((k, v)) = t.trim_end_matches('\\').trim().split_once('=') {
                env.insert(k.to_owned(), v.to_owned());
            }
        }
        if in_env && !t.ends_with('\\') {
            in_env = false;
        }
    }
    for (var, default) in agent_env_vars() {
        match default {
            Some(default) => assert_eq!(
                env.get(&var),
                Some(&default),
                "Dockerfile ENV {var} must match the flag's default"
            ),
            None if var == "IMAGEWOLF_PEERS" => {
                assert!(env.contains_key(&var), "Dockerfile sets no IMAGEWOLF_PEERS")
            }
            None => {
                assert!(
                    !env.contains_key(&var),
                    "Dockerfile sets {var}: empty is invalid"
                );
                assert!(
                    final_stage.contains(&var),
                    "Dockerfile does not mention {var}"
                );
            }
        }
    }
    for name in env.keys() {
        assert_known_var(name, "Dockerfile");
    }
    assert!(final_stage.contains("EXPOSE 8000/tcp 6000/tcp"));
    assert!(final_stage.contains("HEALTHCHECK"));
    assert!(text.contains("cargo build --release --locked -p imagewolf-agent"));
}

#[test]
fn entrypoint_loads_secret_files() {
    let dir = TempDir::new("entry").unwrap();
    let bin = dir.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("imagewolf-agent");
    fs::write(
        &fake,
        "#!/bin/sh\necho \"args=$*\"\necho \"token=$IMAGEWOLF_WEBHOOK_TOKEN\"\n\
         echo \"secret=${IMAGEWOLF_CLUSTER_SECRET:-unset}\"\necho \"file=${IMAGEWOLF_WEBHOOK_TOKEN_FILE:-unset}\"\n",
    )
    .unwrap();
    run(Command::new("chmod").arg("+x").arg(&fake));
    let token = dir.path().join("token");
    fs::write(&token, "s3cr3t value\n").unwrap();
    let entrypoint = repo_file("deploy/docker-entrypoint.sh");
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let (ok, out, err) = run(Command::new("sh")
        .arg(&entrypoint)
        .args(["--log-format", "json"])
        .env_clear()
        .env("PATH", &path)
        .env("IMAGEWOLF_WEBHOOK_TOKEN_FILE", &token));
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "args=--log-format json\ntoken=s3cr3t value\nsecret=unset\nfile=unset\n"
    );
    for bad in [dir.path().join("missing"), {
        let empty = dir.path().join("empty");
        fs::write(&empty, "").unwrap();
        empty
    }] {
        let (ok, out, err) = run(Command::new("sh")
            .arg(&entrypoint)
            .env_clear()
            .env("PATH", &path)
            .env("IMAGEWOLF_CLUSTER_SECRET_FILE", &bad));
        assert!(!ok && out.is_empty(), "{out}");
        assert!(err.contains("IMAGEWOLF_CLUSTER_SECRET_FILE"), "{err}");
    }
}

#[test]
fn healthcheck_probes_the_agent() {
    let dir = TempDir::new("health").unwrap();
    let port = free_port().unwrap();
    let bt = free_port().unwrap();
    let mut cmd = Command::new(AGENT);
    // Every agent of the test cluster shares one secret (the agent refuses to start without).
    cmd.env("IMAGEWOLF_CLUSTER_SECRET", "imagewolf-test-cluster-secret");
    cmd.args(["--peers", &format!("static:127.0.0.1:{port}")])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--bt-listen", &format!("127.0.0.1:{bt}")])
        .args(["--runtime", "none", "--advertise-addr", "127.0.0.1"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let agent = ChildGuard::spawn("agent", &mut cmd).unwrap();
    let healthcheck = repo_file("deploy/healthcheck.sh");
    let probe = |listen: &str| {
        run(Command::new("bash")
            .arg(&healthcheck)
            .env("IMAGEWOLF_LISTEN", listen))
    };
    let start = Instant::now();
    loop {
        // A wildcard listen address is probed on loopback.
        let (ok, _, err) = probe(&format!("0.0.0.0:{port}"));
        if ok {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "healthcheck never passed: {err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(probe(&format!("127.0.0.1:{port}")).0);
    drop(agent);
    let (ok, _, _) = probe(&format!("127.0.0.1:{port}"));
    assert!(!ok, "healthcheck passed with the agent stopped");
}
