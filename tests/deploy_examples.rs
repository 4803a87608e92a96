//! Checks the deployment examples (`examples/deploy/`) and the other tracekeeper configurations
//! shipped under `examples/` as far as they can be checked without a cluster or Docker: every
//! YAML file parses; every tracekeeper configuration passes `tracekeeper validate`; the
//! collector pipelines only name components they define and reach tracekeeper's OTLP port; the
//! Kubernetes probes and the Prometheus scrape targets reach the endpoints tracekeeper binds;
//! the Dockerfile copies and runs the configuration it ships.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;
use tracekeeper::config::Config;

/// The repository root.
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// One `tracekeeper validate` may take this long (it compiles the guest on a cold cache).
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(120);
/// The directories whose tracekeeper configurations this test owns (`examples/alerts` and
/// `examples/minimal-guest` are checked by their own tests).
const CONFIG_DIRS: [&str; 3] = ["examples/deploy", "examples/configs", "examples/traces"];
/// Environment the example configurations expect (`${env:...}` references).
const EXAMPLE_ENV: [(&str, &str); 1] = [("NEXT_COLLECTOR_ENDPOINT", "127.0.0.1:4317")];

fn path(rel: &str) -> PathBuf {
    Path::new(REPO).join(rel)
}

/// Every `.yaml`/`.yml` file under `dir`, recursively, skipping build output.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "target") {
                out.extend(yaml_files(&p));
            }
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// All YAML documents of a file.
fn documents(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()))
        })
        .collect()
}

fn document(file: &str) -> Value {
    let docs = documents(&path(file));
    assert_eq!(docs.len(), 1, "{file}");
    docs.into_iter().next().unwrap()
}

/// `v[a][b]...` (Null when absent).
fn at<'a>(v: &'a Value, keys: &[&str]) -> &'a Value {
    keys.iter()
        .fold(v, |v, k| v.get(*k).unwrap_or(&Value::Null))
}

fn str_at<'a>(v: &'a Value, keys: &[&str]) -> &'a str {
    at(v, keys)
        .as_str()
        .unwrap_or_else(|| panic!("{keys:?} is not a string in {v:?}"))
}

/// The port of a `host:port` endpoint.
fn port(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{endpoint:?} has no port"))
}

/// A tracekeeper configuration (not a collector's): `processors` and no `service.pipelines`.
fn is_tracekeeper_config(v: &Value) -> bool {
    v.get("processors").is_some() && at(v, &["service", "pipelines"]).is_null()
}

/// The tracekeeper configuration embedded in the Kubernetes sidecar manifest's ConfigMap.
fn sidecar_config() -> (Vec<Value>, String) {
    let docs = documents(&path("examples/deploy/kubernetes/sidecar.yaml"));
    let config = docs
        .iter()
        .find(|d| str_at(d, &["kind"]) == "ConfigMap")
        .map(|cm| str_at(cm, &["data", "tracekeeper.yaml"]).to_string())
        .expect("a ConfigMap with tracekeeper.yaml");
    (docs, config)
}

fn validate(file: &Path) {
    let (status, _, stderr) = common::run_binary(
        &["validate", "--config", file.to_str().unwrap()],
        &EXAMPLE_ENV,
        VALIDATE_TIMEOUT,
    );
    assert!(
        status.success(),
        "tracekeeper validate rejects {}: {stderr}",
        file.display()
    );
}

#[test]
fn every_yaml_file_under_examples_parses() {
    let files = yaml_files(&path("examples"));
    let deploy: Vec<&PathBuf> = files
        .iter()
        .filter(|f| f.starts_with(path("examples/deploy")))
        .collect();
    assert!(deploy.len() >= 5, "deployment examples: {deploy:?}");
    for f in &files {
        assert!(!documents(f).is_empty(), "{} is empty", f.display());
    }
}

#[test]
fn every_tracekeeper_configuration_passes_validate() {
    let mut checked = Vec::new();
    for dir in CONFIG_DIRS {
        for file in yaml_files(&path(dir)) {
            if documents(&file).iter().any(is_tracekeeper_config) {
                validate(&file);
                checked.push(file);
            }
        }
    }
    // The one inside the Kubernetes manifest.
    let (_, config) = sidecar_config();
    let dir = tempfile::tempdir().unwrap();
    let file = common::write_config(dir.path(), "sidecar-tracekeeper.yaml", &config);
    validate(&file);
    checked.push(file);
    let names: Vec<String> = checked.iter().map(|f| f.display().to_string()).collect();
    assert!(
        names.iter().any(|n| n.ends_with("deploy/tracekeeper.yaml")),
        "{names:?}"
    );
    assert!(names.len() >= 5, "{names:?}");
}

