//! The deployment files checked with the real tools: promtool, amtool,
//! kubectl kustomize, kubernetes-validate; and the Dockerfile and compose
//! files against each other and the configs.

mod common;

use std::path::{Path, PathBuf};

use alert_relay::config::{Config, Source};
use common::*;
use serde_json::Value;

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    if !needs(&["promtool"]) {
        return;
    }
    let dir = repo("deploy/prometheus");
    let out = run_ok("promtool", &["check", "rules", "alert-relay-rules.yaml"], &dir);
    assert!(out.contains("SUCCESS: 9 rules found"), "{out}");
    run_ok("promtool", &["test", "rules", "alert-relay-rules.test.yaml"], &dir);
}

#[test]
fn prometheus_rule_carries_the_same_groups_as_the_rules_file() {
    let rules = yaml_file(&repo("deploy/prometheus/alert-relay-rules.yaml"));
    let crd = yaml_file(&repo("deploy/kubernetes/prometheusrule.yaml"));
    assert_eq!(crd["kind"], "PrometheusRule");
    assert_eq!(crd["spec"]["groups"], rules["groups"]);
}

#[test]
fn alertmanager_examples_pass_amtool() {
    if !needs(&["amtool"]) {
        return;
    }
    for file in [
        "deploy/alertmanager/alertmanager.yml",
        "deploy/alertmanager/alertmanager-tls.yml",
        "deploy/compose/alertmanager.yml",
    ] {
        run_ok("amtool", &["check-config", file], &repo(""));
    }
    let am = yaml_file(&repo("deploy/alertmanager/alertmanager.yml"));
    let hook = &am["receivers"][0]["webhook_configs"][0];
    assert_eq!(hook["url"], "http://alert-relay:9097/webhook");
    assert_eq!(hook["send_resolved"], true);
}

/// The fenced blocks of README.md that follow `<!-- checked: TOOL -->`.
fn readme_snippets(tool: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let marker = format!("<!-- checked: {tool} -->");
    readme
        .split(&marker)
        .skip(1)
        .map(|rest| {
            let body = rest.split_once("```yaml\n").expect("a yaml block after the marker").1;
            body.split_once("```").expect("a closed block").0.to_string()
        })
        .collect()
}

