//! The example configs in config/ are what users copy: each must pass `slotline check`.

mod support;

use support::Slotline;

#[test]
fn every_example_config_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).expect("config/ exists") {
        let path = entry.expect("read config/").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yml") {
            continue;
        }
        let out = Slotline::command()
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run slotline check");
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(
        checked >= 3,
        "only {checked} example configs found in {dir}"
    );
}
