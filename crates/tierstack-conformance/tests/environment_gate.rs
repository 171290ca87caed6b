//! `environment::main` reports a test whose environment is missing as
//! ignored, with the reason, and as a failure when
//! `TIERSTACK_REQUIRE_ENVIRONMENT` is set. The binary runs itself as a
//! child, with and without the variable, and reads the child's report.

use std::process::Command;

use tierstack_conformance::environment::{self, REQUIRE, unavailable};

const CHILD: &str = "TIERSTACK_ENVIRONMENT_GATE_CHILD";

fn child(require: bool) -> (bool, String) {
    let mut command = Command::new(std::env::current_exe().expect("own path"));
    command.env(CHILD, "1").env_remove(REQUIRE);
    if require {
        command.env(REQUIRE, "1");
    }
    let out = command.output().expect("runs itself");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn an_unavailable_environment_is_ignored_unless_required() -> Result<(), String> {
    let (ok, text) = child(false);
    if !(ok && text.contains("ignored") && text.contains("no moon here")) {
        return Err(format!(
            "without {REQUIRE}: expected ignored with the reason: {text}"
        ));
    }
    let (ok, text) = child(true);
    if ok || !text.contains("no moon here") || !text.contains(REQUIRE) {
        return Err(format!(
            "with {REQUIRE}: expected a failure naming it: {text}"
        ));
    }
    Ok(())
}

fn main() {
    if std::env::var_os(CHILD).is_some() {
        environment::main(vec![("needs_the_moon", || unavailable("no moon here"))]);
    }
    match an_unavailable_environment_is_ignored_unless_required() {
        Ok(()) => println!("test an_unavailable_environment_is_ignored_unless_required ... ok"),
        Err(why) => {
            println!(
                "test an_unavailable_environment_is_ignored_unless_required ... FAILED: {why}"
            );
            std::process::exit(1);
        }
    }
}
