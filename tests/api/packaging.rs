//! The container files: the image builds from what the Dockerfile copies, it says when
//! it is healthy, and compose exposes nothing and hard-codes no secret.
//! (`.ci/run` also builds the binary in a directory holding only the COPY'd paths.)

use std::path::{Path, PathBuf};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The source paths of the build stage's COPY lines (not `--from=` copies).
fn copied_paths(dockerfile: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for line in dockerfile.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"COPY") || words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        // COPY src... dest
        paths.extend(words[1..words.len() - 1].iter().map(|w| w.to_string()));
    }
    paths
}

/// Every file a Rust source embeds (`include_str!` / `include_bytes!`), relative to
/// the crate root.
fn embedded_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for path in crate::helpers::files::files_under("src") {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        // Unit tests are not part of the image's build.
        let text = crate::helpers::files::production_part(&text);
        for marker in ["include_str!(\"", "include_bytes!(\""] {
            for piece in text.split(marker).skip(1) {
                let relative = piece.split('"').next().unwrap();
                let resolved = path.parent().unwrap().join(relative);
                let resolved = std::fs::canonicalize(&resolved)
                    .unwrap_or_else(|_| panic!("{} embeds missing {relative}", path.display()));
                files.push(
                    resolved
                        .strip_prefix(root.canonicalize().unwrap())
                        .unwrap()
                        .to_path_buf(),
                );
            }
        }
    }
    files
}

#[test]
fn the_docker_build_copies_every_file_the_binary_embeds() {
    let copied = copied_paths(&read("Dockerfile"));
    assert!(copied.iter().any(|p| p == "src"), "{copied:?}");
    let embedded = embedded_files();
    assert!(!embedded.is_empty());
    let missing: Vec<_> = embedded
        .iter()
        .filter(|file| {
            !copied
                .iter()
                .any(|c| file.starts_with(c.trim_end_matches('/')))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the Dockerfile does not COPY {missing:?}"
    );
}

#[test]
fn the_image_has_a_healthcheck_on_readyz() {
    let dockerfile = read("Dockerfile");
    let healthcheck = dockerfile
        .split("HEALTHCHECK")
        .nth(1)
        .expect("a HEALTHCHECK in the Dockerfile");
    assert!(healthcheck.contains("/readyz"), "{healthcheck}");
    let compose = read("docker-compose.yml");
    let careboard = compose.split("\n  careboard:").nth(1).unwrap();
    assert!(careboard.contains("healthcheck:") && careboard.contains("/readyz"));
}

#[test]
fn compose_publishes_on_loopback_and_reads_credentials_from_the_env_file() {
    let compose = read("docker-compose.yml");
    let ports: Vec<&str> = compose
        .lines()
        .skip_while(|l| l.trim() != "ports:")
        .skip(1)
        .take_while(|l| l.trim_start().starts_with('-'))
        .collect();
    assert!(!ports.is_empty());
    for port in ports {
        assert!(
            port.contains("127.0.0.1:"),
            "published beyond loopback: {port}"
        );
    }
    for line in compose.lines() {
        let line = line.trim();
        let secret = ["POSTGRES_PASSWORD", "DATABASE_URL", "DATABASE_OWNER_URL"]
            .iter()
            .any(|key| line.starts_with(&format!("{key}:")));
        if secret {
            assert!(
                line.contains("${CAREBOARD_DB_PASSWORD")
                    || line.contains("${CAREBOARD_SERVER_DB_PASSWORD"),
                "hard-coded secret: {line}"
            );
        }
    }
    // The script that creates the server's login takes its password from the env file.
    let init = read("deploy/postgres-init/10-careboard-roles.sh");
    assert!(init.contains("$CAREBOARD_SERVER_DB_PASSWORD"));
    assert!(!init.contains("password '"), "hard-coded login password");
    let example = read(".env.example");
    assert!(example.contains("CAREBOARD_DB_PASSWORD="));
    assert!(example.contains("CAREBOARD_SERVER_DB_PASSWORD="));
    // Listening on the container's network needs an identity provider: compose asks
    // for one rather than start a server the development issuer would refuse.
    for key in ["CAREBOARD_OIDC_ISSUER", "CAREBOARD_OIDC_AUDIENCE"] {
        assert!(
            example.contains(&format!("{key}=")),
            "{key} in .env.example"
        );
        assert!(
            compose.contains(&format!("{key}: ${{{key}:?")),
            "compose requires {key}"
        );
    }
    assert!(read(".gitignore").lines().any(|l| l.trim() == ".env"));
}

/// A newcomer reads the README's "Test it" to learn what `cargo test` needs beyond
/// Rust; it named only PostgreSQL while `.ci/run` installs Chromium, curl, jq and
/// Node.js too (their tests are skipped with a note where they are missing).
#[test]
fn the_readmes_test_section_names_everything_ci_installs() {
    let readme = read("README.md");
    let start = readme.find("## Test it").expect("a \"Test it\" section");
    let end = readme[start + 2..]
        .find("\n## ")
        .map_or(readme.len(), |e| start + 2 + e);
    let section = readme[start..end].to_lowercase().replace('.', "");
    let ci = read(".ci/run");
    let mut named = Vec::new();
    for line in ci.lines() {
        if let Some(rest) = line.split("packages+=(").nth(1) {
            let first = rest.split([' ', ')']).next().unwrap_or_default();
            named.push(first.to_string());
        }
    }
    assert!(named.len() >= 5, "{named:?}");
    for package in named {
        assert!(
            section.contains(&package),
            "the README's \"Test it\" does not name {package}, which .ci/run installs"
        );
    }
}