/// Every component a pipeline names is defined (the collector refuses to start otherwise).
fn assert_pipelines_defined(file: &str, collector: &Value) {
    let pipelines = at(collector, &["service", "pipelines"])
        .as_mapping()
        .unwrap_or_else(|| panic!("{file}: no service.pipelines"));
    for (name, pipeline) in pipelines {
        for kind in ["receivers", "processors", "exporters"] {
            for component in at(pipeline, &[kind]).as_sequence().into_iter().flatten() {
                let component = component.as_str().unwrap();
                assert!(
                    !at(collector, &[kind, component]).is_null(),
                    "{file}: pipeline {name:?} names {kind}.{component}, which is not defined"
                );
            }
        }
    }
    for ext in at(collector, &["service", "extensions"])
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let ext = ext.as_str().unwrap();
        assert!(
            !at(collector, &["extensions", ext]).is_null(),
            "{file}: extension {ext} is not defined"
        );
    }
}

fn tracekeeper_grpc_port() -> u16 {
    let config =
        Config::parse(&std::fs::read_to_string(path("examples/deploy/tracekeeper.yaml")).unwrap())
            .unwrap();
    let grpc = config.receivers.otlp.protocols.grpc.expect("grpc receiver");
    port(&grpc.endpoint)
}

#[test]
fn the_collector_forwards_every_span_to_tracekeeper() {
    let file = "examples/deploy/otel-collector.yaml";
    let collector = document(file);
    assert_pipelines_defined(file, &collector);
    let exporters = at(&collector, &["service", "pipelines", "traces", "exporters"])
        .as_sequence()
        .unwrap();
    assert_eq!(exporters.len(), 1, "{file}: one exporter, to tracekeeper");
    let exporter = at(&collector, &["exporters", exporters[0].as_str().unwrap()]);
    assert_eq!(
        port(str_at(exporter, &["endpoint"])),
        tracekeeper_grpc_port()
    );
    assert_eq!(at(exporter, &["tls", "insecure"]).as_bool(), Some(true));
}

#[test]
fn the_load_balancer_routes_by_trace_id_to_tracekeepers() {
    let file = "examples/deploy/loadbalancing.yaml";
    let collector = document(file);
    assert_pipelines_defined(file, &collector);
    let lb = at(&collector, &["exporters", "loadbalancing"]);
    assert_eq!(str_at(lb, &["routing_key"]), "traceID");
    let hostnames = at(lb, &["resolver", "static", "hostnames"])
        .as_sequence()
        .unwrap();
    assert!(hostnames.len() >= 2, "several tracekeepers");
    for h in hostnames {
        assert_eq!(port(h.as_str().unwrap()), tracekeeper_grpc_port());
    }
    let exporters = at(&collector, &["service", "pipelines", "traces", "exporters"]);
    assert_eq!(
        exporters.as_sequence().unwrap(),
        &[Value::from("loadbalancing")]
    );
    // Batching before the load balancer would only be split again by trace id.
    let processors = at(
        &collector,
        &["service", "pipelines", "traces", "processors"],
    );
    assert!(
        !processors
            .as_sequence()
            .unwrap()
            .contains(&Value::from("batch"))
    );
}

