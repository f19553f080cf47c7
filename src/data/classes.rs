//! Class names: resolving what a user names on the command line.

use anyhow::Result;

/// `--class` as a conditioning id: an index or a name of `classes`; none = the "no class" id
/// (`classes.len()`). Errors name the valid classes.
pub fn resolve_class(spec: Option<&str>, classes: &[String]) -> Result<u32> {
    let Some(spec) = spec else {
        return Ok(classes.len() as u32);
    };
    if classes.is_empty() {
        anyhow::bail!(
            "--class {spec}: this model is unconditional (it was trained without classes)"
        );
    }
    if let Some(i) = classes.iter().position(|c| c == spec) {
        return Ok(i as u32);
    }
    match spec.parse::<usize>() {
        Ok(i) if i < classes.len() => Ok(i as u32),
        Ok(i) => anyhow::bail!(
            "--class {i}: out of range; the model has {} classes (0..{})",
            classes.len(),
            classes.len() - 1
        ),
        Err(_) => {
            let shown: Vec<&str> = classes.iter().take(20).map(String::as_str).collect();
            anyhow::bail!(
                "--class {spec}: unknown class name (classes: {}{})",
                shown.join(", "),
                if classes.len() > 20 { ", ..." } else { "" }
            )
        }
    }
}
