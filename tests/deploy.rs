//! The deploy files are real: Prometheus's alert rules load and fire on the
//! series they are about (`promtool test rules`), the Grafana dashboard's
//! queries are PromQL over metrics runnel exports, the Kubernetes manifests
//! pass Kubernetes' own schemas, KEDA scales the StatefulSet on the groups
//! the shipped pipelines consume as, and the runtime config they carry is
//! one runnel accepts.

mod harness;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::{promtool, repo};
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    repo().join("deploy").join(path)
}

/// Every `runnel_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("runnel_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The metrics runnel exports (`src/metrics.rs`), with a histogram's
/// `_bucket`, `_sum` and `_count` series.
fn exported() -> BTreeSet<String> {
    let source = std::fs::read_to_string(repo().join("src/metrics.rs")).unwrap();
    let mut names = BTreeSet::new();
    for name in metric_names(&source) {
        for suffix in ["", "_bucket", "_sum", "_count"] {
            names.insert(format!("{name}{suffix}"));
        }
    }
    names
}

/// A YAML file's documents, as JSON (PyYAML comes with kubernetes-validate).
fn yaml(path: &Path) -> Vec<Value> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn alert_rules_load_and_fire_on_what_they_are_about() {
    let dir = deploy("prometheus");
    let out = promtool(
        &["check", "rules", dir.join("alerts.yml").to_str().unwrap()],
        "",
    );
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
    let out = promtool(
        &[
            "test",
            "rules",
            dir.join("alerts.test.yml").to_str().unwrap(),
        ],
        "",
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(
        &[
            "check",
            "config",
            "--syntax-only",
            dir.join("prometheus.yml").to_str().unwrap(),
        ],
        "",
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let unknown: Vec<_> = metric_names(&rules)
        .difference(&exported())
        .cloned()
        .collect();
    assert!(
        unknown.is_empty(),
        "alerts on metrics runnel does not export: {unknown:?}"
    );
}

#[test]
fn the_dashboard_queries_runnel_s_metrics_in_valid_promql() {
    let text = std::fs::read_to_string(deploy("grafana/dashboards/runnel.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut exprs = Vec::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().unwrap();
        assert!(
            !targets.is_empty(),
            "panel {} queries nothing",
            panel["title"]
        );
        for target in targets {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    // Grafana's variables, as it would fill them in.
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, expr)| {
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$__range", "1h")
                .replace("$pipeline", ".*");
            format!(
                "      - record: panel_query_{i}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(
        &file,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    let out = promtool(&["check", "rules", file.to_str().unwrap()], "");
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{out}"
    );
    let unknown: Vec<_> = metric_names(&exprs.join("\n"))
        .difference(&exported())
        .cloned()
        .collect();
    assert!(
        unknown.is_empty(),
        "panels on metrics runnel does not export: {unknown:?}"
    );
    // Every metric runnel exports has a panel.
    let shown = metric_names(&exprs.join("\n"));
    let source = std::fs::read_to_string(repo().join("src/metrics.rs")).unwrap();
    let missing: Vec<_> = metric_names(&source)
        .into_iter()
        .filter(|name| !shown.iter().any(|s| s.starts_with(name.as_str())))
        .collect();
    assert!(missing.is_empty(), "no panel shows {missing:?}");
}

#[test]
fn kubernetes_manifests_pass_kubernetes_schemas() {
    let dir = deploy("kubernetes");
    let kustomization = yaml(&dir.join("kustomization.yaml"));
    let listed: BTreeSet<String> = kustomization[0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files, "kustomization.yaml lists every manifest");

    // KEDA's CRD is not among Kubernetes' schemas: checked below by hand.
    let core: Vec<_> = files
        .iter()
        .filter(|f| *f != "keda.yaml")
        .map(|f| dir.join(f))
        .collect();
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "--kubernetes-version", "1.33.0"])
        .args(&core)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubernetes-validate: {e}; run scripts/test, which installs it")
        });
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let statefulset = yaml(&dir.join("statefulset.yaml")).remove(0);
    let pod = &statefulset["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env = container["env"].as_array().unwrap();
    let pod_name = env.iter().find(|e| e["name"] == "POD_NAME").unwrap();
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );

    let scaled = yaml(&dir.join("keda.yaml")).remove(0);
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(scaled["kind"], "ScaledObject");
    let target = &scaled["spec"]["scaleTargetRef"];
    assert_eq!(
        (target["kind"].as_str(), target["name"].as_str()),
        (
            Some("StatefulSet"),
            statefulset["metadata"]["name"].as_str()
        )
    );
    // Each trigger's group is a shipped pipeline's, on the topic it reads.
    let consumes = [("image-upload", "s3-events"), ("notify", "image-processed")];
    for trigger in scaled["spec"]["triggers"].as_array().unwrap() {
        assert_eq!(trigger["type"], "kafka");
        let metadata = &trigger["metadata"];
        let pair = (
            metadata["consumerGroup"].as_str().unwrap(),
            metadata["topic"].as_str().unwrap(),
        );
        assert!(
            consumes.contains(&pair),
            "{pair:?} is no shipped pipeline's group and topic"
        );
        assert!(repo().join(format!("pipelines/{}.toml", pair.0)).is_file());
        assert!(
            metadata["lagThreshold"]
                .as_str()
                .unwrap()
                .parse::<u32>()
                .unwrap()
                > 0
        );
    }
}

/// The runtime config in the ConfigMap is one runnel takes, with the
/// shipped pipelines, once its environment is set as the pod sets it.
#[test]
fn the_kubernetes_runtime_config_is_valid() {
    let config = yaml(&deploy("kubernetes/config.yaml")).remove(0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runnel.toml");
    std::fs::write(&file, config["data"]["runnel.toml"].as_str().unwrap()).unwrap();
    let mut validate = Command::new(env!("CARGO_BIN_EXE_runnel"));
    validate
        .arg("validate")
        .arg("--config")
        .arg(&file)
        .arg("pipelines")
        .current_dir(repo())
        .env("POD_NAME", "runnel-0")
        .env("RUNNEL_API_TOKEN", "0123456789abcdef0123456789abcdef")
        .env("RUNNEL_METRICS_TOKEN", "fedcba9876543210fedcba9876543210");
    for (name, value) in config["data"].as_object().unwrap() {
        if name != "runnel.toml" {
            validate.env(name, value.as_str().unwrap());
        }
    }
    let output = validate.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
