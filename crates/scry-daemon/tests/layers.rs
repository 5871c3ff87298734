//! The daemon's layers, checked: every REST route and every MCP tool is an adapter over
//! functions of `service/` that exist and that it calls; only `api/` knows axum.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether `service::{module}::{name}` is a public function of the service layer.
fn service_fn_exists(service: &str) -> bool {
    let Some((module, name)) = service.split_once("::") else {
        return false;
    };
    let path = src().join("service").join(format!("{module}.rs"));
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    text.contains(&format!("pub fn {name}("))
        || text.contains(&format!("pub async fn {name}("))
        || text.contains(&format!("pub fn {name}<"))
        || text.contains(&format!("pub async fn {name}<"))
}

/// Every `.rs` file under `dir`, concatenated.
fn sources_under(dir: &Path) -> String {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    files.iter().map(|f| read(f)).collect()
}

#[test]
fn every_route_calls_service_functions_that_exist() {
    let api = sources_under(&src().join("api"));
    let routes = scry_daemon::api::routes();
    assert!(routes.len() > 30, "{} routes", routes.len());
    let mut seen = BTreeSet::new();
    for route in &routes {
        assert!(seen.insert(route.path), "{} declared twice", route.path);
        assert!(!route.serves.is_empty(), "{} serves nothing", route.path);
        for (method, service) in route.serves {
            assert!(
                ["GET", "POST", "DELETE"].contains(method),
                "{} {method}",
                route.path
            );
            assert!(
                service_fn_exists(service),
                "{method} {}: service::{service} is not a public function of src/service/",
                route.path
            );
            assert!(
                api.contains(&format!("{service}(")),
                "{method} {}: no handler in src/api/ calls {service}(",
                route.path
            );
        }
    }
}

#[test]
fn every_mcp_tool_calls_service_functions_that_exist() {
    let mcp = sources_under(&src().join("mcp"));
    let listed: BTreeSet<&str> = scry_daemon::mcp::TOOLS.iter().map(|(t, _)| *t).collect();
    let served: BTreeSet<String> = scry_daemon::mcp::ScryMcp::tool_names()
        .into_iter()
        .collect();
    let listed_owned: BTreeSet<String> = listed.iter().map(|t| t.to_string()).collect();
    assert_eq!(
        served, listed_owned,
        "the router's tools and mcp::TOOLS differ"
    );
    for (tool, services) in scry_daemon::mcp::TOOLS {
        assert!(!services.is_empty(), "{tool} calls nothing");
        for service in *services {
            assert!(
                service_fn_exists(service),
                "{tool}: service::{service} is not a public function of src/service/"
            );
            assert!(
                mcp.contains(&format!("{service}(")),
                "{tool}: src/mcp/ never calls {service}("
            );
        }
    }
    assert!(
        !mcp.contains("/api/v1/"),
        "an MCP tool goes through the REST router instead of the service layer"
    );
}

#[test]
fn only_the_api_layer_knows_axum() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let api = src().join("api");
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(&api))
        .filter(|f| read(f).contains("axum"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(offenders.is_empty(), "axum outside src/api/: {offenders:?}");
}