#[test]
fn the_kubernetes_probes_reach_the_health_endpoint() {
    let (docs, text) = sidecar_config();
    let config = Config::parse(&text).unwrap();
    let health = config.health_endpoint();
    assert!(
        health.starts_with("0.0.0.0:") || health.starts_with("[::]:"),
        "the kubelet probes the pod IP: the health endpoint must not be loopback ({health})"
    );
    let deployment = docs
        .iter()
        .find(|d| str_at(d, &["kind"]) == "Deployment")
        .unwrap();
    let spec = at(deployment, &["spec", "template", "spec"]);
    let container = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| at(spec, &[k]).as_sequence().into_iter().flatten())
        .find(|c| str_at(c, &["name"]) == "tracekeeper")
        .expect("a tracekeeper container");
    let named_port = |name: &str| -> u16 {
        at(container, &["ports"])
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| str_at(p, &["name"]) == name)
            .and_then(|p| at(p, &["containerPort"]).as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let get = at(container, &[probe, "httpGet"]);
        assert_eq!(str_at(get, &["path"]), "/", "{probe}");
        let probe_port = match at(get, &["port"]) {
            Value::String(name) => named_port(name),
            p => p.as_u64().and_then(|p| u16::try_from(p).ok()).unwrap(),
        };
        assert_eq!(probe_port, port(&health), "{probe}");
    }
    // It runs the mounted ConfigMap, and is given time to drain on SIGTERM.
    let args: Vec<&str> = at(container, &["args"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mount = at(container, &["volumeMounts"]).as_sequence().unwrap()[0].clone();
    let mounted = format!("{}/tracekeeper.yaml", str_at(&mount, &["mountPath"]));
    assert_eq!(args, ["run", "--config", mounted.as_str()]);
    let grace = at(spec, &["terminationGracePeriodSeconds"])
        .as_u64()
        .unwrap();
    let shutdown = config
        .service
        .shutdown_timeout
        .expect("shutdown_timeout set");
    assert!(
        Duration::from_secs(grace) > shutdown,
        "{grace}s vs {shutdown:?}"
    );
    // Prometheus finds the metrics port through the pod annotation.
    let annotated = str_at(
        deployment,
        &[
            "spec",
            "template",
            "metadata",
            "annotations",
            "prometheus.io/port",
        ],
    );
    assert_eq!(
        annotated.parse::<u16>().unwrap(),
        port(&config.service.telemetry.metrics.address)
    );
}

#[test]
fn prometheus_scrapes_the_metrics_port() {
    let prometheus = document("examples/deploy/prometheus.yml");
    let config =
        Config::parse(&std::fs::read_to_string(path("examples/deploy/tracekeeper.yaml")).unwrap())
            .unwrap();
    let metrics_port = port(&config.service.telemetry.metrics.address);
    let jobs = at(&prometheus, &["scrape_configs"]).as_sequence().unwrap();
    let job = jobs
        .iter()
        .find(|j| str_at(j, &["job_name"]) == "tracekeeper")
        .unwrap();
    assert_eq!(str_at(job, &["metrics_path"]), "/metrics");
    let targets = at(job, &["static_configs"]).as_sequence().unwrap()[0].clone();
    for t in at(&targets, &["targets"]).as_sequence().unwrap() {
        assert_eq!(port(t.as_str().unwrap()), metrics_port, "{t:?}");
    }
}

#[test]
fn the_dockerfile_is_multi_stage_static_and_ships_the_example_config() {
    // No Docker engine runs where these tests run: check what the file says instead.
    let text = std::fs::read_to_string(path("examples/deploy/Dockerfile")).unwrap();
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        froms.last().unwrap().contains("distroless/static"),
        "a static final stage: {froms:?}"
    );
    assert!(
        text.contains("--target x86_64-unknown-linux-musl"),
        "static binary"
    );
    let copy = text
        .lines()
        .find(|l| l.starts_with("COPY examples/deploy/tracekeeper.yaml "))
        .expect("the example configuration is copied into the image");
    let dest = copy.rsplit(' ').next().unwrap();
    assert!(
        text.contains(&format!("\"--config\", \"{dest}\"")),
        "runs {dest}"
    );
    let config =
        Config::parse(&std::fs::read_to_string(path("examples/deploy/tracekeeper.yaml")).unwrap())
            .unwrap();
    let expose = text
        .lines()
        .find(|l| l.starts_with("EXPOSE "))
        .expect("EXPOSE");
    let exposed: Vec<u16> = expose
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    let protocols = &config.receivers.otlp.protocols;
    for endpoint in [
        protocols.grpc.as_ref().unwrap().endpoint.clone(),
        protocols.http.as_ref().unwrap().endpoint.clone(),
        config.health_endpoint(),
        config.service.telemetry.metrics.address.clone(),
    ] {
        assert!(exposed.contains(&port(&endpoint)), "{endpoint} not exposed");
    }
}