#[test]
fn readme_snippets_pass_the_real_tools() {
    if !needs(&["amtool", "promtool"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let am = readme_snippets("amtool check-config");
    assert_eq!(am.len(), 1);
    let path = write(dir.path(), "alertmanager.yml", &am[0]);
    run_ok("amtool", &["check-config", path.to_str().unwrap()], dir.path());

    let prom = readme_snippets("promtool check config");
    assert_eq!(prom.len(), 1);
    std::fs::copy(repo("deploy/prometheus/alert-relay-rules.yaml"), dir.path().join("alert-relay-rules.yaml")).unwrap();
    let path = write(dir.path(), "prometheus.yml", &prom[0]);
    let out = run_ok("promtool", &["check", "config", path.to_str().unwrap()], dir.path());
    assert!(out.contains("SUCCESS: 9 rules found"), "{out}");
}

/// A relay config whose secret paths under `prefix` are replaced by files in `dir`.
fn check_relay_config(path: &Path, prefix: &str, dir: &Path) -> Config {
    let text = std::fs::read_to_string(path).unwrap();
    for line in text.lines() {
        if let Some(i) = line.find(prefix) {
            let name =
                line[i + prefix.len()..].split(|c: char| c.is_whitespace() || c == '}' || c == ',').next().unwrap();
            write(dir, name, "token\n");
        }
    }
    let local = write(dir, "relay.yaml", &text.replace(prefix, &format!("{}/", dir.display())));
    Config::load_with_env(&Source::File(local), Some(Default::default()))
        .unwrap_or_else(|e| panic!("{} is not a valid relay config:\n{e}", path.display()))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

fn kubernetes_validate() -> PathBuf {
    venv_bin("kubernetes-validate")
}

#[test]
fn kustomize_base_renders_validates_and_hangs_together() {
    if !needs(&["kubectl", kubernetes_validate().to_str().unwrap_or_default()]) {
        return;
    }
    let rendered = run_ok("kubectl", &["kustomize", "deploy/kubernetes"], &repo(""));
    let dir = tempfile::tempdir().unwrap();
    let manifests = write(dir.path(), "rendered.yaml", &rendered);
    let out = run_ok(kubernetes_validate().to_str().unwrap(), &["--strict", manifests.to_str().unwrap()], dir.path());
    for kind in
        ["statefulset/alert-relay", "service/alert-relay", "configmap/alert-relay-config", "secret/alert-relay-tokens"]
    {
        assert!(out.contains(&format!("passed for resource {kind}")), "{out}");
    }
    let docs = yaml_docs(&rendered);

    let sts = find(&docs, "StatefulSet", "alert-relay");
    let pod = &sts["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/-/healthy");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/-/ready");
    assert!(c["resources"]["requests"]["memory"].is_string() && c["resources"]["limits"]["memory"].is_string());
    assert_eq!(c["ports"][0]["containerPort"], 9097);
    assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "spool");
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = |name: &str| mounts.iter().find(|m| m["name"] == name).unwrap().clone();
    assert!(mount("config")["subPath"].is_null(), "a subPath mount would never see ConfigMap updates");

    // The config the container is told to read is the ConfigMap's file, and valid.
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let config_dir = mount("config")["mountPath"].as_str().unwrap().to_string();
    let key = config_path.strip_prefix(&format!("{config_dir}/")).expect("config under the ConfigMap mount");
    let cm = find(&docs, "ConfigMap", "alert-relay-config");
    let text = cm["data"][key].as_str().expect("the ConfigMap holds the config file");
    let secrets_dir = mount("secrets")["mountPath"].as_str().unwrap().to_string();
    let local = write(dir.path(), "cm.yaml", text);
    let config = check_relay_config(&local, &format!("{secrets_dir}/"), dir.path());
    assert_eq!(config.spool.dir.to_str().unwrap(), mount("spool")["mountPath"].as_str().unwrap());
    assert!(config.server.listen.ends_with(":9097"));
    let secret = find(&docs, "Secret", "alert-relay-tokens");
    for token in ["webhook-token", "admin-token"] {
        assert!(text.contains(&format!("{secrets_dir}/{token}")), "config reads {token}");
        assert!(secret["stringData"][token].is_string(), "secret has {token}");
    }

    let svc = find(&docs, "Service", "alert-relay");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], c["ports"][0]["name"]);
    let monitor = find(&docs, "ServiceMonitor", "alert-relay");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], svc["spec"]["ports"][0]["name"]);
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&svc["metadata"]["labels"][k], v, "the ServiceMonitor selects the Service");
        assert_ne!(
            &find(&docs, "Service", "alert-relay-headless")["metadata"]["labels"][k],
            v,
            "and not the headless one"
        );
    }
    assert_eq!(sts["spec"]["serviceName"], "alert-relay-headless");
    find(&docs, "PrometheusRule", "alert-relay");
}

