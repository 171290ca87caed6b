//! On a terminal, `bench` shows progress that follows the clock (its tasks
//! all finish at the deadline, so counting them would not move), and the
//! commands that draw bars (`export`, `stats`) still print their reports.
//! Run under `script` (util-linux), which gives the command a terminal and
//! records what it drew.

mod support;

use std::process::Command;

use support::Sandbox;

/// Runs `tierstack ARGS` on a pseudo-terminal; returns every frame drawn.
fn on_a_terminal(sandbox: &Sandbox, args: &str) -> String {
    let binary = env!("CARGO_BIN_EXE_tierstack");
    let mut script = Command::new("script");
    script.args(["-qfec", &format!("{binary} {args}"), "/dev/null"]);
    let out = sandbox
        .sandboxed(script)
        .output()
        .expect("script (util-linux) runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).replace('\r', "\n")
}

#[test]
fn bench_progress_follows_the_clock_and_reports_survive_a_terminal() {
    let sandbox = Sandbox::new();
    let (config, _) = sandbox.flat_config("c");
    let config = config.as_str();

    let bench = on_a_terminal(&sandbox, &format!("--config {config} bench --duration 3s"));
    for frame in ["measuring", "1/3 s", "2/3 s"] {
        assert!(bench.contains(frame), "no {frame:?} drawn: {bench}");
    }

    for i in 0..50 {
        sandbox
            .run(&["--config", config, "set", &format!("k:n={i}"), "1"])
            .expect(0);
    }
    let export = on_a_terminal(
        &sandbox,
        &format!(
            "--config {config} export {}/e.jsonl",
            sandbox.path("").display()
        ),
    );
    assert!(export.contains("exported 50 entries"), "{export}");
    let stats = on_a_terminal(&sandbox, &format!("--config {config} stats"));
    assert!(stats.contains("sqlite"), "{stats}");
}
