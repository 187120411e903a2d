//! `kproxy-echo`: the lab's echo server and client.
//!
//! ```text
//! kproxy-echo --name NAME [--tcp PORT]... [--udp PORT]...
//!     Answers every TCP connection and UDP datagram on [::]:PORT (IPv4 and IPv6)
//!     with "NAME PEER-IP:PEER-PORT\n"; prints "ready" once every port is bound.
//! kproxy-echo client tcp|udp ADDR TIMEOUT_MS
//!     One request from this process; prints the verdict line the lab parses.
//! ```

use std::{io::Write as _, process::ExitCode};

use kproxy_tests::lab::{client, echo};

const USAGE: &str = "usage: kproxy-echo --name NAME [--tcp PORT]... [--udp PORT]...\n       \
                     kproxy-echo client tcp|udp ADDR TIMEOUT_MS";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("client") => client::cli(&args[1..]).map(|line| println!("{line}")),
        _ => run_server(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "kproxy-echo: {message}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run_server(args: &[String]) -> Result<(), String> {
    let mut name = None;
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let port = || {
            value
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("bad port {value:?} for {flag}"))
        };
        match flag.as_str() {
            "--name" => name = Some(value.clone()),
            "--tcp" => tcp.push(port()?),
            "--udp" => udp.push(port()?),
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    let name = name.ok_or("--name is required")?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("bad name {name:?}: it must be one word"));
    }
    echo::serve(&name, &tcp, &udp, || {
        // The parent waits for this line; a failed write means it is gone.
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{}", echo::READY_LINE);
        let _ = out.flush();
    })
    .map_err(|e| {
        let mut text = e.to_string();
        if let Some(source) = std::error::Error::source(&e) {
            text = format!("{text}: {source}");
        }
        text
    })
}
