//! The README's demo, in one foreground process: 3 nodes × 2 pods, the ping matrix, the
//! incident on node-2 under continuous ping, the heal, `flanneld explain` and `flanneld
//! diagnose`, tear-down.

use std::io::Write;
use std::time::Instant;

use anyhow::bail;

use frs_testsupport::cluster::cancel_flag;

use crate::commands;
use crate::rundir::RunDir;
use crate::supervisor::{self, UpArgs};

pub fn run(run: &RunDir, args: &UpArgs) -> anyhow::Result<()> {
    let total = Instant::now();
    let mut out = std::io::stdout();
    supervisor::prepare(run, &mut out)?;
    let cancel = cancel_flag();
    supervisor::install_signal_handler(cancel.clone(), run.clone())?;
    run.write_state(&supervisor::snapshot(run, None, "starting"))?;

    let step = |out: &mut dyn Write, n: u32, text: &str| writeln!(out, "\n[{n}/6] {text}");
    step(
        &mut out,
        1,
        &format!(
            "bringing up {} nodes × {} pods in network namespaces {}* (real flanneld per node, pods wired by the real flannel CNI binary, stock kube-flannel conflist)",
            args.nodes,
            args.pods,
            run.netns_prefix()
        ),
    )?;
    let t = Instant::now();
    let mut cluster = supervisor::build(run, args, cancel.clone(), &mut out)?;
    run.write_state(&supervisor::snapshot(run, Some(&cluster), "ready"))?;
    writeln!(out, "  cluster up in {:.1} s", t.elapsed().as_secs_f64())?;

    // From here on every path tears down before returning.
    let result = (|| -> anyhow::Result<()> {
        step(
            &mut out,
            2,
            "pod-to-pod ping matrix (one ping per pair, RTT; cross-node pairs go over VXLAN)",
        )?;
        if !commands::ping_matrix(&cluster, &mut out)? {
            bail!("some pods cannot reach each other");
        }

        let node = "node-2";
        step(
            &mut out,
            3,
            &format!(
                "the incident on {node}: a stale, unconditional update drops flannel's annotations while pods elsewhere ping {node}'s pods"
            ),
        )?;
        let report = commands::incident(&mut cluster, node, &mut out)?;

        step(&mut out, 4, &format!("`flanneld explain` on {node}"))?;
        let text = commands::explain(&cluster, node)?;
        for l in text.lines() {
            writeln!(out, "  {l}")?;
        }
        // The one command for an operator on any node: every peer's entries and tunnel.
        writeln!(out, "\n  `flanneld diagnose` on node-1:")?;
        let (code, text, err) = cluster.diagnose("node-1", &[])?;
        for l in text.lines() {
            writeln!(out, "  {l}")?;
        }
        if code != 0 {
            bail!("flanneld diagnose on node-1 exited {code}: {}", err.trim());
        }

        step(&mut out, 5, "ping matrix after the incident")?;
        if !commands::ping_matrix(&cluster, &mut out)? {
            bail!("some pods cannot reach each other after the incident");
        }
        if report.lost() > 0 {
            bail!(
                "{} pings to {node}'s pods were lost during the incident",
                report.lost()
            );
        }
        writeln!(
            out,
            "\n  summary: {node}'s annotations healed in {} (API server clock; {:.0} ms as seen by this tool), 0 pings lost; flanneld logged:\n    {}",
            commands::server_ms(report.heal_ms_server),
            report.heal_observed.as_secs_f64() * 1000.0,
            report
                .log_lines
                .last()
                .map(|l| l.trim())
                .unwrap_or("(nothing)")
        )?;
        Ok(())
    })();

    step(&mut out, 6, "tearing everything down")?;
    let down = supervisor::teardown(run, cluster, &mut out);
    writeln!(
        out,
        "\ndemo finished in {:.1} s",
        total.elapsed().as_secs_f64()
    )?;
    result.and(down)
}
