//! The command line's first impressions: a port in use, a database that is not there,
//! logs redirected to a file. Each runs the real `careboard` binary.

use std::time::{Duration, Instant};

fn careboard() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_careboard"));
    command.env_remove("DATABASE_URL").env_remove("RUST_LOG");
    command
}

/// Runs to the end (at most 30 s); returns success, stderr and how long it took.
fn run(command: &mut std::process::Command) -> (bool, String, Duration) {
    let started = Instant::now();
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run careboard");
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return (status.success(), stderr, started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("careboard did not stop within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_port_in_use_is_reported_at_once_with_the_address_and_the_fix() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    for args in [
        vec!["--bind", &address],
        vec!["demo", "--live", "--bind", &address],
    ] {
        let data_dir = tempfile::tempdir().unwrap();
        let (ok, stderr, took) = run(careboard()
            .args(&args)
            .arg("--data-dir")
            .arg(data_dir.path()));
        assert!(!ok, "{args:?}");
        assert!(
            stderr.contains(&format!("cannot listen on {address}"))
                && stderr.contains("already in use")
                && stderr.contains("--bind"),
            "{args:?}: {stderr}"
        );
        assert!(
            !data_dir.path().join("pgdata").exists(),
            "{args:?}: PostgreSQL was started before the port was checked"
        );
        assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
        assert!(
            !stderr.contains('\u{1b}'),
            "colour codes in redirected output: {stderr:?}"
        );
    }
}

#[test]
fn connection_errors_name_their_cause_at_once() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ok, stderr, took) = run(careboard().arg("migrate").env(
        "DATABASE_URL",
        format!("postgres://careboard:secret@127.0.0.1:{closed}/careboard"),
    ));
    assert!(!ok);
    assert!(
        stderr.to_lowercase().contains("connection refused")
            && stderr.contains(&format!("127.0.0.1:{closed}")),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(!stderr.contains("secret"), "the password leaked: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in redirected output: {stderr:?}"
    );

    let (ok, stderr, _) = run(careboard()
        .arg("migrate")
        .env("DATABASE_URL", "mysql://careboard@127.0.0.1/careboard"));
    assert!(!ok);
    assert!(
        stderr.contains("not a PostgreSQL URL") && stderr.contains("postgres://"),
        "{stderr}"
    );
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused_and_cli_commands_share_it() {
    let data_dir = crate::helpers::files::data_dir();
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut first = careboard()
        .args(["--bind", &address, "--data-dir"])
        .arg(data_dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Up once /readyz answers 200 (cluster started, database migrated).
    let ready = || -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(&address) else {
            return false;
        };
        let _ = stream.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
    };
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > Duration::from_secs(120) {
            let _ = first.kill();
            panic!("the first server did not start");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, stderr, _) = run(careboard()
        .args(["--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path()));
    assert!(!ok);
    assert!(
        stderr.contains(&format!("in use by Careboard process {}", first.id())),
        "{stderr}"
    );
    let (ok, stderr, _) = run(careboard()
        .arg("migrate")
        .arg("--data-dir")
        .arg(data_dir.path()));
    assert!(ok, "migrate shares the running cluster: {stderr}");
    // `audit verify` too, on the built-in database (the server's own login may not
    // change the schema: it failed with "permission denied for schema public").
    let audit = || {
        careboard()
            .args(["audit", "verify", "--data-dir"])
            .arg(data_dir.path())
            .output()
            .unwrap()
    };
    let verified = audit();
    assert!(
        verified.status.success()
            && String::from_utf8_lossy(&verified.stdout).contains("access log intact"),
        "audit verify shares the running cluster: {verified:?}"
    );

    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let _ = first.wait();
    // And with the server stopped, on a cluster of its own.
    let verified = audit();
    assert!(
        verified.status.success()
            && String::from_utf8_lossy(&verified.stdout).contains("access log intact"),
        "audit verify with the server stopped: {verified:?}"
    );
}

/// The runtime's event interval is an operator setting: a valid one runs the command, a
/// bad one is refused at start with a message naming the setting, before anything runs.
#[test]
fn the_runtime_event_interval_setting_is_applied_or_refused_clearly() {
    let run = |value: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_careboard"))
            .arg("schema")
            .env("CAREBOARD_RUNTIME_EVENT_INTERVAL", value)
            .output()
            .expect("run careboard schema")
    };
    let ok = run("7");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        careboard::graphql::sdl(),
        "the command ran as without the setting"
    );
    for bad in ["0", "-3", "fast", ""] {
        let out = run(bad);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(out.stdout.is_empty(), "{bad:?}: nothing ran");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("CAREBOARD_RUNTIME_EVENT_INTERVAL must be a whole number above 0"),
            "{bad:?}: {err}"
        );
    }
}

/// The start and stop logs say how the process runs: GraphiQL off is not announced as
/// served, a process without the projector says so (its `minPosition` reads wait for
/// another's), and a stop is announced once with a metrics listener beside the API.
/// Found by a newcomer: "GraphiQL at …" with GraphiQL off (the URL answered 404),
/// nothing about the projector, and "shutting down" twice.
#[test]
fn the_logs_say_how_the_process_runs_and_announce_one_stop() {
    use std::io::BufRead;
    let data_dir = crate::helpers::files::data_dir();
    let mut server = careboard()
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--metrics-bind",
            "127.0.0.1:0",
            "--graphiql",
            "false",
            "--projector",
            "off",
            "--data-dir",
        ])
        .arg(data_dir.path())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, read) = std::sync::mpsc::channel();
    let stderr = server.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let mut log = Vec::new();
    let started = Instant::now();
    while !log.iter().any(|l: &String| l.contains("metrics at")) {
        match read.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => log.push(line),
            Err(_) if started.elapsed() < Duration::from_secs(120) => {}
            Err(_) => {
                let _ = server.kill();
                panic!("the server did not start: {log:#?}");
            }
        }
    }
    // At once: a stop as soon as the process says it listens is a clean stop too. A
    // newcomer's SIGTERM in the first half second after "listening" went wrong; signalled
    // at once, the metrics listener, whose handler was set first, took the signal and
    // stopped, while the API's handler, set a moment later, never heard it: it ran on.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        if stopping.elapsed() > Duration::from_secs(30) {
            let _ = server.kill();
            panic!("a SIGTERM right after start did not stop the server: {log:#?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    while let Ok(line) = read.recv_timeout(Duration::from_secs(2)) {
        log.push(line);
    }
    let listening = log
        .iter()
        .find(|l| l.contains("Careboard listening"))
        .unwrap();
    assert!(
        listening.contains("(GraphiQL off)") && !listening.contains("GraphiQL at"),
        "{listening}"
    );
    assert!(log.iter().any(|l| l.contains("projector off")), "{log:#?}");
    assert_eq!(
        log.iter().filter(|l| l.contains("shutting down")).count(),
        1,
        "{log:#?}"
    );
    assert!(status.success(), "{status:?}: {log:#?}");
}
