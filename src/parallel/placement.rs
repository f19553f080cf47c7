//! Where one process's ranks sit in a run over several hosts, and how the hosts agree on the
//! NCCL group id: the process holding global rank 0 makes it and writes it (hex) to a file every
//! host can read (`--nccl-id FILE`), or every process is given it in `MOVQ_NCCL_ID`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Bytes of an NCCL unique id.
pub const ID_BYTES: usize = 128;

/// This process's ranks: global ranks `first_rank..first_rank + local` of `world`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub world: usize,
    pub first_rank: usize,
    pub local: usize,
    /// Where the group id is published (runs over several hosts).
    pub id_file: Option<PathBuf>,
}

impl Placement {
    /// From `--ranks`, `--world-size`, `--first-rank`, `--nccl-id`.
    pub fn new(
        local: usize,
        world: Option<usize>,
        first_rank: usize,
        id_file: Option<PathBuf>,
    ) -> Result<Self> {
        let world = world.unwrap_or(local);
        if local == 0 {
            bail!("--ranks must be at least 1");
        }
        if first_rank + local > world {
            bail!(
                "--first-rank {first_rank} with --ranks {local} goes past --world-size {world} \
                 (this process's ranks are {first_rank}..{})",
                first_rank + local - 1
            );
        }
        let p = Self {
            world,
            first_rank,
            local,
            id_file,
        };
        if p.spans_processes() {
            if !cfg!(feature = "nccl") {
                bail!(
                    "--world-size {world} spans several processes, which needs NCCL: build with \
                     `--features nccl` (see the README's GPU section)"
                );
            }
            if p.id_file.is_none() && crate::compute::switches().nccl_id.is_none() {
                bail!(
                    "--world-size {world} spans several processes: give every one the same \
                     --nccl-id FILE on a filesystem they all see (or the same MOVQ_NCCL_ID)"
                );
            }
        }
        Ok(p)
    }

    /// All ranks in this process.
    pub fn single_process(local: usize) -> Self {
        Self {
            world: local,
            first_rank: 0,
            local,
            id_file: None,
        }
    }

    /// Whether other processes (hosts) hold some of the ranks.
    pub fn spans_processes(&self) -> bool {
        self.world > self.local
    }

    /// Whether this process holds global rank 0 (and makes the group id).
    pub fn holds_rank_zero(&self) -> bool {
        self.first_rank == 0
    }
}

/// An id as lowercase hex.
pub fn id_to_hex(id: &[u8; ID_BYTES]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// An id from its hex form (surrounding whitespace ignored).
pub fn id_from_hex(text: &str) -> Result<[u8; ID_BYTES]> {
    let text = text.trim();
    if text.len() != 2 * ID_BYTES || !text.is_ascii() {
        bail!(
            "an NCCL group id is {} hex digits; got {} characters",
            2 * ID_BYTES,
            text.len()
        );
    }
    let mut out = [0u8; ID_BYTES];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .with_context(|| format!("an NCCL group id has a bad hex digit near {}", 2 * i))?;
    }
    Ok(out)
}

/// The id from `MOVQ_NCCL_ID` if set, else from the id file, waiting up to `patience` for it to
/// appear (written by the process that holds rank 0).
pub fn read_id(p: &Placement, patience: Duration) -> Result<[u8; ID_BYTES]> {
    if let Some(hex) = &crate::compute::switches().nccl_id {
        return id_from_hex(hex).context("MOVQ_NCCL_ID");
    }
    let file = p.id_file.as_ref().context("no --nccl-id file")?;
    let start = Instant::now();
    loop {
        match std::fs::read_to_string(file) {
            Ok(text) if !text.trim().is_empty() => {
                return id_from_hex(&text).with_context(|| file.display().to_string())
            }
            _ if start.elapsed() > patience => bail!(
                "waited {} s for the process holding rank 0 to write {}",
                patience.as_secs(),
                file.display()
            ),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Publishes the id made by the process holding rank 0 (unless `MOVQ_NCCL_ID` gives it).
pub fn publish_id(p: &Placement, id: &[u8; ID_BYTES]) -> Result<()> {
    if crate::compute::switches().nccl_id.is_some() {
        return Ok(());
    }
    if let Some(file) = &p.id_file {
        crate::fsutil::write_atomic(file, id_to_hex(id).as_bytes())
            .with_context(|| format!("cannot write the NCCL group id to {}", file.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_hex_and_bad_ones_are_refused() {
        let mut id = [0u8; ID_BYTES];
        for (i, b) in id.iter_mut().enumerate() {
            *b = (i * 37 % 256) as u8;
        }
        let hex = id_to_hex(&id);
        assert_eq!(hex.len(), 256);
        assert_eq!(id_from_hex(&format!("  {hex}\n")).unwrap(), id);
        assert!(id_from_hex(&hex[..254]).is_err());
        let bad = format!("zz{}", &hex[2..]);
        assert!(id_from_hex(&bad).is_err());
    }

    #[test]
    fn a_published_id_is_read_back_by_the_other_processes() {
        let dir = std::env::temp_dir().join(format!("movq-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("nccl-id");
        let _ = std::fs::remove_file(&file);
        let p = Placement {
            world: 4,
            first_rank: 0,
            local: 2,
            id_file: Some(file.clone()),
        };
        let id = [7u8; ID_BYTES];
        let reader = {
            let p = Placement {
                first_rank: 2,
                ..p.clone()
            };
            std::thread::spawn(move || read_id(&p, Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(300));
        publish_id(&p, &id).unwrap();
        assert_eq!(reader.join().unwrap().unwrap(), id);
        let lonely = Placement {
            id_file: Some(dir.join("never-written")),
            ..p
        };
        let e = read_id(&lonely, Duration::from_millis(300)).unwrap_err();
        assert!(format!("{e:#}").contains("rank 0 to write"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn placements_are_checked() {
        assert!(Placement::new(2, Some(3), 2, None).is_err()); // ranks 2..3 of 3
        assert!(Placement::new(0, None, 0, None).is_err());
        let p = Placement::new(2, None, 0, None).unwrap();
        assert!(!p.spans_processes() && p.holds_rank_zero());
        // several processes: NCCL and an id source are required
        let e = Placement::new(2, Some(4), 0, None).unwrap_err().to_string();
        assert!(e.contains("NCCL") || e.contains("--nccl-id"), "{e}");
    }
}
