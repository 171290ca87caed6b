//! The registry lists exactly the backends compiled in through features.

#[test]
fn backends_lists_the_compiled_in_backends() {
    let names: Vec<&str> = tierstack::backends().iter().map(|d| d.name).collect();
    let mut expected = Vec::new();
    for (enabled, name) in [
        (cfg!(feature = "memory"), "memory"),
        (cfg!(feature = "redb"), "redb"),
        (cfg!(feature = "redis"), "redis"),
        (cfg!(feature = "sled"), "sled"),
        (cfg!(feature = "sqlite"), "sqlite"),
    ] {
        if enabled {
            expected.push(name);
        }
    }
    assert_eq!(names, expected);
}