#[test]
fn kustomize_tls_variant_renders_validates_and_hangs_together() {
    if !needs(&["kubectl", kubernetes_validate().to_str().unwrap_or_default()]) {
        return;
    }
    let rendered = run_ok("kubectl", &["kustomize", "deploy/kubernetes-tls"], &repo(""));
    let dir = tempfile::tempdir().unwrap();
    let manifests = write(dir.path(), "rendered.yaml", &rendered);
    let out = run_ok(kubernetes_validate().to_str().unwrap(), &["--strict", manifests.to_str().unwrap()], dir.path());
    for kind in ["statefulset/alert-relay", "configmap/alert-relay-config"] {
        assert!(out.contains(&format!("passed for resource {kind}")), "{out}");
    }
    let docs = yaml_docs(&rendered);
    let sts = find(&docs, "StatefulSet", "alert-relay");
    let pod = &sts["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
    }
    let mounts = c["volumeMounts"].as_array().unwrap();
    let tls_mount = mounts.iter().find(|m| m["name"] == "tls").expect("the pair is mounted");
    assert!(tls_mount["subPath"].is_null(), "a subPath mount would never see a renewal");
    let tls_dir = tls_mount["mountPath"].as_str().unwrap();
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "tls").unwrap();
    let certificate = find(&docs, "Certificate", "alert-relay");
    assert_eq!(volume["secret"]["secretName"], certificate["spec"]["secretName"]);

    // The ConfigMap's config is valid with a real pair where the mount puts it,
    // and its exempt paths are the probes' and the scrape's.
    let text = find(&docs, "ConfigMap", "alert-relay-config")["data"]["alert-relay.yaml"].as_str().unwrap().to_string();
    let ca = Ca::new("cluster CA");
    let leaf = ca.leaf(&["alert-relay.monitoring.svc"]);
    let local_tls = dir.path().join("tls");
    std::fs::create_dir(&local_tls).unwrap();
    write(&local_tls, "tls.crt", &leaf.cert_pem);
    write(&local_tls, "tls.key", &leaf.key_pem);
    write(&local_tls, "ca.crt", &ca.pem());
    let local =
        write(dir.path(), "cm.yaml", &text.replace(&format!("{tls_dir}/"), &format!("{}/", local_tls.display())));
    let config = check_relay_config(&local, "/etc/alert-relay/secrets/", dir.path());
    let files = config.server.tls.expect("server.tls");
    assert!(files.client_ca_file.is_some());
    let probes: Vec<String> = ["livenessProbe", "readinessProbe"]
        .iter()
        .map(|p| c[*p]["httpGet"]["path"].as_str().unwrap().to_string())
        .collect();
    let monitor = find(&docs, "ServiceMonitor", "alert-relay");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(endpoint["tlsConfig"]["ca"]["secret"]["name"], certificate["spec"]["secretName"]);
    for path in probes.iter().map(String::as_str).chain([endpoint["path"].as_str().unwrap()]) {
        assert!(!files.needs_client_cert(path), "{path} needs no client certificate");
    }
    assert!(files.needs_client_cert("/webhook") && files.needs_client_cert("/api/v1/receivers"));

    // Alertmanager's TLS example names the Service and a name the certificate carries.
    let am = yaml_file(&repo("deploy/alertmanager/alertmanager-tls.yml"));
    let hook = &am["receivers"][0]["webhook_configs"][0];
    assert!(hook["url"].as_str().unwrap().starts_with("https://alert-relay.monitoring.svc:9097/"));
    let name = hook["http_config"]["tls_config"]["server_name"].clone();
    assert!(certificate["spec"]["dnsNames"].as_array().unwrap().contains(&name));
    assert_eq!(endpoint["tlsConfig"]["serverName"], name);
}

