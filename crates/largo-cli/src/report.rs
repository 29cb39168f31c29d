use anyhow::Result;
use std::path::PathBuf;

/// The report is one HTML file with everything inlined: open it in any browser, offline.
#[derive(clap::Args)]
pub struct Args {
    /// A run directory (`largo train`) or a sweep directory (`largo sweep`).
    #[arg(long = "run", value_name = "DIR")]
    dir: PathBuf,
    /// Where to write the HTML (default: <DIR>/report.html).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let out = a.out.unwrap_or_else(|| a.dir.join("report.html"));
    let report = largo::report::write_report(&a.dir, &out)?;
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    println!(
        "{} report, {} images, {} KB  →  {}",
        report.kind.as_str(),
        report.images,
        report.html.len().div_ceil(1024),
        out.display()
    );
    Ok(())
}
