//! `tierstack export -` into a reader that stops early (`| head`) ends
//! quietly with exit 0, like every other command whose stdout goes away.

mod support;

use std::process::Command;

use support::Sandbox;

#[test]
fn export_to_a_pipe_that_closes_early_exits_quietly() {
    let sandbox = Sandbox::new();
    let (config, _) = sandbox.flat_config("cache");
    // More than a pipe buffer holds, so the write really fails.
    let big = format!("\"{}\"", "x".repeat(20_000));
    for i in 0..20 {
        sandbox
            .run(&["--config", &config, "set", &format!("k:n={i}"), &big])
            .expect(0);
    }
    let mut bash = Command::new("bash");
    bash.arg("-c")
        .arg(r#"set -o pipefail; "$1" --config "$2" export - | head -c 10 >/dev/null"#)
        .arg("bash")
        .arg(env!("CARGO_BIN_EXE_tierstack"))
        .arg(&config);
    let out = sandbox.sandboxed(bash).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}: {stderr}",
        out.status.code()
    );
    assert!(
        !stderr.contains("Broken pipe") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
