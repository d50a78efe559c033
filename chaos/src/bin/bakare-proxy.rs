//! The chaos proxy on its own, for trying bakare against a bad network by hand:
//! `bakare-proxy HOST:PORT [--seed N] [--permille N] [--kinds drop,reset,stall,delay,truncate]
//! [--within BYTES] [--stall-ms N] [--delay-ms N] [--method PUT] [--deny DELETE]`
//! prints the port it listens on, then its counters every ten seconds, until killed.
use std::process::ExitCode;
use std::time::Duration;

use chaos::proxy::{FaultKind, Proxy, ProxyConfig};

fn kind(s: &str) -> Result<FaultKind, String> {
    Ok(match s {
        "drop" => FaultKind::Drop,
        "reset" => FaultKind::Reset,
        "stall" => FaultKind::Stall,
        "delay" => FaultKind::Delay,
        "truncate" => FaultKind::Truncate,
        other => return Err(format!("unknown fault kind {other:?}")),
    })
}

fn config(args: &[String]) -> Result<ProxyConfig, String> {
    let upstream = args.first().ok_or("usage: bakare-proxy HOST:PORT [options]")?;
    let upstream = std::net::ToSocketAddrs::to_socket_addrs(upstream.as_str())
        .map_err(|e| format!("{upstream}: {e}"))?
        .next()
        .ok_or_else(|| format!("{upstream}: no address"))?;
    let mut cfg = ProxyConfig::new(upstream, 0, 100);
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || value.parse::<u64>().map_err(|e| format!("{flag} {value}: {e}"));
        match flag.as_str() {
            "--seed" => cfg.seed = num()?,
            "--permille" => cfg.fault_permille = num()?,
            "--within" => cfg.fault_within = num()?.max(1),
            "--stall-ms" => cfg.stall = Duration::from_millis(num()?),
            "--delay-ms" => cfg.delay = Duration::from_millis(num()?),
            "--kinds" => cfg.kinds = value.split(',').map(kind).collect::<Result<_, _>>()?,
            "--method" => cfg.only_method = Some(value.clone()),
            "--deny" => cfg.deny_method = Some(value.clone()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bakare-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let upstream = cfg.upstream;
    let proxy = match Proxy::start(cfg) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bakare-proxy: cannot listen: {e}");
            return ExitCode::from(1);
        }
    };
    println!("listening on 127.0.0.1:{}, forwarding to {upstream}", proxy.port);
    loop {
        std::thread::sleep(Duration::from_secs(10));
        println!("{}", proxy.stats.summary());
    }
}