#[test]
fn dockerfile_and_compose_agree_with_the_configs() {
    if !needs(&["promtool"]) {
        return;
    }
    let root = repo("");
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("EXPOSE 9097"));
    assert!(dockerfile.contains(r#"CMD ["/usr/local/bin/alert-relay", "healthcheck"]"#));
    assert!(dockerfile.contains("USER 65532:65532"));
    assert_eq!(dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")), 2, "multi-stage");
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(root.join(src).exists(), "Dockerfile copies {src}, which does not exist");
        }
    }
    let shipped = Config::from_yaml(&std::fs::read_to_string(root.join("config/alert-relay.yaml")).unwrap()).unwrap();
    assert!(shipped.server.listen.ends_with(":9097"));

    let compose_dir = root.join("deploy/compose");
    let compose = yaml_file(&compose_dir.join("compose.yaml"));
    let services = compose["services"].as_object().unwrap();
    let mut mounts = std::collections::HashMap::new();
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let spec = volume.as_str().unwrap();
            let mut parts = spec.split(':');
            let (src, dst) = (parts.next().unwrap(), parts.next().unwrap());
            if src.starts_with('.') {
                assert!(compose_dir.join(src).exists(), "{name} mounts {src}, which does not exist");
                mounts.insert(dst.to_string(), compose_dir.join(src));
            }
        }
    }
    assert_eq!(services["alert-relay"]["build"]["context"], "../..");
    assert!(compose_dir.join("../..").join(services["alert-relay"]["build"]["dockerfile"].as_str().unwrap()).exists());

    // The relay: its config is mounted where its command says, and listens on the published port.
    let relay = &services["alert-relay"];
    let cmd: Vec<&str> = relay["command"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    let config_path = cmd[cmd.iter().position(|c| *c == "--config").unwrap() + 1];
    let dir = tempfile::tempdir().unwrap();
    let config = check_relay_config(&mounts[config_path], "/etc/alert-relay/secrets/", dir.path());
    let port = config.server.listen.rsplit(':').next().unwrap().to_string();
    assert_eq!(relay["ports"][0], format!("{port}:{port}"));
    for r in &config.receivers {
        let host = r.url.host_str().unwrap();
        assert!(services.contains_key(host), "receiver {} points at {host}, not a compose service", r.name);
    }

    // Alertmanager posts to that service and port, with the token the relay expects.
    let am = yaml_file(&mounts["/etc/alertmanager/alertmanager.yml"]);
    let hook = &am["receivers"][0]["webhook_configs"][0];
    assert_eq!(hook["url"], format!("http://alert-relay:{port}/webhook"));
    let am_token_path = hook["http_config"]["authorization"]["credentials_file"].as_str().unwrap();
    let am_token = std::fs::read_to_string(
        mounts["/etc/alertmanager/secrets"].join(Path::new(am_token_path).file_name().unwrap()),
    )
    .unwrap();
    let relay_token = std::fs::read_to_string(mounts["/etc/alert-relay/secrets"].join("webhook-token")).unwrap();
    assert_eq!(am_token.trim(), relay_token.trim());
    assert!(services["alertmanager"]["ports"][0].as_str().unwrap().ends_with(":9093"));

    // Prometheus scrapes the relay, loads the rules from where they are mounted.
    let prom = yaml_file(&mounts["/etc/prometheus/prometheus.yml"]);
    assert_eq!(prom["scrape_configs"][0]["job_name"], "alert-relay");
    assert_eq!(prom["scrape_configs"][0]["static_configs"][0]["targets"][0], format!("alert-relay:{port}"));
    let rules = prom["rule_files"][0].as_str().unwrap();
    assert!(mounts.contains_key(rules), "the rules file {rules} is mounted");
    let text = std::fs::read_to_string(&mounts["/etc/prometheus/prometheus.yml"]).unwrap();
    std::fs::copy(&mounts[rules], dir.path().join("alert-relay-rules.yaml")).unwrap();
    let local = write(dir.path(), "prometheus.yml", &text.replace(rules, "alert-relay-rules.yaml"));
    run_ok("promtool", &["check", "config", local.to_str().unwrap()], dir.path());
    assert_eq!(prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0], "alertmanager:9093");

    // Grafana: the data source is that Prometheus, the provider path holds the dashboard.
    let ds = yaml_file(&mounts["/etc/grafana/provisioning/datasources/prometheus.yaml"]);
    assert_eq!(ds["datasources"][0]["url"], "http://prometheus:9090");
    assert!(services["prometheus"]["ports"][0].as_str().unwrap().ends_with(":9090"));
    let provider = yaml_file(&mounts["/etc/grafana/provisioning/dashboards/alert-relay.yaml"]);
    let path = provider["providers"][0]["options"]["path"].as_str().unwrap();
    assert!(mounts[path].join("alert-relay.json").exists());
}

