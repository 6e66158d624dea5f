//! `aiaas config show`: the effective configuration, in precedence order, secrets masked.

use crate::common::aiaas;

fn show(home: &std::path::Path, flags: &[&str]) -> String {
    let args: Vec<&str> = ["config", "show"].iter().chain(flags).copied().collect();
    let env = [
        ("AIAAS_HOST", "0.0.0.0"),
        ("AIAAS_API_KEY", "aiaas-verysecretkey0123456789"),
    ];
    aiaas(home, &args, &env)
}

#[test]
fn config_show_follows_flags_then_environment_then_file_and_masks_secrets() {
    let home = std::env::temp_dir().join(format!("aiaas-config-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join("aiaas.toml"),
        "host = \"10.0.0.1\"\nport = 9999\nmax_body_bytes = 1000\nmax_model_memory = \"2GiB\"\n\
         keep_alive_secs = 60\n",
    )
    .unwrap();

    let shown = show(&home, &[]);
    // Environment beats the file for the host; the file beats the default for the port.
    assert!(shown.contains("listen = \"0.0.0.0:9999\""), "{shown}");
    assert!(shown.contains("max_body_bytes = 1000"), "{shown}");
    assert!(
        shown.contains("max_model_memory = \"2147483648B\""),
        "{shown}"
    );
    assert!(shown.contains("keep_alive_secs = 60"), "{shown}");
    assert!(shown.contains("api_key = \"aiaas-ver*"), "{shown}");
    assert!(!shown.contains("secretkey"), "the key leaked: {shown}");
    // A flag beats them all.
    assert!(show(&home, &["--port", "7000"]).contains("listen = \"0.0.0.0:7000\""));
    let flags = show(&home, &["--keep-alive-secs", "5", "--preload", "a,b"]);
    assert!(flags.contains("keep_alive_secs = 5"), "{flags}");
    assert!(flags.contains("preload = [\"a\", \"b\"]"), "{flags}");
    std::fs::remove_dir_all(home).unwrap();
}
