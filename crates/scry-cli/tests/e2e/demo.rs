//! `scry demo` on a fresh home: starts the daemon and the sample service, wakes it.

use crate::support::{text, Ctx};

#[test]
fn demo_runs_the_sample_service_and_wakes_it() {
    let ctx = Ctx::new();
    ctx.config_free_port();

    let out = ctx.scry(&["demo"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("started the daemon"), "{all}");
    assert!(all.contains("scry-demo") && all.contains("awake"), "{all}");
    assert!(all.contains("Try next"), "{all}");
    // The probe the demo adds shows typed values live.
    assert!(
        all.contains("order.total=") && all.contains("order.customer='"),
        "{all}"
    );

    // Running it again reuses the service.
    let again = ctx.scry_json(&["demo"]);
    let pid = again["demo_pid"].as_u64().expect("pid");
    let events = again["events"].as_array().expect("events");
    assert!(!events.is_empty(), "{again}");
    assert_eq!(
        events[0]["data"]["values"]["order.total"]["t"], "float",
        "{again}"
    );
    assert!(
        again["processes"]
            .as_array()
            .expect("list")
            .iter()
            .any(|p| p["pid"] == pid && p["state"] == "awake"),
        "{again}"
    );

    let out = ctx.scry(&["demo", "--stop"]);
    assert!(out.status.success(), "{}", text(&out));
    // Right after the stop, `ps` knows it is gone (not sleeping until the next sweep).
    let ps = ctx.scry_json(&["ps"]);
    let states: Vec<&serde_json::Value> = ps["processes"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|p| p["pid"] == pid)
        .map(|p| &p["state"])
        .collect();
    assert!(states.iter().all(|s| *s == "gone"), "{ps}");
    let out = ctx.scry(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
}