#[test]
fn dashboard_is_importable() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("dashboards/alert-relay.json")).unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "alert-relay");
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("variable {name}")).clone();
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert!(var("receiver")["definition"].as_str().unwrap().starts_with("label_values("));
    assert!(var("job")["definition"].as_str().unwrap().starts_with("label_values("));
    let panels = dashboard["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels.iter().map(|p| p["title"].as_str().unwrap()).collect();
    for needed in CORE_PANELS {
        assert!(titles.contains(&needed), "panel {needed:?} missing");
    }
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {} uses the variable", p["title"]);
    }
}

/// The `yaml` and plain fenced blocks of one README section, in order.
fn readme_section_blocks(heading: &str) -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let start = readme.find(&format!("\n## {heading}\n")).unwrap_or_else(|| panic!("no section {heading}"));
    let rest = &readme[start + 4 + heading.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut blocks = Vec::new();
    let mut parts = section.split("```");
    parts.next();
    while let (Some(block), Some(_)) = (parts.next(), parts.next()) {
        let (lang, body) = block.split_once('\n').unwrap_or((block, ""));
        blocks.push((lang.to_string(), body.to_string()));
    }
    blocks
}

#[test]
fn readme_body_format_examples_load_render_and_fail_as_shown() {
    let blocks = readme_section_blocks("Body formats");
    let yaml: Vec<&String> = blocks.iter().filter(|(l, _)| l == "yaml").map(|(_, b)| b).collect();
    // The first: a whole receivers list, presets and a template.
    let config = Config::from_yaml(yaml[0]).unwrap_or_else(|e| panic!("README's first example:\n{e}"));
    assert_eq!(config.receivers.len(), 3);
    let fixture = std::fs::read(repo("tests/fixtures/alertmanager-0.25/firing.json")).unwrap();
    let bridge = config.receivers[2].payload.render(&fixture, "pager-bridge").unwrap();
    let bridge: serde_json::Value = serde_json::from_slice(&bridge).unwrap();
    assert_eq!(bridge["summary"], "[FIRING] HighLatency");
    assert_eq!(bridge["alerts"][0]["since"], "2026-11-27T03:59:40Z");
    // The worked example: a payload block of a receiver.
    let receiver = format!("receivers:\n  - name: grouped\n    url: http://127.0.0.1:9/\n{}", yaml[1]);
    let config = Config::from_yaml(&receiver).unwrap_or_else(|e| panic!("README's worked example:\n{e}"));
    let text = config.receivers[0].payload.render(&fixture, "grouped").unwrap();
    let text = String::from_utf8(text.into_owned()).unwrap();
    assert!(text.starts_with("FIRING: HighLatency (2)"), "{text}");
    assert!(text.contains("critical:") && text.contains("warning:"), "{text}");
    assert!(text.contains("silence: http://vm:19093/#/silences/new?filter="), "{text}");
    // The errors shown are the errors given, for the templates they describe.
    let shown: Vec<&str> = blocks.iter().filter(|(l, _)| l.is_empty()).flat_map(|(_, b)| b.lines()).collect();
    let broken = [
        "{\"summary\": {{ status | tojson }},\n \"count\": {{ alerts | length }},\n \"alerts\": {{ alerts | length",
        "{\"text\": \"{{ commonAnnotations.summary }}\", }",
    ];
    for (template, expected) in broken.iter().zip(&shown) {
        let yaml = format!(
            "receivers:\n  - {{ name: a }}\n  - {{ name: b }}\n  - name: pager-bridge\n    url: http://127.0.0.1:9/\n    payload:\n      format: template\n      template: {}\n",
            serde_json::to_string(template).unwrap()
        )
        .replace("{ name: a }", "{ name: a, url: 'http://127.0.0.1:9/' }")
        .replace("{ name: b }", "{ name: b, url: 'http://127.0.0.1:9/' }");
        let errors = Config::from_yaml(&yaml).unwrap_err().to_string();
        assert_eq!(errors, *expected, "README shows a different error for {template:?}");
    }
}
